"""Serving one WebSocket connection: handshake, routing, binding, sessions, middleware.

The steps, in order (the connection's own lifetime is ``websocket.WebSocket``'s job):

1. **Handshake.** Read ``websocket.connect``, load the session, run ``before_websocket``,
   route (``/chat/x`` → ``ws_chat(ws, "x")``, ``/`` → ``ws_index``) and bind the arguments
   (the ``WebSocket`` first, whatever its name; then path segment → query → default). A refusal
   is a ``websocket.close`` before accept, which hypercorn turns into an HTTP 403: its code and
   reason (MicroPie's) only reach in-process clients.
2. **The handler** runs in this frame, inside ``async with ws._lifetime(...)`` (see ``websocket``).
3. **After the handler.** ``after_websocket`` runs (also after ``ConnectionClosed`` and after
   errors), then the session is saved unless the handler failed, then the connection is closed
   if the handler left it open: 1000 after a normal return, 1011 ``Internal server error``
   after an exception (details only in the log).
4. **Server shutdown.** A cancellation from outside (hypercorn cancels connections when its
   ``graceful_timeout`` ends) sends close 1001 from a shielded, time-bounded scope and then
   propagates; ``after_websocket`` and the session save do not run.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from . import routing
from .request import WebSocketRequest, current_request
from .sessions import (
    SessionState,
    assign_websocket_session,
    checked_session_id,
    load_session,
    save_websocket_session,
)
from .types import Receive, Scope, Send
from .websocket import (
    DEFAULT_MAX_MESSAGE_SIZE,
    INTERNAL_ERROR,
    Refused,
    WebSocket,
    close_message,
    only_connection_closed,
)

if TYPE_CHECKING:
    from .app import App

__all__ = ["serve_websocket"]

logger = logging.getLogger("micropie")


async def serve_websocket(app: App, scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI call for one WebSocket connection (see the module docstring for the steps).

    Sessions follow MicroPie 0.32: a connection without a valid session cookie gets a new id at
    once and ``accept()`` sends it as a cookie, because a cookie can only reach the browser on
    the handshake response, before the handler could have said whether it needs one. A cookie
    whose session is unknown is replaced the same way (fixation defence). The session is saved
    after the handler and ``after_websocket`` (deleted when emptied), not after an error.
    """
    if (await receive()).get("type") == "websocket.disconnect":
        return  # the client left during the handshake
    request = WebSocketRequest(scope)
    token = current_request.set(request)
    try:
        try:
            state = await load_session(app, request)
            await _before_websocket(app, request)
            handler, plan = _route(app, request)
            ws = WebSocket(
                receive,
                send,
                session_cookie_secure=app.session_cookie_secure,
                session_id_validator=_session_id_checker(app),
                scope=scope,
                request=request,
            )
            ws._connect_pending = False
            args, kwargs = _bind(plan, ws, request)
            ws.session_id, ws._session_cookie_pending = await assign_websocket_session(app, state)
        except Refused as refused:
            await send(close_message(refused.code, refused.reason))
            return
        except Exception:
            logger.exception("WebSocket connection to %s failed before its handler", request.path)
            await send(close_message(*INTERNAL_ERROR))
            return
        # The handler runs in this frame, not one more down: every open connection keeps its
        # whole call stack alive, and memory per idle connection is a benchmark target.
        failed = False
        try:
            ws._max_message_size = getattr(app, "ws_max_message_size", DEFAULT_MAX_MESSAGE_SIZE)
            async with ws._lifetime(app._sweeper):
                result = handler(*args, **kwargs)
                del args, kwargs  # this frame lives as long as the connection
                if inspect.isawaitable(result):
                    await result
        except Exception as error:
            if not only_connection_closed(error):
                failed = True
                logger.exception("Unhandled exception in WebSocket handler for %s", request.path)
        except BaseException:
            # A cancellation from outside (server shutdown), alone or in a group: say goodbye.
            await ws._going_away()
            raise
        await _after_handler(app, ws, request, state, failed)
    finally:
        current_request.reset(token)


