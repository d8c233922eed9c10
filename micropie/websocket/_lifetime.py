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


async def enter_lifetime(
    ws: WebSocket, sweeper: DisconnectSweeper | None
) -> anyio.abc.TaskGroup | None:
    """Open the block a WebSocket handler runs in: its own cancel scope, entered here.

    The connection's tasks (``start_soon``, the pump, the 1001 at shutdown) are hosted by the
    sweeper's task group, and the sweeper watches the handler; without a running sweeper (no
    lifespan) the connection opens a task group of its own, returned here for
    ``exit_lifetime``, and starts its pump at once. Functions, not a context manager object:
    the caller (``WebSocketConnection``) already is one, and every object per connection is
    paid for as long as the connection is open.
    """
    host = sweeper.task_group if sweeper is not None else None
    own_group = None
    if host is None:
        own_group = host = anyio.create_task_group()
        await own_group.__aenter__()
    ws._host = host
    ws._handler_scope = handler_scope = anyio.CancelScope()
    if own_group is None:
        assert sweeper is not None
        sweeper.register_websocket(ws)
    else:
        ws._start_pump()
    handler_scope.__enter__()
    return own_group


async def exit_lifetime(
    ws: WebSocket,
    sweeper: DisconnectSweeper | None,
    own_group: anyio.abc.TaskGroup | None,
    error: BaseException | None,
) -> BaseException | None:
    """Close the block ``enter_lifetime`` opened; ``error`` is what the handler raised.

    Returns what ends the block: ``None`` when the handler returned or was cancelled by the
    connection itself (grace after the client left, server shutdown, a failed task), else the
    handler's exception, or what the connection's tasks raised (with the handler's exception,
    as a group). The tasks are cancelled and awaited first: none outlives the connection.
    """
    handler_scope = ws._handler_scope
    assert handler_scope is not None
    if handler_scope.__exit__(*_exc_info(error)):  # ours: grace, shutdown, a task failed
        error = None
    ws._host = None  # the handler is done: no task may start any more
    if own_group is None:
        assert sweeper is not None
        sweeper.unregister_websocket(ws)
    try:
        await ws._end_tasks(error)
    except BaseException as failure:  # what the tasks raised (with the handler's exception)
        error = failure
    if own_group is not None:
        try:
            with collapse_excgroups():
                await own_group.__aexit__(*_exc_info(error))
        except BaseException as failure:
            return failure
    return error


def _exc_info(
    error: BaseException | None,
) -> tuple[type[BaseException] | None, BaseException | None, TracebackType | None]:
    if error is None:
        return None, None, None
    return type(error), error, error.__traceback__
