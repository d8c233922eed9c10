"""Reading for a handler: the sweeper's check, the pump, and messages a handler must not get.

The framework's side of the receive path (see the package docstring): a handler that stopped
reading gets a pump that reads for it into a small inbox, and a disconnect or a message over the
size limit ends the connection. Module-level functions taking the ``WebSocket``, as the
``_lifetime`` ones are: ``WebSocket`` keeps only what a handler calls, and its receive path
calls out here only on its rare branches (a pump running, a message it does not return).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from micropie.core.types import Message
from micropie.websocket._errors import _TOO_BIG, INTERNAL_ERROR, close_message
from micropie.websocket._messages import _receive_failed, _too_big
from micropie.websocket._state import connection_tasks, end_send_turn, take_send_turn

if TYPE_CHECKING:
    from micropie.websocket._socket import WebSocket

logger = logging.getLogger("micropie")

#: Seconds a handler may keep running after the client left before it is cancelled. Long enough
#: for a handler that sees ``ConnectionClosed`` to clean up, short enough that a push-only loop
#: stops well within a second. Cleanup that needs longer belongs in ``after_websocket`` (which
#: runs after the handler, uncancelled) or in a shielded scope.
DISCONNECT_GRACE = 0.5

#: Messages read ahead of the handler. Small, so a handler that does not read soon stops the
#: server from reading the socket instead of buffering without bound.
INBOX_SIZE = 8


def sweep(ws: WebSocket) -> None:
    """Called by the sweeper every interval: start a pump for a handler that stopped reading.

    A handler that has read nothing since the last sweep and is not waiting in ``receive()``
    now (a push-only loop, a long computation) would not notice the client leaving; the pump
    reads for it from then on. A handler that keeps reading never pays for a pump.

    It also forgets the handler's sends in a row (see ``WebSocket._send_frame``): the sweeper
    runs only when the event loop does, so the sends before this did not starve it. A push
    handler that waits elsewhere between sends (a broadcast, a timer) then never pays the
    checkpoint; one that spins without yielding cannot let the sweeper run, and still yields
    every ``SENDS_BETWEEN_CHECKPOINTS`` sends.
    """
    ws._sends_since_read = 0
    if ws._inbox is not None or ws._reading or ws._host is None:
        return
    if ws._reads == ws._reads_at_last_sweep:
        start_pump(ws)
    ws._reads_at_last_sweep = ws._reads


def start_pump(ws: WebSocket) -> None:
    tasks = connection_tasks(ws, "The pump needs a connection that is being served")
    inbox_send, ws._inbox = anyio.create_memory_object_stream[Message](INBOX_SIZE)
    tasks.start_soon(_pump, ws, inbox_send)


async def _pump(ws: WebSocket, inbox: MemoryObjectSendStream[Message]) -> None:
    """Own ``receive()`` for a handler that does not read: feed its inbox, notice the
    client leaving, and cancel the handler ``DISCONNECT_GRACE`` after that."""
    with inbox:
        # Not one ``receive()`` once the connection is over, the app's own close included: a
        # server (or a test double) that answers at once would make this loop spin.
        while ws._close_info is None:
            try:
                message = await ws._receive()
            except Exception:
                message = _receive_failed()
            if message.get("type") != "websocket.receive" or _too_big(
                message, ws._max_message_size
            ):
                await reject(ws, message)  # ends the connection
                return
            await inbox.send(message)  # a checkpoint, whatever ``receive()`` did


async def next_from_pump(
    ws: WebSocket, inbox: MemoryObjectReceiveStream[Message], iterating: bool
) -> Message:
    """The next message the pump read; once the connection is over, only those it already
    read (the pump may still wait in a ``receive()`` that will never give more)."""
    try:
        if ws._close_info is None:
            message = await inbox.receive()
        else:
            message = inbox.receive_nowait()
    except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
        if iterating:
            raise StopAsyncIteration from None
        raise ws._connection_closed() from None
    ws._reads += 1
    ws._sends_since_read = 0
    return message


async def reject(ws: WebSocket, message: Message) -> None:
    """A message that is not for the handler ends the connection: a disconnect, one too big,
    or a type a server must not send now (a second ``websocket.connect``, a typo): a protocol
    error, closed with 1011 so that the client is not left waiting, and logged once."""
    kind = message.get("type")
    if kind == "websocket.disconnect":
        ws._client_left(message.get("code", 1005), message.get("reason") or "")
    elif kind == "websocket.receive":
        await _close_with(ws, *_TOO_BIG)
    else:
        logger.warning(
            "WebSocket %s: the server sent an unexpected ASGI message %r; closing with 1011",
            ws.request.path,
            kind,
        )
        await _close_with(ws, *INTERNAL_ERROR)
    end_soon(ws)


async def _close_with(ws: WebSocket, code: int, reason: str) -> None:
    """Close with ``code`` unless the connection is over already; in its send turn, so that
    the close comes after a send in progress."""
    await take_send_turn(ws)
    try:
        if ws._closing_for_framework(code, reason):
            try:
                await ws._send(close_message(code, reason))
            except OSError:
                logger.debug("Could not send close %s", code, exc_info=True)
    finally:
        end_send_turn(ws)


def end_soon(ws: WebSocket) -> None:
    """The connection is over: the handler gets ``DISCONNECT_GRACE`` to notice and finish
    (a handler blocked elsewhere, or one that ignores ``ConnectionClosed``, is cancelled).
    A handler that closed the connection itself is trusted to finish on its own.
    """
    if not ws._closed_by_handler:
        cancel_after_grace(ws)


def cancel_after_grace(ws: WebSocket) -> None:
    """Cancel the handler ``DISCONNECT_GRACE`` from now if it is still running.

    A deadline on the handler's scope rather than a task that sleeps: nothing to start.
    """
    scope = ws._handler_scope
    if scope is not None:
        scope.deadline = min(scope.deadline, anyio.current_time() + DISCONNECT_GRACE)
