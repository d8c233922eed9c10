"""The block a ``ws_`` handler runs in, and how its connection ends: closed, or going away.

Module-level functions taking the ``WebSocket``, called by ``WebSocketConnection`` and the
disconnect sweeper: ``WebSocket`` keeps only what a handler calls.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from micropie.core.concurrency import collapse_excgroups
from micropie.websocket._errors import _GOING_AWAY, INTERNAL_ERROR, close_message
from micropie.websocket._pump import cancel_after_grace, start_pump
from micropie.websocket._state import connection_tasks

if TYPE_CHECKING:
    from micropie.lifetimes.disconnect import DisconnectSweeper
    from micropie.websocket._socket import WebSocket

logger = logging.getLogger("micropie")

#: Seconds allowed for sending close 1001 when the server shuts the connection down.
SHUTDOWN_CLOSE_TIMEOUT = 1.0


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
        start_pump(ws)
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
        await _end_tasks(ws, error)
    except BaseException as failure:  # what the tasks raised (with the handler's exception)
        error = failure
    if own_group is not None:
        try:
            with collapse_excgroups():
                await own_group.__aexit__(*_exc_info(error))
        except BaseException as failure:
            return failure
    return error


async def _end_tasks(ws: WebSocket, failure: BaseException | None) -> None:
    """Cancel and await the connection's tasks; raise what they raised (with ``failure``,
    the handler's own exception, as a group)."""
    tasks = ws._tasks
    if tasks is not None:
        await tasks.close()
    if ws._inbox is not None:
        ws._inbox.close()
    if tasks is None or not tasks.errors:
        return
    errors: list[BaseException] = [*tasks.errors]
    if failure is not None:
        errors.insert(0, failure)
    if len(errors) == 1:
        raise errors[0]
    raise BaseExceptionGroup("WebSocket connection tasks failed", errors)


def _exc_info(
    error: BaseException | None,
) -> tuple[type[BaseException] | None, BaseException | None, TracebackType | None]:
    if error is None:
        return None, None, None
    return type(error), error, error.__traceback__


def going_away_soon(ws: WebSocket) -> None:
    """Graceful server shutdown: close with 1001 now, cancel the handler after a grace."""
    if ws._host is not None:
        connection_tasks(ws, "").start_soon(_leave, ws)


async def _leave(ws: WebSocket) -> None:
    await going_away(ws)
    # Every handler, even one that had closed the connection itself: the server is going.
    cancel_after_grace(ws)


async def finish(ws: WebSocket, failed: bool) -> None:
    """Close the connection if the handler left it open (1000, or 1011 after an error)."""
    code, reason = INTERNAL_ERROR if failed else (1000, "")
    await _close_quietly(ws, code, reason)


async def going_away(ws: WebSocket) -> None:
    """Server shutdown: close with 1001 unless the connection is over, shielded and bounded.

    The handler then sees ``ConnectionClosed(1001)`` from its sends and receives, not the
    ``RuntimeError`` of a connection it closed itself.
    """
    with anyio.move_on_after(SHUTDOWN_CLOSE_TIMEOUT, shield=True):
        await _close_quietly(ws, *_GOING_AWAY)


async def _close_quietly(ws: WebSocket, code: int, reason: str) -> None:
    """Send close ``code`` unless the connection is over already; a failed send is the
    client gone, nothing to report."""
    if not ws._closing_for_framework(code, reason):
        return
    try:
        await ws._send(close_message(code, reason))
    except Exception:
        logger.debug("Could not send WebSocket close %s", code, exc_info=True)