async def _after_handler(
    app: App, ws: WebSocket, request: WebSocketRequest, state: SessionState, failed: bool
) -> None:
    """``after_websocket``, the session save, and the close the handler did not send."""
    failed = not await _after_websocket(app, request) or failed
    if not failed:
        failed = not await _save_session(app, request, ws, state)
    await ws._finish(failed)


#: One session-id checker per app, shared by its connections (``WebSocket.session_id_validator``).
_SESSION_ID_CHECKERS: WeakKeyDictionary[App, Callable[[str], str | None]] = WeakKeyDictionary()


def _session_id_checker(app: App) -> Callable[[str], str | None]:
    checker = _SESSION_ID_CHECKERS.get(app)
    if checker is None:
        checker = _SESSION_ID_CHECKERS[app] = partial(checked_session_id, app)
    return checker


# --- the steps ----------------------------------------------------------------------------


async def _before_websocket(app: App, request: WebSocketRequest) -> None:
    for middleware in app.ws_middlewares:
        result = await middleware.before_websocket(request)
        if result:
            raise Refused(result.get("code", 1008), result.get("reason", "Middleware rejected"))


async def _after_websocket(app: App, request: WebSocketRequest) -> bool:
    """Run every ``after_websocket``; return ``False`` if one raised (it is logged)."""
    for middleware in app.ws_middlewares:
        try:
            await middleware.after_websocket(request)
        except Exception:
            logger.exception("after_websocket failed for %s", request.path)
            return False
    return True


def _route(app: App, request: WebSocketRequest) -> tuple[Callable[..., Any], routing.HandlerPlan]:
    """``/chat/x`` → ``ws_chat`` with path parameters ``["x"]``; ``/`` → ``ws_index``.

    Middleware may name the handler in ``request._ws_route_handler`` and set
    ``request.path_params`` (kept when non-empty, as for HTTP). No index fallback.
    """
    from .app import App as base

    path = request.path.lstrip("/")
    segments = path.split("/") if path else []
    name = segments[0] if segments else "index"
    if name.startswith("_"):
        raise Refused(1008, "Private handler not allowed")
    handler_name = getattr(request, "_ws_route_handler", None) or f"ws_{name}"
    if not request.path_params:
        request.path_params = segments[1:]
    found = routing.resolve_handler(app, handler_name, base)
    if isinstance(found, routing.Lookup):
        raise Refused(1008, "No matching WebSocket route")
    raw, handler = found
    return handler, routing.plan_for(raw, handler)


def _bind(
    plan: routing.HandlerPlan, ws: WebSocket, request: WebSocketRequest
) -> tuple[list[Any], dict[str, Any]]:
    """The handler's arguments: the ``WebSocket``, then path segment → query → default."""
    if not plan.parameters:
        raise Refused(1011, "WebSocket handler must accept a connection argument")
    first, *rest = plan.parameters

    def from_query(name: str) -> Any:
        values = request.query_params.get(name)
        return values[0] if values else routing.MISSING

    try:
        args, kwargs, used = routing.bind_parameters(rest, request.path_params, from_query)
    except routing.BindingError as error:
        raise Refused(1008, str(error)) from None
    if first.kind is inspect.Parameter.KEYWORD_ONLY:
        kwargs[first.name] = ws
    elif first.kind is inspect.Parameter.VAR_KEYWORD:
        kwargs["ws"] = ws
    else:
        args.insert(0, ws)
    if plan.var_keyword:
        for name, values in request.query_params.items():
            if values and name not in used and name != first.name and name not in kwargs:
                kwargs[name] = values[0]
    return args, kwargs


async def _save_session(
    app: App, request: WebSocketRequest, ws: WebSocket, state: SessionState
) -> bool:
    """Save (or delete) the session under the connection's id; ``False`` if that failed."""
    if ws.session_id is None:
        return True
    try:
        await save_websocket_session(app, request, ws.session_id, state)
    except Exception:
        logger.exception("Saving the session failed for WebSocket %s", request.path)
        return False
    return True
