"""What both sides of a connection use: where it is in its life, its send gate and its tasks.

The handler's side (``_socket``) and the framework's side (``_pump``, ``_lifetime``) both read
and change these, so they live below both: neither side imports the other's module for them.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import anyio

from ..connection_tasks import ConnectionTasks

if TYPE_CHECKING:
    from ._socket import WebSocket


class _State(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


# Module constants, not ``_State.OPEN`` at each use: an enum member looked up through its class
# costs ~45 ns on Python 3.11, and the state is checked on every message.
_CONNECTING, _OPEN, _CLOSED = _State.CONNECTING, _State.OPEN, _State.CLOSED


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


def connection_tasks(ws: WebSocket, refusal: str) -> ConnectionTasks:
    """The connection's tasks, made on first use: most connections never start one."""
    if ws._tasks is None:
        if ws._host is None or ws._handler_scope is None:
            raise RuntimeError(refusal)
        ws._tasks = ConnectionTasks(ws._host, ws._handler_scope.cancel)
    return ws._tasks
