"""The block a ``ws_`` handler runs in: its cancel scope, and where its connection's tasks run.

Two functions called by ``WebSocketConnection`` around the handler; the connection's state
changes only in ``WebSocket``'s own methods (see ``_socket``).
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from micropie.core.concurrency import collapse_excgroups
from micropie.lifetimes.cancel_scopes import ScopeMaker

if TYPE_CHECKING:
    from micropie.websocket._socket import WebSocket


async def enter_lifetime(
    ws: WebSocket, host: anyio.abc.TaskGroup | None, make_scope: ScopeMaker
) -> anyio.abc.TaskGroup | None:
    """Open the block a WebSocket handler runs in: its own cancel scope, entered here.

    The connection's tasks (``start_soon``, the pump, the 1001 at shutdown) are hosted by
    ``host``, the running sweeper's task group, and the sweeper watches the handler; without
    one (no lifespan) the connection opens a task group of its own, returned here for
    ``exit_lifetime``, and starts its pump at once. Functions, not a context manager object:
    the caller (``WebSocketConnection``) already is one, and every object per connection is
    paid for as long as the connection is open.
    """
    own_group = None
    if host is None:
        own_group = host = anyio.create_task_group()
        await own_group.__aenter__()
    ws._begin_serving(host, swept=own_group is None, make_scope=make_scope)
    return own_group


async def exit_lifetime(
    ws: WebSocket, own_group: anyio.abc.TaskGroup | None, error: BaseException | None
) -> BaseException | None:
    """Close the block ``enter_lifetime`` opened; ``error`` is what the handler raised.

    Returns what ends the block: ``None`` when the handler returned or was cancelled by the
    connection itself (grace after the close, server shutdown, a failed task), else the
    handler's exception, or what the connection's tasks raised (with the handler's exception,
    as a group). The tasks are cancelled and awaited first: none outlives the connection.
    """
    if ws._end_serving(error):
        error = None
    try:
        await ws._close_tasks(error)
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
