"""``App``: the ASGI entry point, and the table of contents of a request.

An HTTP request goes: parse → session → body → middleware → route → bind → call →
``after_request`` → save the session → respond. Each step is a call into the module that owns
it. The user's code (middleware, handler, ``after_request``) runs inside a ``ConnectionScope``,
so a client that leaves cancels it (see ``disconnect``), unless the handler is ``@shielded``
or the app has ``cancel_on_disconnect=False``; a handler with a time limit (``@time_limit``,
``request_timeout``) runs in a cancel scope with that deadline (see ``lifetimes.policy``).
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from micropie import routing, templates
from micropie.core.allocator import keep_receive_buffers_off_mmap
from micropie.core.errors import ClientDisconnected, HTTPError, MultipartFileError, is_send_failure
from micropie.core.types import ASGIApp, Message, Receive, Scope, Send
from micropie.http import bodies, redirects
from micropie.http.multipart import MultipartForm, MultipartLimits, open_form
from micropie.http.request import (
    Request,
    attach_connection,
    current_request,
    scan_headers,
    set_by_middleware,
)
from micropie.http.responses import (
    PlainResponse,
    encode_headers,
    error_response,
    is_stream,
    normalise_result,
    plain_response,
    send_plain,
)
from micropie.http.streaming import answer_head, send_stream
from micropie.http.urlencoded import UrlencodedParser
from micropie.lifetimes.cancel_scopes import deadline_scope
from micropie.lifetimes.disconnect import ConnectionScope, DisconnectSweeper
from micropie.lifetimes.lifespan import AppLifetime
from micropie.lifetimes.policy import APP_DEFAULT, PLAIN
from micropie.middleware import HttpMiddleware, WebSocketMiddleware
from micropie.routing import PendingForm
from micropie.routing.mount import route_path
from micropie.serving.hypercorn_glue import fix_loaded_hypercorn
from micropie.sessions import (
    SESSION_TIMEOUT,
    InMemorySessionBackend,
    SessionBackend,
    SessionIdFactory,
    SessionIdValidator,
    SessionState,
    carries_session,
    generate_session_id,
    has_session,
    load_session,
    save_session,
    validate_session_id,
)
from micropie.subapps import hand_over
from micropie.websocket.dispatch import WebSocketConnection

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_FORM_FIELDS",
    "DEFAULT_MAX_FORM_FIELD_SIZE",
    "DEFAULT_MAX_JSON_SIZE",
    "App",
]

logger = logging.getLogger("micropie")

#: Largest request body accepted by default (16 MiB); bigger ones get 413.
DEFAULT_MAX_BODY_SIZE = 16 * 1024 * 1024
#: Largest multipart text field accepted by default (1 MiB); bigger ones get 413.
DEFAULT_MAX_FORM_FIELD_SIZE = 1024 * 1024
#: Most fields one urlencoded body may have; more get 413.
DEFAULT_MAX_FORM_FIELDS = 1000
#: Largest JSON body accepted by default (1 MiB); bigger ones get 413. Parsing holds the GIL for
#: the whole document, so this bounds how long one body can stall the event loop.
DEFAULT_MAX_JSON_SIZE = 1024 * 1024
#: Most parts (fields and files) one multipart body may have; more get 413.
DEFAULT_MAX_MULTIPART_PARTS = 1000
#: Most files one multipart body may carry; more get 413.
DEFAULT_MAX_MULTIPART_FILES = 1000
#: Largest WebSocket message a handler receives (1 MiB); a bigger one closes with 1009.
DEFAULT_WS_MAX_MESSAGE_SIZE = 1024 * 1024

_NOT_FOUND = "404 Not Found"
_TIMED_OUT = "503 Service Unavailable: Request timed out"
_NOT_MADE = object()  # App.env before its first use

#: A Starlette-style lifespan: ``lifespan(app)`` is an async context manager entered at startup
#: and left at shutdown; a mapping it yields becomes ``app.state`` (and ``request.state``).
Lifespan = Callable[["App"], AbstractAsyncContextManager[Mapping[str, Any] | None]]


class _Answered(Exception):
    """The user code produced its final answer early: a middleware short-circuit, or the 500
    for a handler that raised.

    An exception rather than a return value because it must skip ``after_request``, the
    session save and ``_respond``, and pass a multipart form's ``answering()`` unchanged (an
    upload failure replaces an ``HTTPError`` or a normal end, never this answer).
    """

    def __init__(self, response: PlainResponse) -> None:
        self.response = response


def _positive_or_none(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{name} must be positive or None")


def _checked_session_backend(backend: object) -> SessionBackend:
    """``backend``, or the in-memory default for ``None``; ``TypeError`` for anything that is
    not a backend object (a class, a URL string...), which would otherwise fail every request
    with a 500 instead of failing here."""
    if backend is None:
        return InMemorySessionBackend()
    expected = (
        "session_backend must be a session backend object with async load(session_id) and"
        " save(session_id, data, timeout) methods, such as InMemorySessionBackend() or"
        " micropie.sessions.redis.RedisSessionBackend(...)"
    )
    if isinstance(backend, type):
        name = backend.__name__
        raise TypeError(f"{expected}; got the class {name} itself: pass {name}()")
    if isinstance(backend, str):
        raise TypeError(
            f"{expected}; got the string {backend!r} (for Redis:"
            f" session_backend=RedisSessionBackend({backend!r}))"
        )
    missing = [name for name in ("load", "save") if not callable(getattr(backend, name, None))]
    if missing:
        raise TypeError(f"{expected}; got {backend!r}, which has no {' or '.join(missing)}()")
    return backend  # type: ignore[return-value]  # duck-typed, as MicroPie's backends are


class App:
    """A MicroPie application: subclass it and add methods; each public method is a route.

    ``/greet/Alice?x=1`` calls ``greet(self, "Alice")`` (parameters bind from path segments,
    then the query, form fields, JSON keys and uploaded files); ``ws_chat`` answers WebSocket
    connections at ``/chat``. See the README for the settings below; ``cancel_on_disconnect``
    and ``request_timeout`` are in docs/lifetimes.md ("Protecting work from cancellation").
    """

    def __init__(
        self,
        session_backend: SessionBackend | None = None,
        *,
        body_timeout: float | None = 5.0,
        max_body_size: int | None = DEFAULT_MAX_BODY_SIZE,
        max_form_field_size: int | None = DEFAULT_MAX_FORM_FIELD_SIZE,
        session_timeout: int = SESSION_TIMEOUT,
        session_cookie_secure: bool = True,
        session_id_factory: SessionIdFactory = generate_session_id,
        session_id_validator: SessionIdValidator | None = validate_session_id,
        template_dir: str = "templates",
        max_multipart_parts: int | None = DEFAULT_MAX_MULTIPART_PARTS,
        max_multipart_files: int | None = DEFAULT_MAX_MULTIPART_FILES,
        ws_max_message_size: int | None = DEFAULT_WS_MAX_MESSAGE_SIZE,
        lifespan: Lifespan | None = None,
        max_form_fields: int | None = DEFAULT_MAX_FORM_FIELDS,
        max_json_size: int | None = DEFAULT_MAX_JSON_SIZE,
        cancel_on_disconnect: bool = True,
        request_timeout: float | None = None,
    ) -> None:
        _positive_or_none("body_timeout", body_timeout)
        _positive_or_none("max_body_size", max_body_size)
        _positive_or_none("max_form_field_size", max_form_field_size)
        _positive_or_none("max_form_fields", max_form_fields)
        _positive_or_none("max_json_size", max_json_size)
        _positive_or_none("max_multipart_parts", max_multipart_parts)
        _positive_or_none("max_multipart_files", max_multipart_files)
        _positive_or_none("ws_max_message_size", ws_max_message_size)
        _positive_or_none("request_timeout", request_timeout)
        if session_timeout <= 0:
            raise ValueError("session_timeout must be positive")
        if not callable(session_id_factory):
            raise ValueError("session_id_factory must be callable")  # noqa: TRY004 - MicroPie's
        if session_id_validator is not None and not callable(session_id_validator):
            raise ValueError("session_id_validator must be callable or None")
        self.session_backend: SessionBackend = _checked_session_backend(session_backend)
        self.body_timeout = body_timeout
        self.max_body_size = max_body_size
        self.max_form_field_size = max_form_field_size
        self.max_form_fields = max_form_fields
        self.max_json_size = max_json_size
        self.max_multipart_parts = max_multipart_parts
        self.max_multipart_files = max_multipart_files
        self.ws_max_message_size = ws_max_message_size
        self.cancel_on_disconnect = cancel_on_disconnect
        self.request_timeout = request_timeout
        self.session_timeout = session_timeout
        self.session_cookie_secure = session_cookie_secure
        self.session_id_factory = session_id_factory
        self.session_id_validator = session_id_validator
        self.middlewares: list[HttpMiddleware] = []
        self.ws_middlewares: list[WebSocketMiddleware] = []
        self.startup_handlers: list[Callable[[], Awaitable[Any]]] = []
        self.shutdown_handlers: list[Callable[[], Awaitable[Any]]] = []
        self.lifespan = lifespan
        self.state: dict[str, Any] = {}
        self._template_dir = os.path.abspath(template_dir)  # MicroPie: the CWD at construction
        self._env: Any = _NOT_MADE
        self._sweeper = DisconnectSweeper()
        self._lifetime = AppLifetime(self, self._sweeper)
        self._handlers = routing.HandlerTable(self, App)

    @property
    def request(self) -> Request:
        """The request being handled (``LookupError`` outside one)."""
        return current_request.get()

    @property
    def env(self) -> Any:
        """The Jinja2 environment templates render with (``None`` without jinja2), made on first
        use; assign your own to replace it."""
        if self._env is _NOT_MADE:
            self._env = templates.create_environment(self._template_dir)
        return self._env

    @env.setter
    def env(self, environment: Any) -> None:
        self._env = environment

    # --- ASGI entry ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            connection = WebSocketConnection(self, scope, receive, send, self._sweeper, App)
            async with connection as handler_call:
                if handler_call is not None:
                    await handler_call  # here, not a frame further down (see WebSocketConnection)
        elif kind == "lifespan":  # the server is starting
            keep_receive_buffers_off_mmap()  # see ``core.allocator``
            fix_loaded_hypercorn()  # a hypercorn bug that would end the server: see there
            await self._lifetime.run(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one request. A response starts at most once: every answer is sent outside the
        ``try`` whose ``except Exception`` answers 500, and a ``send()`` that fails means the
        client is gone (logged at DEBUG), never a reason to send anything more."""
        request = Request(scope)
        token = current_request.set(request)
        in_its_context = True
        reply: PlainResponse | None = None
        try:
            try:
                media_type, session_sent = self._check_framing(request)
                session = await load_session(self, request) if session_sent else None
                connection, form = self._connection_for(request, receive, media_type)
                answer = None  # stays None when the user code is cancelled
                async with connection:
                    if connection.reading and form is None:
                        await self._read_body(request, receive, connection, str(media_type))
                    answer = await self._run_user_code(request, form, connection)
                timed_out = connection.timed_out
                sub_app = set_by_middleware(request, "_subapp") if self.middlewares else None
                has_a_session = session is not None or has_session(request)
                if has_a_session and answer is not None and not timed_out and sub_app is None:
                    await self._save_session(request, session, answer[2], connection.client_left)
            except _Answered as answered:
                reply = answered.response
            except HTTPError as error:
                reply = error_response(error.status, error.body)
            except ClientDisconnected:
                return
            except Exception:
                logger.exception("Unhandled exception while handling %s", request.path)
                reply = error_response(500, "500 Internal Server Error")
            else:
                if timed_out:
                    reply = error_response(408, bodies.BODY_TIMED_OUT)
                elif answer is None or connection.client_left:
                    return  # cancelled, or a handler that kept running: there is no one to answer
                elif sub_app is None and is_stream(answer[1]):
                    # in the request's context to the end: the stream's code may use it
                    await self._stream(request, receive, send, *answer, connection.deadline)
                    return
                elif sub_app is None:
                    reply = plain_response(*answer)
            # Leave the request's context before the answer goes out: on asyncio a server may
            # start a timer inside the last send() (hypercorn's keep-alive timer), and a loop
            # timer keeps the context it was started in, with this request, its body and its
            # parsed JSON, until its time comes, even once cancelled.
            current_request.reset(token)
            in_its_context = False
            if reply is not None:
                await send_plain(send, *reply)
            elif sub_app is not None:
                await self._hand_over(sub_app, request, session, receive, send)
        except Exception as error:
            if not is_send_failure(error):
                raise
            logger.debug("The client left while %s was answered: %r", request.path, error)
        finally:
            if in_its_context:
                current_request.reset(token)

    # --- the steps of a request ------------------------------------------------------------

    def _check_framing(self, request: Request) -> tuple[str | None, bool]:
        """Check the framing headers: all that comes before the body and the session.

        Returns the media type of a body that must be read (``None`` if there is none to
        read) and whether there may be a session to load (a cookie, or one in the scope).
        """
        scope = request.scope
        content_length, media_type, has_cookie = scan_headers(scope)
        if content_length is not None:
            bodies.check_content_length(content_length, self._body_limit(media_type))
        session_sent = has_cookie or carries_session(scope)
        if request.method in bodies.BODY_METHODS and not request.body_parsed:
            return media_type, session_sent
        return None, session_sent

    def _body_limit(self, media_type: str | None) -> int | None:
        """The largest body of this media type: ``max_body_size``, and ``max_json_size`` too
        for JSON (the smaller wins; ``None`` is no limit)."""
        limit = self.max_body_size
        if media_type is None or not bodies.is_json(media_type):
            return limit
        json_limit = self.max_json_size
        if json_limit is not None and (limit is None or json_limit < limit):
            return json_limit
        return limit

    def _connection_for(
        self, request: Request, receive: Receive, media_type: str | None
    ) -> tuple[ConnectionScope, MultipartForm | None]:
        """What the request runs in (cancelled when its client leaves), and its multipart form.

        A body is read inside the connection scope; watching for the client to leave starts
        after it. A multipart body gets a form that binding and the handler's file reads parse
        on demand, so the handler runs while the upload is still arriving (``HTTPError`` for one
        without a boundary).
        """
        connection = ConnectionScope(
            receive,
            self._sweeper,
            reading=media_type is not None,
            keep_running=not self.cancel_on_disconnect,
        )
        attach_connection(request, connection)
        if media_type is None or "multipart/form-data" not in media_type:
            return connection, None
        limits = MultipartLimits(
            body_timeout=self.body_timeout,
            max_body_size=self.max_body_size,
            max_field_size=self.max_form_field_size,
            max_parts=self.max_multipart_parts,
            max_files=self.max_multipart_files,
        )
        return connection, open_form(limits, request, receive, connection)

    async def _read_body(
        self, request: Request, receive: Receive, connection: ConnectionScope, media_type: str
    ) -> None:
        """Read and parse a JSON or urlencoded body, then start watching for the client.

        A form is parsed as it arrives, so its limits answer 413 before the rest is read.
        """
        form = None
        if not bodies.is_json(media_type):
            form = UrlencodedParser(self.max_form_field_size, self.max_form_fields)
        body = await bodies.read_body(
            receive,
            max_size=self._body_limit(media_type),
            idle_timeout=self.body_timeout,
            deadlines=connection,
            on_chunk=None if form is None else form.feed,
        )
        connection.start_watching()
        await bodies.parse_body(request, body, media_type, form)

    def _run_user_code(
        self, request: Request, form: MultipartForm | None, connection: ConnectionScope
    ) -> Coroutine[Any, Any, tuple[int, Any, list[Any]]]:
        """Middleware, routing, binding, the handler and ``after_request`` (awaitable).

        With a multipart form, its end stops the form, and an upload that failed (or a client
        that left) decides the answer instead (see ``MultipartForm.__exit__``). A plain def
        handing back a coroutine: ordinary requests pay for no extra frame.
        """
        if form is None:
            return self._user_code(request, None, connection)
        return self._user_code_with_upload(request, form, connection)

    async def _user_code_with_upload(
        self, request: Request, form: MultipartForm, connection: ConnectionScope
    ) -> tuple[int, Any, list[Any]]:
        with form.answering():
            return await self._user_code(request, form, connection)

    async def _user_code(
        self, request: Request, form: PendingForm | None, connection: ConnectionScope
    ) -> tuple[int, Any, list[Any]]:
        """The user code itself; binding waits for the form fields the handler takes."""
        if self.middlewares:
            for middleware in self.middlewares:
                short_circuit = await middleware.before_request(request)
                if short_circuit:
                    raise _Answered(self._short_circuit(short_circuit))
            if set_by_middleware(request, "_subapp") is not None:
                if form is not None:
                    await form.complete()
                return 0, None, []
        handler, plan = self._route(request)
        if form is not None:
            await routing.wait_for_form_fields(plan, request, form)
            form.check()  # an upload that already failed never reaches the handler
        args, kwargs = routing.bind_http(plan, request)
        try:
            if plan.policy is PLAIN and self.request_timeout is None:
                # ``_called``, inlined: the common path pays for no extra coroutine frame.
                result = handler(*args, **kwargs)
                if plan.is_coroutine or inspect.isawaitable(result):
                    result = await result
            else:
                result = await self._call_with_policy(
                    request, connection, handler, plan, args, kwargs
                )
        except (HTTPError, MultipartFileError, _Answered):
            raise  # the upload's own answer (413, 400, 408), a client that left, a time-out
        except Exception:
            logger.exception("Unhandled exception in HTTP handler for %s", request.path)
            raise _Answered(error_response(500, "500 Internal Server Error")) from None
        status, body, headers = normalise_result(result)
        for middleware in self.middlewares:
            override = await middleware.after_request(request, status, body, headers)
            if override:
                status = override.get("status_code", status)
                body = override.get("body", body)
                headers = list(override.get("headers", headers))
        return status, body, headers

    async def _call_with_policy(
        self,
        request: Request,
        connection: ConnectionScope,
        handler: Callable[..., Any],
        plan: routing.HandlerPlan,
        args: list[Any],
        kwargs: dict[str, Any],
    ) -> Any:
        """Call a handler that is ``@shielded``, has a time limit, or both (``policy``)."""
        if plan.policy.shielded:
            connection.keep_running()
        limit = plan.policy.time_limit
        if limit is APP_DEFAULT:
            limit = self.request_timeout
        if limit is None:
            return await _called(handler, plan, args, kwargs)
        with connection.time_limit(limit):
            return await _called(handler, plan, args, kwargs)
        logger.warning(
            "%s %s: the handler %s ran out of its time limit (%g s); answered 503",
            request.method,
            request.path,
            getattr(handler, "__name__", handler),
            limit,
        )
        raise _Answered(error_response(503, _TIMED_OUT))

    def _route(self, request: Request) -> tuple[Callable[..., Any], routing.HandlerPlan]:
        """The handler for this request and its binding plan (``HTTPError(404)`` if none).

        MicroPie's rules: ``/a/b`` → ``a("b")``; an unknown name falls back to ``index``, which
        then gets every segment if it takes positional parameters; ``_private`` and ``ws_``
        names are not routes unless middleware named one in ``request._route_handler``. Under a
        ``root_path`` (a proxy's prefix), routing uses the path below it (``route_path``).
        """
        path = route_path(request.scope).lstrip("/")
        segments = path.split("/") if path else []
        name = set_by_middleware(request, "_route_handler") if self.middlewares else None
        if name is None:
            name = segments[0] if segments else "index"
            if name.startswith(("_", "ws_")):
                raise HTTPError(404, _NOT_FOUND)
        if not request.path_params:
            request.path_params = segments[1:]
        found = self._handlers.lookup(name)
        if found is routing.Lookup.MISSING:
            name, found = "index", self._handlers.lookup("index")
        if isinstance(found, routing.Lookup):
            raise HTTPError(404, _NOT_FOUND)
        handler, plan = found
        if name == "index" and path and path != "index":
            if not plan.accepts_positional:
                raise HTTPError(404, _NOT_FOUND)
            request.path_params = segments
        return handler, plan

    def _short_circuit(self, result: dict[str, Any]) -> PlainResponse:
        return plain_response(
            *normalise_result(
                (result.get("status_code", 200), result.get("body", ""), result.get("headers", []))
            )
        )

    async def _stream(
        self,
        request: Request,
        receive: Receive,
        send: Send,
        status: int,
        body: Any,
        headers: list[Any],
        deadline: float,
    ) -> None:
        """Stream the answer; it is cut off at the handler's time limit (``deadline``)."""
        if request.method == "HEAD":  # headers now; an endless stream must not hold it
            await answer_head(send, status, encode_headers(headers), body)
            return
        with deadline_scope(deadline) as time_limit:
            await send_stream(
                send,
                receive,
                status,
                encode_headers(headers),
                body,
                request.path,
                self._lifetime.stopping,
            )
        if time_limit.cancelled_caught:
            logger.warning(
                "%s %s: the stream ran out of its time limit; cut off",
                request.method,
                request.path,
            )

    async def _save_session(
        self,
        request: Request,
        session: SessionState | None,
        headers: list[Any],
        client_left: bool,
    ) -> None:
        """Save the request's session, adding its cookie to ``headers``; after the client left
        (a handler that kept running), only a session the client already has."""
        cookie = await save_session(self, request, session, client_left=client_left)
        if cookie is not None:
            headers.append(("Set-Cookie", cookie))

    async def _hand_over(
        self,
        sub_app: ASGIApp,
        request: Request,
        session: SessionState | None,
        receive: Receive,
        send: Send,
    ) -> None:
        """Let the sub-app answer; if it fails, answer 500 only when it had not started to."""
        started = send_failed = False

        async def sub_app_send(message: Message) -> None:
            nonlocal started, send_failed
            started = started or message["type"] == "http.response.start"
            try:
                await send(message)
            except Exception:
                send_failed = True
                raise

        try:
            shared = session or SessionState(self.session_backend)
            await hand_over(sub_app, request, shared, receive, sub_app_send)
        except Exception as error:
            if send_failed:
                logger.debug("The client left while %s was answered: %r", request.path, error)
                return
            logger.exception("Unhandled exception in the sub-app for %s", request.path)
            if not started:
                await send_plain(send, *error_response(500, "500 Internal Server Error"))

    # --- helpers users call ----------------------------------------------------------------

    def _redirect(
        self, location: str, extra_headers: list[tuple[str, str]] | None = None
    ) -> tuple[int, str, list[tuple[str, str]]]:
        """``(302, "", [("Location", <encoded location>), *extra_headers])``."""
        return 302, "", [("Location", redirects.encode_location(location)), *(extra_headers or [])]

    async def _render_template(self, name: str, /, **context: Any) -> str:
        """Render a Jinja2 template from the template folder (autoescaped for html/xml).

        ``name`` is positional-only so that the context may hold a ``name`` of its own
        (``self._render_template("page.html", name="Alice")``); MicroPie's documented calls
        always pass the template name positionally.
        """
        if self._env is _NOT_MADE:  # the first render imports jinja2: not on the event loop
            await anyio.to_thread.run_sync(lambda: self.env)
        return await templates.render(self.env, name, context)

    # --- lifetime and serving --------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """The server is shutting down gracefully: close WebSockets (1001) and end streams.

        ``app.serve()``, ``app.run()`` and ``python -m micropie`` call this as soon as a shutdown
        is requested, so that long-lived connections end within the grace period instead of
        being cut when it runs out. Plain requests in flight finish normally.
        """
        self._lifetime.begin_shutdown()
        self._sweeper.begin_shutdown()

    def start_soon(self, function: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``function(*args)`` in the background for as long as the app lives."""
        self._lifetime.start_soon(function, *args)

    async def start(self, function: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Like ``start_soon``, but wait until the task calls ``task_status.started(value)``."""
        return await self._lifetime.start(function, *args)

    async def serve(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED,
        **options: Any,
    ) -> None:
        """Serve this app with hypercorn inside the caller's trio or asyncio program."""
        from micropie.serving import serve

        await serve(self, host=host, port=port, task_status=task_status, **options)

    def run(self, *, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
        """Serve this app with hypercorn until interrupted (for scripts)."""
        from micropie.serving import run

        run(self, host=host, port=port, **options)


async def _called(
    handler: Callable[..., Any], plan: routing.HandlerPlan, args: list[Any], kwargs: dict[str, Any]
) -> Any:
    """What ``handler(*args, **kwargs)`` gives, awaited if it is awaitable."""
    result = handler(*args, **kwargs)
    if plan.is_coroutine or inspect.isawaitable(result):
        result = await result
    return result
