"""What both sides of a connection use: where it is in its life, its send turn and its tasks.

The handler's side (``_socket``) and the framework's side (``_pump``, ``_lifetime``) both read
and change these, so they live below both: neither side imports the other's module for them.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import anyio

from micropie.lifetimes.connection_tasks import ConnectionTasks

if TYPE_CHECKING:
    from micropie.websocket._socket import WebSocket


class _State(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


# Module constants, not ``_State.OPEN`` at each use: an enum member looked up through its class
# costs ~45 ns on Python 3.11, and the state is checked on every message.
_CONNECTING, _OPEN, _CLOSED = _State.CONNECTING, _State.OPEN, _State.CLOSED


async def take_send_turn(ws: WebSocket) -> None:
    """Wait until no other send is in progress, then hold the turn (``end_send_turn`` frees it).

    One send at a time among those that take the turn (the handler, its tasks and the pump
    may all send; a send that goes straight to the server does not take it, see
    ``WebSocket._send_message``). ``anyio.Lock`` would do, but even uncontended it costs a
    task lookup and a cancellation check per acquire, and a deque per connection: half of the
    framework's cost per echo. Here the uncontended case is a flag on the ``WebSocket``
    (``_send_frame`` tests it inline), and an ``anyio.Event`` exists only while sends wait.
    Two slots rather than a gate object: one object less per connection.
    """
    while ws._sending:
        if ws._send_waiters is None:
            ws._send_waiters = anyio.Event()
        await ws._send_waiters.wait()
    ws._sending = True


def end_send_turn(ws: WebSocket) -> None:
    """Free the turn; every waiting send re-checks and the first to run takes it."""
    ws._sending = False
    waiters, ws._send_waiters = ws._send_waiters, None
    if waiters is not None:
        waiters.set()


def connection_tasks(ws: WebSocket, refusal: str) -> ConnectionTasks:
    """The connection's tasks, made on first use: most connections never start one."""
    if ws._tasks is None:
        if ws._host is None or ws._handler_scope is None:
            raise RuntimeError(refusal)
        ws._tasks = ConnectionTasks(ws._host, ws._handler_scope.cancel)
    return ws._tasks
