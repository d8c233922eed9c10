"""Serving one WebSocket connection: handshake, routing, binding, sessions, middleware.

The steps, in order (the connection's own lifetime is ``websocket._lifetime``'s job, its
state ``WebSocket``'s):

1. **Handshake.** Read ``websocket.connect``, load the session, run ``before_websocket``,
   route (``/chat/x`` → ``ws_chat(ws, "x")``, ``/`` → ``ws_index``) and bind the arguments
   (the ``WebSocket`` first, whatever its name; then path segment → query → default). A refusal
   is a ``websocket.close`` before accept, which hypercorn turns into an HTTP 403: its code and
   reason (MicroPie's) only reach in-process clients.
2. **The handler** runs in its own cancel scope (``websocket._lifetime``), its coroutine
   awaited in ``App.__call__``'s frame (see ``WebSocketConnection``).
3. **After the handler.** ``after_websocket`` runs (also after ``ConnectionClosed`` and after
   errors), then the session is saved unless the handler failed, then the connection is closed
   if the handler left it open: 1000 after a normal return, 1011 ``Internal server error``
   after an exception (details only in the log).
4. **Server shutdown.** A cancellation from outside (hypercorn cancels connections when its
   ``graceful_timeout`` ends) sends close 1001 from a shielded, time-bounded scope and then
   propagates; ``after_websocket`` and the session save do not run.

What it needs of the app is ``WebSocketApp`` (settings and middleware) and two values the app
passes in: its sweeper and the base class whose own methods are not routes. While its handler
runs, the connection is one of the things the sweeper sweeps (``lifetimes.sweeper.Swept``).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from contextvars import Token
from functools import partial
from typing import Any, Protocol
from weakref import WeakKeyDictionary

import anyio.abc

from micropie import routing
from micropie.core.types import Receive, Scope, Send
from micropie.http.request import Request, WebSocketRequest, current_request, set_by_middleware
from micropie.lifetimes.sweeper import DisconnectSweeper
from micropie.routing.mount import route_path
from micropie.sessions import (
    SessionSettings,
    SessionState,
    assign_websocket_session,
    checked_session_id,
    load_sent_session,
    save_websocket_session,
)
from micropie.websocket import (
    INTERNAL_ERROR,
    Refused,
    WebSocket,
    close_message,
    only_connection_closed,
)
from micropie.websocket._lifetime import enter_lifetime, exit_lifetime

__all__ = ["WebSocketApp", "WebSocketConnection", "WebSocketHooks"]

logger = logging.getLogger("micropie")


class WebSocketHooks(Protocol):
    """What a WebSocket middleware offers (``micropie.WebSocketMiddleware`` has it)."""

    async def before_websocket(self, request: Request) -> dict[str, Any] | None: ...

    async def after_websocket(self, request: Request) -> None: ...


class WebSocketApp(SessionSettings, Protocol):
    """What serving a WebSocket connection reads of the app (``App`` has it): the session
    settings, the WebSocket middleware and the message size limit."""

    @property
    def ws_middlewares(self) -> Sequence[WebSocketHooks]: ...

    @property
    def ws_max_message_size(self) -> int | None: ...


class WebSocketConnection:
    """One WebSocket connection being served, as ``App.__call__`` runs it::

        connection = WebSocketConnection(self, scope, receive, send, self._sweeper, App)
        async with connection as handler_call:
            if handler_call is not None:
                await handler_call

    Entering does the handshake, routing and binding, opens the handler's lifetime
    (``websocket._lifetime``) and calls the handler; leaving ends the lifetime, runs
    ``after_websocket``, saves the session and closes what the handler left open (the steps in
    the module docstring). An async context manager rather than one coroutine that calls the
    handler: the handler's coroutine is then awaited in the app's own frame, and every frame
    between the app and the server is kept alive by every open connection (memory per idle
    connection is a benchmark target) and passed through at every suspension.

    Sessions follow MicroPie 0.32: a connection without a valid session cookie gets a new id at
    once and ``accept()`` sends it as a cookie, because a cookie can only reach the browser on
    the handshake response, before the handler could have said whether it needs one. A cookie
    whose session is unknown is replaced the same way (fixation defence). The session is saved
    after the handler and ``after_websocket`` (deleted when emptied), not after an error.
    """

    __slots__ = (
        "_app",
        "_base",
        "_handler_error",
        "_own_group",
        "_serving",
        "_state",
        "_sweeper",
        "_token",
        "_ws",
    )

    def __init__(
        self,
        app: WebSocketApp,
        scope: Scope,
        receive: Receive,
        send: Send,
        sweeper: DisconnectSweeper,
        base: type,
    ) -> None:
        """``sweeper``: the app's, which sweeps the connection while its handler runs;
        ``base``: the class whose own methods are not routes (``App``)."""
        self._app = app
        self._sweeper = sweeper
        self._base = base
        self._ws = WebSocket(
            receive,
            send,
            session_cookie_secure=app.session_cookie_secure,
            session_id_validator=_session_id_checker(app),
            scope=scope,
            request=WebSocketRequest(scope),
        )
        self._token: Token[Request] | None = None
        self._state: SessionState | None = None
        self._own_group: anyio.abc.TaskGroup | None = None
        self._serving = False  # the handler's lifetime is open
        self._handler_error: BaseException | None = None  # raised by the call itself

    async def __aenter__(self) -> Awaitable[Any] | None:
        """The handler's awaitable, already called; ``None`` when there is nothing to await
        (the handshake was refused, or the handler is a plain function)."""
        ws = self._ws
        kind = (await ws._receive()).get("type")
        if kind != "websocket.connect":
            if kind != "websocket.disconnect":  # the client left during the handshake, or:
                logger.warning(
                    "WebSocket %s: the server sent %r instead of websocket.connect; refused",
                    ws.request.path,
                    kind,
                )
                await ws._send(close_message(*INTERNAL_ERROR))
            return None
        self._token = current_request.set(ws.request)
        try:
            call = await self._handshake()
            if call is None:
                return None
            sweeper = self._sweeper
            self._own_group = await enter_lifetime(ws, sweeper.task_group, sweeper.make_scope)
            if self._own_group is None:
                self._sweeper.register(self)
            self._serving = True
            try:
                result = call()
            except BaseException as error:  # handled on the way out, like an awaited one
                self._handler_error = error
                return None
            return result if inspect.isawaitable(result) else None
        except BaseException:
            current_request.reset(self._token)
            raise

    async def _handshake(self) -> Callable[[], Any] | None:
        """Session, ``before_websocket``, route and arguments: the handler, ready to call, or
        ``None`` after refusing the connection."""
        app, ws = self._app, self._ws
        request = ws.request
        assert isinstance(request, WebSocketRequest)
        try:
            has_cookie = request._sent_cookies() is not None
            self._state = state = await load_sent_session(app, request, has_cookie)
            await _before_websocket(app, request)
            handler, plan = _route(app, request, self._base)
            args, kwargs = _bind(plan, ws, request)
            session_id, new_session = await assign_websocket_session(app, state)
            ws._handshake_done(session_id, new_session, app.ws_max_message_size)
        except Refused as refused:
            await ws._send(close_message(refused.code, refused.reason))
            return None
        except Exception:
            logger.exception("WebSocket connection to %s failed before its handler", request.path)
            await ws._send(close_message(*INTERNAL_ERROR))
            return None
        return partial(handler, *args, **kwargs)

    async def __aexit__(self, *exc_info: Any) -> bool:
        """Everything after the handler (``_after_handler``); ``True`` when it dealt with what
        the handler raised, which is all but a cancellation from outside."""
        if self._token is None:
            return False  # the client left during the handshake
        try:
            if not self._serving:
                return False
            return await self._after_handler(exc_info[1])
        finally:
            current_request.reset(self._token)

    async def _after_handler(self, raised: BaseException | None) -> bool:
        """End the lifetime, then ``after_websocket``, the session save and the close the
        handler did not send. Returns whether ``raised`` was dealt with (see ``__aexit__``)."""
        app, ws = self._app, self._ws
        request = ws.request
        error = raised if raised is not None else self._handler_error
        if self._own_group is None:
            self._sweeper.unregister(self)
        error = await exit_lifetime(ws, self._own_group, error)
        if error is not None and not isinstance(error, Exception):
            # A cancellation from outside (server shutdown), alone or in a group: say goodbye.
            await ws._going_away()
            if error is raised:
                return False
            raise error
        failed = error is not None and not only_connection_closed(error)
        if failed:
            logger.error(
                "Unhandled exception in WebSocket handler for %s", request.path, exc_info=error
            )
        failed = not await _after_websocket(app, request) or failed
        if not failed:
            failed = not await _save_session(app, request, ws, self._state)
        await ws._finish(failed)
        return True

    # --- what the sweeper calls (``lifetimes.sweeper.Swept``) ---------------------------------

    def sweep(self, now: float, new_round: bool, task_group: anyio.abc.TaskGroup) -> float:
        """Each round: a pump for a handler that stopped reading (see ``WebSocket._swept``)."""
        if new_round:
            self._ws._swept()
        return math.inf

    def going_away(self) -> None:
        """Graceful shutdown: close with 1001 now, cancel the handler after the grace."""
        self._ws._going_away_soon()


#: One session-id checker per app, shared by its connections (``WebSocket.session_id_validator``).
_SESSION_ID_CHECKERS: WeakKeyDictionary[WebSocketApp, Callable[[str], str | None]] = (
    WeakKeyDictionary()
)


def _session_id_checker(app: WebSocketApp) -> Callable[[str], str | None]:
    checker = _SESSION_ID_CHECKERS.get(app)
    if checker is None:
        checker = _SESSION_ID_CHECKERS[app] = partial(checked_session_id, app)
    return checker


# --- the steps ----------------------------------------------------------------------------


async def _before_websocket(app: WebSocketApp, request: WebSocketRequest) -> None:
    for middleware in app.ws_middlewares:
        result = await middleware.before_websocket(request)
        if result:
            raise Refused(result.get("code", 1008), result.get("reason", "Middleware rejected"))


async def _after_websocket(app: WebSocketApp, request: WebSocketRequest) -> bool:
    """Run every ``after_websocket``; return ``False`` if one raised (it is logged)."""
    for middleware in app.ws_middlewares:
        try:
            await middleware.after_websocket(request)
        except Exception:
            logger.exception("after_websocket failed for %s", request.path)
            return False
    return True


def _route(
    app: WebSocketApp, request: WebSocketRequest, base: type
) -> tuple[Callable[..., Any], routing.HandlerPlan]:
    """``/chat/x`` → ``ws_chat`` with path parameters ``["x"]``; ``/`` → ``ws_index``.

    Middleware may name the handler in ``request._ws_route_handler`` and set
    ``request.path_params`` (kept when non-empty, as for HTTP). No index fallback. Under a
    ``root_path`` (a proxy's prefix), routing uses the path below it (``route_path``).
    """
    path = route_path(request.scope).lstrip("/")
    segments = path.split("/") if path else []
    name = segments[0] if segments else "index"
    if name.startswith("_"):
        raise Refused(1008, "Private handler not allowed")
    handler_name = set_by_middleware(request, "_ws_route_handler") or f"ws_{name}"
    if not request.path_params:
        request.path_params = segments[1:]
    found = routing.resolve_handler(app, handler_name, base)
    if isinstance(found, routing.Lookup):
        raise Refused(1008, "No matching WebSocket route")
    raw, handler = found
    plan = routing.plan_for(raw, handler)
    if not (plan.is_coroutine or _is_async_callable(handler)):
        raise TypeError(
            f"WebSocket handler {type(app).__name__}.{handler_name} must be an async def: it"
            " is awaited, and so are ws.accept(), ws.receive() and ws.send_*()"
        )
    return handler, plan


def _is_async_callable(handler: Callable[..., Any]) -> bool:
    """An ``async def`` under a decorator (``functools.wraps``), or an object whose
    ``__call__`` is one: what ``inspect.iscoroutinefunction`` alone does not see."""
    unwrapped = inspect.unwrap(handler)
    return inspect.iscoroutinefunction(unwrapped) or inspect.iscoroutinefunction(
        getattr(unwrapped, "__call__", None)  # noqa: B004 - a callable object's method
    )


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
    app: WebSocketApp, request: WebSocketRequest, ws: WebSocket, state: SessionState | None
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
