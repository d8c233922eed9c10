"""The block a ``ws_`` handler runs in, and the gate that lets one send through at a time."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from ..concurrency import collapse_excgroups

if TYPE_CHECKING:
    from ..disconnect import DisconnectSweeper
    from ._socket import WebSocket


class _SendGate:
    """One send at a time (the handler, its tasks and the pump may all send).

    ``anyio.Lock`` would do, but even uncontended it costs a task lookup and a cancellation
    check per acquire, and a deque per connection: half of the framework's cost per echo.
    Here the uncontended case is a flag; only a send that finds another in progress waits.
    """

    __slots__ = ("held", "waiters")

    def __init__(self) -> None:
        self.held = False
        #: Set when the gate is released, while sends wait for it (``None`` when none waits).
        self.waiters: anyio.Event | None = None

    async def acquire(self) -> None:
        while self.held:
            if self.waiters is None:
                self.waiters = anyio.Event()
            await self.waiters.wait()
        self.held = True

    def release(self) -> None:
        self.held = False
        waiters, self.waiters = self.waiters, None
        if waiters is not None:
            waiters.set()  # every waiter re-checks; the first to run takes the gate

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


class _Lifetime:
    """The block a WebSocket handler runs in (see ``WebSocket._lifetime``).

    An async context manager rather than a coroutine that calls the handler: the handler then
    runs in ``serve_websocket``'s own frame, one frame fewer between the app and the server at
    every suspension and for as long as the connection is open.
    """

    __slots__ = ("_own_group", "_sweeper", "_ws")

    def __init__(self, ws: WebSocket, sweeper: DisconnectSweeper | None) -> None:
        self._ws = ws
        self._sweeper = sweeper
        self._own_group: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> None:
        ws, sweeper = self._ws, self._sweeper
        host = sweeper.task_group if sweeper is not None else None
        if host is None:  # no lifespan: the connection hosts its own tasks
            self._sweeper = None
            self._own_group = host = anyio.create_task_group()
            await host.__aenter__()
        ws._host = host
        ws._handler_scope = handler_scope = anyio.CancelScope()
        if self._sweeper is not None:
            self._sweeper.register_websocket(ws)
        else:
            ws._start_pump()
        handler_scope.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        ws = self._ws
        assert ws._handler_scope is not None
        if ws._handler_scope.__exit__(exc_type, exc, tb):  # ours: grace, shutdown, a task failed
            exc_type = exc = tb = None
        ws._host = None  # the handler is done: no task may start any more
        if self._sweeper is not None:
            self._sweeper.unregister_websocket(ws)
        own_group = self._own_group
        try:
            await ws._end_tasks(exc)
        except BaseException as error:  # what the tasks raised (with the handler's exception)
            if own_group is None:
                raise
            exc_type, exc, tb = type(error), error, error.__traceback__
        if own_group is not None:
            with collapse_excgroups():
                await own_group.__aexit__(exc_type, exc, tb)
        return exc is None
