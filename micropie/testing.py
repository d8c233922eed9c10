"""An in-process test client for ASGI apps, on asyncio and trio.

``TestClient`` is an ``httpx.AsyncClient`` whose transport calls an ASGI app directly: no socket,
no server, no thread. It runs on whichever backend the test runs on, because everything it does
goes through anyio.

Theory of operation
-------------------
*Who owns the tasks.* Used as ``async with TestClient(app) as client``, the client opens an anyio
task group in ``__aenter__`` and closes it in ``__aexit__``. The lifespan call and every request's
app call run as tasks in that group, so nothing the app does can outlive the ``async with`` block.
An app call never raises into the group: its exception is stored and re-raised in the test, in the
task that made the request, as itself (never wrapped in an ``ExceptionGroup``).

*Streaming and backpressure.* A request returns as soon as the app sends ``http.response.start``.
The body then flows through a bounded anyio memory stream of ``RESPONSE_BUFFER_CHUNKS`` chunks:
when the test reads slowly, the app's ``await send(...)`` blocks, as it would behind a socket whose
peer stops reading. ``client.get(...)`` reads the whole body, ``client.stream(...)`` lets the test
read chunk by chunk while the app is still running.

*What a disconnect means.* ``receive()`` hands the app the request body (``http.request`` messages
in the chunks httpx produced, ``more_body`` true until the last) and then blocks. It returns
``{"type": "http.disconnect"}`` once the response is complete or the client left: the test closed
the response before its end (left ``client.stream(...)`` early) or the request was cancelled.
After the client left, ``send()`` drops every message, like a server does; it raises nothing,
because this client speaks ASGI spec 2.3. Closing a response then waits for the app call to
return, at most ``disconnect_timeout`` seconds. An app still running after that has outlived its
client, which is a bug in the app under test: it is cancelled and ``AppOutlivedClientError`` is
raised. ``client.get(...)`` therefore returns only after the app call has returned, so work the
app does after its last body chunk has happened (and its exceptions surface) by then.

*WebSockets.* ``client.websocket_connect(path)`` runs a ``websocket`` app call the same way, in
the client's task group (so only inside ``async with``), and yields a ``WebSocketSession``;
the WebSocket section below explains the handshake, the buffering and the two ways to close.

*Without ``async with``.* ``client = TestClient(app)`` works too, with no lifespan: each request
opens its own task group, runs the app to completion and buffers the whole body before the
response is handed back. An endless stream (server-sent events) then never returns; stream those
inside ``async with``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
)
from contextlib import AsyncExitStack, asynccontextmanager
from types import AsyncGeneratorType, TracebackType
from typing import Any, Self, TypeVar

import anyio
import anyio.lowlevel
import httpx
from anyio.abc import TaskGroup

from .concurrency import collapse_excgroups
from .types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "ASGIProtocolError",
    "AppOutlivedClientError",
    "LifespanError",
    "TestClient",
    "WebSocketClosed",
    "WebSocketRejected",
    "WebSocketSession",
]


logger = logging.getLogger("micropie")
_T = TypeVar("_T")

#: Response body chunks the app may send ahead of the reader before its ``send()`` blocks. Small
#: on purpose: a test should see the app wait for a slow reader, as it would behind a socket.
RESPONSE_BUFFER_CHUNKS = 1

#: 2.3: ``send()`` after a disconnect is dropped silently (2.4 would make it raise ``OSError``).
_ASGI = {"version": "3.0", "spec_version": "2.3"}
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class ASGIProtocolError(RuntimeError):
    """The app broke the ASGI contract: messages out of order, or no response at all."""


class AppOutlivedClientError(RuntimeError):
    """An app call kept running ``disconnect_timeout`` seconds after its client left.

    The client had been told (``http.disconnect``, or ``lifespan.shutdown`` answered); the call has
    been cancelled. An ASGI app must return promptly once its client is gone, so this is a bug in
    the app under test, not in the test.
    """


class LifespanError(RuntimeError):
    """The app answered ``lifespan.startup.failed`` or ``lifespan.shutdown.failed``."""

    def __init__(self, phase: str, message: str) -> None:
        super().__init__(f"lifespan {phase} failed" + (f": {message}" if message else ""))
        self.phase = phase
        self.message = message


# -- helpers shared by every kind of connection (HTTP, WebSocket, lifespan) ---------------------


@asynccontextmanager
async def _open_task_group() -> AsyncIterator[TaskGroup]:
    """An anyio task group whose single exceptions come out unwrapped."""
    with collapse_excgroups():
        async with anyio.create_task_group() as task_group:
            yield task_group


def _build_scope(
    scope_type: str,
    url: httpx.URL,
    headers: httpx.Headers,
    *,
    client: tuple[str, int],
    root_path: str,
    state: dict[str, Any],
) -> Scope:
    """The connection scope common to ``http`` and ``websocket``.

    ``path`` is the whole (percent-decoded) request path, ``root_path`` only says where the app is
    mounted, as hypercorn does it: request ``/sub/x`` to reach ``/x`` of an app mounted at ``/sub``.
    ``state`` is a shallow copy of the lifespan state, per the ASGI lifespan-state extension.
    """
    return {
        "type": scope_type,
        "asgi": dict(_ASGI),
        "http_version": "1.1",
        "scheme": url.scheme,
        "server": (url.host, url.port or _DEFAULT_PORTS.get(url.scheme, 80)),
        "client": client,
        "root_path": root_path,
        "path": url.path,
        "raw_path": url.raw_path.split(b"?", 1)[0],
        "query_string": url.query,
        "headers": [(key.lower(), value) for key, value in headers.raw],
        "state": dict(state),
    }


class _AppCall:
    """One call of the app (a connection, or the lifespan) running as a task the client owns.

    The task never lets an app exception into the task group (that would cancel the whole test):
    it stores it in ``error`` for the side that talks to the app to re-raise. Cancellation and
    other ``BaseException``s do propagate. ``on_finish`` runs when the call has ended either way.
    """

    def __init__(
        self,
        app: ASGIApp,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        description: str,
        on_finish: Callable[[], None],
    ) -> None:
        self.description = description
        self.error: Exception | None = None
        self.finished = anyio.Event()
        self._app, self._scope, self._receive, self._send = app, scope, receive, send
        self._on_finish = on_finish
        self._cancel_scope = anyio.CancelScope()
        self._error_reported = False

    def report_error(self, *, raise_it: bool) -> None:
        """Re-raise the app's exception (once), or log it when the client shows 500s instead."""
        error = self.error
        if error is None or self._error_reported:
            return
        self._error_reported = True
        if raise_it:
            raise error
        logger.error("%s raised", self.description, exc_info=error)

    async def run(self) -> None:
        with self._cancel_scope:
            try:
                await self._app(self._scope, self._receive, self._send)
            except Exception as exc:
                self.error = exc
            finally:
                self._on_finish()
                self.finished.set()

    async def wait_finished(self, grace: float, *, after: str) -> None:
        """Wait for the call to return, ``after`` its client told it to; cancel it if it won't.

        Shielded so that a cancelled test still cleans up; bounded by ``grace`` seconds, and as
        long again for a cancelled call to unwind. Raises ``AppOutlivedClientError`` when the call
        had to be cancelled.
        """
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(grace):
                await self.finished.wait()
            if self.finished.is_set():
                return
            self._cancel_scope.cancel()
            with anyio.move_on_after(grace):
                await self.finished.wait()
        fate = "was cancelled" if self.finished.is_set() else "ignores cancellation, still running"
        raise AppOutlivedClientError(
            f"{self.description} was still running {grace:g} s after {after} ({fate}). An ASGI"
            " app must return promptly once its client is gone: this is a bug in the app under"
            " test."
        )


# -- HTTP ----------------------------------------------------------------------------------------


class _HTTPExchange:
    """One HTTP request/response between the test (the client) and one app call.

    The app side is ``receive``/``send``; the client side is ``response_ready``, ``status``,
    ``headers``, ``read_chunk`` and ``close``.
    """

    def __init__(self, request: httpx.Request, scope: Scope, transport: _ASGITransport) -> None:
        if not isinstance(request.stream, httpx.AsyncByteStream):
            raise TypeError("TestClient needs an async request body (use the async httpx API)")
        self._request_chunks = aiter(request.stream)
        self._body_started = False
        self._next_chunk: bytes | None = None
        self._request_complete = False
        self._is_head = request.method == "HEAD"
        self._raise_app_exceptions = transport.raise_app_exceptions
        self._disconnect_timeout = transport.disconnect_timeout

        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.response_ready = anyio.Event()  # response started, or the app call ended
        self._response_complete = False
        self._client_left = False
        self._disconnected = anyio.Event()  # response complete, or client left
        self._body_send, self._body_receive = anyio.create_memory_object_stream[bytes](
            RESPONSE_BUFFER_CHUNKS
        )
        self.call = _AppCall(
            transport.app,
            scope,
            self._receive,
            self._send,
            description=f"The app call for {request.method} {request.url.raw_path.decode()}",
            on_finish=self._on_app_finished,
        )

    # The app's side.

    async def _receive(self) -> Message:
        if not self._request_complete and not self._client_left:
            return await self._request_message()
        await self._disconnected.wait()
        return {"type": "http.disconnect"}

    async def _request_message(self) -> Message:
        # Read one chunk ahead, so that the last chunk itself carries more_body=False.
        if not self._body_started:
            self._body_started = True
            self._next_chunk = await self._read_request_chunk()
        chunk = self._next_chunk
        self._next_chunk = None if chunk is None else await self._read_request_chunk()
        more_body = self._next_chunk is not None
        self._request_complete = not more_body
        return {"type": "http.request", "body": chunk or b"", "more_body": more_body}

    async def _read_request_chunk(self) -> bytes | None:
        async for chunk in self._request_chunks:
            if chunk:
                return chunk
        return None

    async def _send(self, message: Message) -> None:
        if self._client_left:
            await anyio.lowlevel.checkpoint()  # nobody will read it; a server drops it too
            return
        message_type = message["type"]
        if message_type == "http.response.start":
            self._start_response(message)
        elif message_type == "http.response.body":
            await self._send_body(message)
        else:
            raise ASGIProtocolError(f"unexpected message {message_type!r} on an http connection")

    def _start_response(self, message: Message) -> None:
        if self.status is not None:
            raise ASGIProtocolError("http.response.start sent twice")
        self.status = int(message["status"])
        self.headers = [(bytes(key), bytes(value)) for key, value in message.get("headers", ())]
        self.response_ready.set()

    async def _send_body(self, message: Message) -> None:
        if self.status is None:
            raise ASGIProtocolError("http.response.body sent before http.response.start")
        if self._response_complete:
            raise ASGIProtocolError("http.response.body sent after the response was complete")
        body = bytes(message.get("body", b""))
        if body and not self._is_head:
            try:
                await self._body_send.send(body)  # blocks while the reader is behind
            except anyio.BrokenResourceError:
                return  # the client left while we waited
        if not message.get("more_body", False):
            self._response_complete = True
            self._body_send.close()
            self._disconnected.set()

    def _on_app_finished(self) -> None:
        self._body_send.close()
        self.response_ready.set()

    # The client's side.

    async def read_chunk(self) -> bytes | None:
        """The next body chunk, or None at the end; raises if the body was cut short."""
        try:
            return await self._body_receive.receive()
        except anyio.ClosedResourceError:
            return None  # the client closed the response itself
        except anyio.EndOfStream:
            if not self._response_complete:
                self._raise_truncated()
            return None

    def _raise_truncated(self) -> None:
        self.report_app_error()  # the app's own exception, when it raised one
        if self._raise_app_exceptions and self.call.error is None:
            raise ASGIProtocolError("the app returned before finishing the response body")
        raise httpx.RemoteProtocolError("the app ended the response before its last body chunk")

    async def close(self) -> None:
        """The client is done: disconnect if the body is unfinished, wait for the app call."""
        if not self._response_complete:
            self._client_left = True
            self._disconnected.set()
        self._body_receive.close()  # wakes an app blocked in send()
        await self.call.wait_finished(self._disconnect_timeout, after="its client left")
        self.report_app_error()

    def report_app_error(self) -> None:
        self.call.report_error(raise_it=self._raise_app_exceptions)


class _ResponseStream(httpx.AsyncByteStream):
    """The response body as httpx reads it; closing it early is the client disconnecting.

    A plain async iterator, not an async generator: nothing for trio to find abandoned.
    """

    def __init__(self, exchange: _HTTPExchange, transport: _ASGITransport) -> None:
        self._exchange = exchange
        self._transport = transport

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._exchange.read_chunk()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        await self._transport.close_exchange(self._exchange)


class _BufferedStream(httpx.AsyncByteStream):
    """A body read in full already (outside ``async with``), as one chunk."""

    def __init__(self, body: bytes) -> None:
        self._body: bytes | None = body

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        body, self._body = self._body, None
        if not body:
            raise StopAsyncIteration
        return body


class _DirectStream(httpx.AsyncByteStream):
    """Iterates the body itself, closes through the stream httpx wrapped around it."""

    def __init__(self, body: httpx.AsyncByteStream, wrapper: httpx.AsyncByteStream) -> None:
        self._body = body
        self._wrapper = wrapper

    def __aiter__(self) -> AsyncIterator[bytes]:
        return aiter(self._body)

    async def aclose(self) -> None:
        await self._wrapper.aclose()


class _TestResponse(httpx.Response):
    """An ``httpx.Response`` whose body iterators may be left early, on trio too.

    httpx reads a body through a chain of async generators (``aiter_lines`` → ``aiter_text`` →
    ``aiter_bytes`` → ``aiter_raw`` → the client's ``BoundAsyncStream``). Leaving an ``async for``
    over one of them early abandons the chain, and trio warns (``ResourceWarning``) about each
    abandoned generator when it is garbage collected. This response keeps the generators it
    hands out and closes them when it is closed, and lets ``aiter_raw`` read the body directly
    rather than through the client's generator.
    """

    def __init__(
        self, status_code: int, headers: list[tuple[bytes, bytes]], body: httpx.AsyncByteStream
    ) -> None:
        self._body = body
        self._iterators: list[AsyncGenerator[Any, None]] = []
        super().__init__(status_code, headers=headers, stream=body)

    @property
    def stream(self) -> httpx.SyncByteStream | httpx.AsyncByteStream:
        return self._stream

    @stream.setter
    def stream(self, stream: httpx.SyncByteStream | httpx.AsyncByteStream) -> None:
        if stream is not self._body and isinstance(stream, httpx.AsyncByteStream):
            stream = _DirectStream(self._body, stream)
        self._stream = stream

    def _track(self, iterator: AsyncIterator[_T]) -> AsyncIterator[_T]:
        if isinstance(iterator, AsyncGeneratorType):
            self._iterators.append(iterator)
        return iterator

    def aiter_raw(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        return self._track(super().aiter_raw(chunk_size))

    def aiter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        return self._track(super().aiter_bytes(chunk_size))

    def aiter_text(self, chunk_size: int | None = None) -> AsyncIterator[str]:
        return self._track(super().aiter_text(chunk_size))

    def aiter_lines(self) -> AsyncIterator[str]:
        return self._track(super().aiter_lines())

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            # Outermost first; skip those on the stack right now (aiter_raw closes the response
            # when the body ends, from inside the chain): they are finishing anyway.
            for iterator in reversed(self._iterators):
                if not iterator.ag_running:
                    await iterator.aclose()


class _ASGITransport(httpx.AsyncBaseTransport):
    """Runs each request as an app call; see the module docstring for the model."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        raise_app_exceptions: bool,
        client: tuple[str, int],
        root_path: str,
        disconnect_timeout: float,
        state: dict[str, Any],
    ) -> None:
        self.app = app
        self.raise_app_exceptions = raise_app_exceptions
        self.client = client
        self.root_path = root_path
        self.disconnect_timeout = disconnect_timeout
        self.state = state
        self.task_group: TaskGroup | None = None  # the client's, while inside ``async with``
        self._open_exchanges: set[_HTTPExchange] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.task_group is not None:
            return await self._open_response(self.task_group, request)
        async with _open_task_group() as task_group:
            response = await self._open_response(task_group, request)
            try:
                body = b"".join([chunk async for chunk in response.aiter_raw()])
            finally:
                await response.aclose()
        return _TestResponse(response.status_code, response.headers.raw, _BufferedStream(body))

    async def _open_response(self, task_group: TaskGroup, request: httpx.Request) -> httpx.Response:
        """Start the app call; return as soon as the app started its response."""
        scope = _build_scope(
            "http",
            request.url,
            request.headers,
            client=self.client,
            root_path=self.root_path,
            state=self.state,
        )
        scope["method"] = request.method
        exchange = _HTTPExchange(request, scope, self)
        self._open_exchanges.add(exchange)
        task_group.start_soon(exchange.call.run)
        try:
            await exchange.response_ready.wait()
        except BaseException:
            await self.close_exchange(exchange)  # the request was cancelled: a disconnect
            raise
        if exchange.status is None:
            return await self._no_response(exchange)
        return _TestResponse(exchange.status, exchange.headers, _ResponseStream(exchange, self))

    async def _no_response(self, exchange: _HTTPExchange) -> httpx.Response:
        await self.close_exchange(exchange)  # re-raises the app's exception if configured to
        if self.raise_app_exceptions:
            raise ASGIProtocolError(
                f"{exchange.call.description} returned without sending http.response.start"
            )
        if exchange.call.error is None:
            logger.error("%s sent no response", exchange.call.description)
        return _TestResponse(500, [], _BufferedStream(b""))

    async def close_exchange(self, exchange: _HTTPExchange) -> None:
        self._open_exchanges.discard(exchange)
        await exchange.close()

    async def close_open_exchanges(self) -> None:
        """Disconnect every response the test left open, and wait for their app calls."""
        while self._open_exchanges:
            await self.close_exchange(next(iter(self._open_exchanges)))


# -- lifespan ------------------------------------------------------------------------------------


class _Lifespan:
    """Speaks the ASGI lifespan protocol to the app, whose call runs in the client's task group.

    An app that returns from (or raises on) the lifespan scope before answering startup does not
    support lifespan; the client then carries on without it, as servers and Starlette do.
    """

    def __init__(self, app: ASGIApp, state: dict[str, Any], timeout: float) -> None:
        self._to_app, self._app_inbox = anyio.create_memory_object_stream[Message](1)
        self._app_outbox, self._from_app = anyio.create_memory_object_stream[Message](1)
        self._timeout = timeout
        self._supported = True
        self._app_waiting = anyio.Event()  # the app asked for its next message, or returned
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        scope["state"] = state
        self._call = _AppCall(
            app,
            scope,
            self._receive,
            self._app_outbox.send,
            description="The lifespan call",
            on_finish=self._on_app_finished,
        )

    async def _receive(self) -> Message:
        self._app_waiting.set()
        return await self._app_inbox.receive()

    def _on_app_finished(self) -> None:
        self._app_outbox.close()
        self._app_waiting.set()

    async def _ask(self, message_type: str) -> Message | None:
        """Send one message to the app; its answer, or None if the call ended without one."""
        self._app_waiting = anyio.Event()
        await self._to_app.send({"type": message_type})
        try:
            return await self._from_app.receive()
        except anyio.EndOfStream:
            return None

    async def startup(self, task_group: TaskGroup) -> None:
        """Raises ``LifespanError`` when startup failed (the app's exception as its cause)."""
        task_group.start_soon(self._call.run)
        answer = await self._ask("lifespan.startup")
        if answer is None:
            self._supported = False
            logger.info("no lifespan support in the app (%r); going on without", self._call.error)
            return
        if answer["type"] == "lifespan.startup.failed":
            # Give the app the chance to end (and hand us its exception as the cause).
            with anyio.move_on_after(self._timeout):
                await self._app_waiting.wait()
            raise LifespanError("startup", str(answer.get("message", ""))) from self._call.error
        _expect(answer, "lifespan.startup.complete")

    async def shutdown(self) -> None:
        """Raises ``LifespanError``, the app's exception, or ``AppOutlivedClientError``."""
        if not self._supported:
            return
        answer = await self._ask("lifespan.shutdown")
        await self._call.wait_finished(self._timeout, after="lifespan.shutdown")
        if answer is not None and answer["type"] == "lifespan.shutdown.failed":
            raise LifespanError("shutdown", str(answer.get("message", ""))) from self._call.error
        if self._call.error is not None:
            raise self._call.error
        if answer is not None:
            _expect(answer, "lifespan.shutdown.complete")

    def close(self) -> None:
        for stream in (self._to_app, self._app_inbox, self._app_outbox, self._from_app):
            stream.close()


def _expect(message: Message, expected: str) -> None:
    if message["type"] != expected:
        raise ASGIProtocolError(f"expected {expected!r} from the app, got {message['type']!r}")


# -- WebSocket -----------------------------------------------------------------------------------
#
# ``client.websocket_connect(path)`` runs one app call on a ``websocket`` scope, in the client's
# task group, and hands the test a ``WebSocketSession`` (the client's end of the connection).
#
# *Handshake.* The app's first ``receive()`` returns ``websocket.connect``; the session is handed
# over once the app sent ``websocket.accept``. A ``websocket.close`` instead is a refusal
# (hypercorn answers the handshake with 403): ``WebSocketRejected`` with the app's code and
# reason. An app that raises or returns before either surfaces its exception (or
# ``ASGIProtocolError``).
#
# *Messages.* The test's messages reach the app through an unbounded stream, so a test never
# blocks on a send and the order in which it sends and receives cannot deadlock it against the
# app. The app's messages come through a bounded one (``WEBSOCKET_BUFFER_MESSAGES``): an app
# pushing faster than the test reads waits in ``send()``, as it would behind a socket.
#
# *Closing.* The app's ``websocket.close`` is answered at once, as a client's close frame
# would be (``websocket.disconnect`` with the same code), and makes the test's next receive
# raise ``WebSocketClosed``. The test closing (``session.close()``, or leaving the block, which
# closes with 1000) hands the app ``websocket.disconnect`` after the messages already sent,
# drops whatever the app sends from then on, and waits for the app call to return, as for a
# disconnected HTTP response: at most ``disconnect_timeout`` seconds, then
# ``AppOutlivedClientError``. An app that returns without closing is reported as close 1011, as
# hypercorn does; an exception that escaped the app is re-raised in the test, as itself, by the
# receive, close or block exit that comes first.

#: Messages the app may send ahead of the test before its ``send()`` blocks.
WEBSOCKET_BUFFER_MESSAGES = 16

#: What the test is told when the app returned after accepting without closing (hypercorn's
#: answer: close 1011).
_ENDED_WITHOUT_CLOSE = (1011, "")


class WebSocketRejected(Exception):
    """The app refused the connection: it sent ``websocket.close`` before accepting.

    ``code`` and ``reason`` are the app's. Over a real server only an HTTP 403 reaches the
    client; in-process the test sees what the app said.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        suffix = f": {self.reason}" if self.reason else ""
        return f"WebSocket connection rejected with code {self.code}{suffix}"


class WebSocketClosed(Exception):
    """The app closed the connection (``code``, ``reason``): raised by the receive that would
    have returned the next message, and by sends after it."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        suffix = f": {self.reason}" if self.reason else ""
        return f"WebSocket connection closed by the app with code {self.code}{suffix}"


class WebSocketSession:
    """The test's end of one in-process WebSocket connection (``client.websocket_connect``).

    Send with ``send_text``/``send_bytes``/``send_json``; receive with ``receive()`` (``str`` for
    a text message, ``bytes`` for a binary one), ``receive_text``, ``receive_bytes`` or
    ``receive_json`` (``TypeError`` when the message is of the other kind). Once the app has
    closed the connection they raise ``WebSocketClosed``. ``close(code, reason)`` is the client's
    close: the app gets ``websocket.disconnect`` and ``close`` returns when the app call has.

    ``accepted_subprotocol`` and ``accept_headers`` are what the app's ``websocket.accept``
    said; cookies it set are in the client's cookie jar too.
    """

    def __init__(self, scope: Scope, transport: _ASGITransport, description: str) -> None:
        self.accepted_subprotocol: str | None = None
        self.accept_headers = httpx.Headers()
        self._offered: list[str] = list(scope.get("subprotocols") or [])
        self._disconnect_timeout = transport.disconnect_timeout
        self._raise_app_exceptions = transport.raise_app_exceptions
        self._to_app, self._app_inbox = anyio.create_memory_object_stream[Message](float("inf"))
        self._app_outbox, self._from_app = anyio.create_memory_object_stream[Message](
            WEBSOCKET_BUFFER_MESSAGES
        )
        self._connect_delivered = False
        self._disconnect = (1000, "")  # what the app is told once the test's stream ends
        self._app_inbox_ended = False
        self._handshake: Message | None = None  # the app's accept or close
        self._handshake_done = anyio.Event()  # answered, or the app call ended
        self._app_close: tuple[int, str] | None = None  # the app sent websocket.close
        self._client_left = False
        self._closed = False  # close() has run
        self.call = _AppCall(
            transport.app,
            scope,
            self._receive,
            self._send,
            description=description,
            on_finish=self._on_app_finished,
        )

    # The app's side.

    async def _receive(self) -> Message:
        if not self._connect_delivered:
            self._connect_delivered = True
            return {"type": "websocket.connect"}
        try:
            return await self._app_inbox.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            code, reason = self._disconnect
            return {"type": "websocket.disconnect", "code": code, "reason": reason}

    async def _send(self, message: Message) -> None:
        if self._client_left:
            await anyio.lowlevel.checkpoint()  # nobody will read it; a server drops it too
            return
        message_type = message["type"]
        if self._handshake is None:
            self._answer_handshake(message)
            await anyio.lowlevel.checkpoint()
        elif self._app_close is not None:
            raise ASGIProtocolError(f"{message_type!r} sent after websocket.close")
        elif message_type == "websocket.send":
            await self._forward(_checked_frame(message))
        elif message_type == "websocket.close":
            self._app_close = (int(message.get("code") or 1000), str(message.get("reason") or ""))
            self._end_app_inbox(*self._app_close)  # the client's answering close frame
            await self._forward({"type": "websocket.close"})
            self._app_outbox.close()
        else:
            raise ASGIProtocolError(f"unexpected message {message_type!r} after websocket.accept")

    def _answer_handshake(self, message: Message) -> None:
        message_type = message["type"]
        if message_type == "websocket.accept":
            subprotocol = message.get("subprotocol")
            if subprotocol is not None and subprotocol not in self._offered:
                raise ASGIProtocolError(f"accepted subprotocol {subprotocol!r} was not offered")
            self.accepted_subprotocol = subprotocol
            self.accept_headers = httpx.Headers(
                [(bytes(key), bytes(value)) for key, value in message.get("headers", ())]
            )
        elif message_type == "websocket.close":
            self._end_app_inbox(1000, "")  # hypercorn's answer once its 403 is sent
        else:
            raise ASGIProtocolError(f"{message_type!r} sent before websocket.accept")
        self._handshake = message
        self._handshake_done.set()

    async def _forward(self, message: Message) -> None:
        try:
            await self._app_outbox.send(message)  # blocks while the test is behind
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the client left while we waited

    def _end_app_inbox(self, code: int, reason: str) -> None:
        """After the messages already sent, the app's ``receive()`` says disconnect."""
        if not self._app_inbox_ended:
            self._app_inbox_ended = True
            self._disconnect = (code, reason)
            self._to_app.close()

    def _on_app_finished(self) -> None:
        self._app_outbox.close()
        self._handshake_done.set()

    # The client's side.

    async def handshake(self) -> None:
        """Wait for the app's answer; raise ``WebSocketRejected`` (or the app's error) if it is
        not an accept."""
        await self._handshake_done.wait()
        handshake = self._handshake
        if handshake is not None and handshake["type"] == "websocket.accept":
            return
        await self.close()  # wait for the app call to end; re-raises its exception
        if handshake is not None:
            code = int(handshake.get("code") or 1000)
            raise WebSocketRejected(code, str(handshake.get("reason") or ""))
        if self._raise_app_exceptions:
            raise ASGIProtocolError(
                f"{self.call.description} returned without accepting or closing the connection"
            )
        # What a client of a real server sees: the handshake failed (hypercorn answers 500).
        raise WebSocketRejected(1006, "the app ended without accepting the connection")

    async def send_text(self, data: str) -> None:
        """Send a text message."""
        await self._send_to_app({"type": "websocket.receive", "text": data})

    async def send_bytes(self, data: bytes) -> None:
        """Send a binary message."""
        await self._send_to_app({"type": "websocket.receive", "bytes": data})

    async def send_json(self, data: Any, *, mode: str = "text") -> None:
        """Send ``data`` as JSON, in a text message (or binary with ``mode="binary"``)."""
        encoded = json.dumps(data, separators=(",", ":"))
        if mode == "binary":
            await self.send_bytes(encoded.encode("utf-8"))
        else:
            await self.send_text(encoded)

    async def _send_to_app(self, message: Message) -> None:
        if self._client_left:
            raise RuntimeError("this WebSocket session is closed")
        if self._app_close is not None:
            raise WebSocketClosed(*self._app_close)
        try:
            await self._to_app.send(message)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            await anyio.lowlevel.checkpoint()  # the app call has ended: the message is lost

    async def receive(self) -> str | bytes:
        """The next message: ``str`` for text, ``bytes`` for binary.

        Raises ``WebSocketClosed`` once the app closed the connection (or returned, as close
        1011), or the app's own exception when it raised.
        """
        message = await self._receive_frame()
        text = message.get("text")
        return str(text) if text is not None else bytes(message["bytes"])

    async def receive_text(self) -> str:
        """The next message, which must be a text message (``TypeError`` otherwise)."""
        data = await self.receive()
        if not isinstance(data, str):
            raise TypeError(f"expected a text message, got a binary one: {data!r:.60}")
        return data

    async def receive_bytes(self) -> bytes:
        """The next message, which must be a binary message (``TypeError`` otherwise)."""
        data = await self.receive()
        if not isinstance(data, bytes):
            raise TypeError(f"expected a binary message, got a text one: {data!r:.60}")
        return data

    async def receive_json(self) -> Any:
        """The next message (text or binary) parsed as JSON."""
        return json.loads(await self.receive())

    async def _receive_frame(self) -> Message:
        if self._client_left:
            raise RuntimeError("this WebSocket session is closed")
        try:
            message = await self._from_app.receive()
        except anyio.EndOfStream:
            if self._app_close is None:  # the app returned (or raised) without closing
                self.report_app_error()
                self._app_close = _ENDED_WITHOUT_CLOSE
            raise WebSocketClosed(*self._app_close) from None
        if message["type"] == "websocket.close":
            assert self._app_close is not None
            raise WebSocketClosed(*self._app_close)
        return message

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection from the client's side and wait for the app call to return.

        The app gets ``websocket.disconnect`` with ``code`` and ``reason`` (unless it closed
        first); what it sends afterwards is dropped. Raises the app's exception, or
        ``AppOutlivedClientError`` when it was still running ``disconnect_timeout`` seconds
        later. Closing again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        self._client_left = True
        self._end_app_inbox(code, reason)
        self._from_app.close()  # wakes an app blocked in send()
        try:
            await self.call.wait_finished(self._disconnect_timeout, after="its client left")
        finally:
            self._app_inbox.close()
            self._app_outbox.close()
        self.report_app_error()

    def report_app_error(self) -> None:
        self.call.report_error(raise_it=self._raise_app_exceptions)


def _checked_frame(message: Message) -> Message:
    """A ``websocket.send`` with exactly one of ``text`` (str) and ``bytes`` (bytes)."""
    text, data = message.get("text"), message.get("bytes")
    if (text is None) == (data is None):
        raise ASGIProtocolError("websocket.send needs exactly one of 'text' and 'bytes'")
    if text is not None and not isinstance(text, str):
        raise ASGIProtocolError(f"websocket.send 'text' must be str, not {type(text).__name__}")
    if text is not None:
        return {"type": "websocket.send", "text": text}
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ASGIProtocolError(f"websocket.send 'bytes' must be bytes, not {type(data).__name__}")
    return {"type": "websocket.send", "bytes": bytes(data)}


def _websocket_request(
    client: httpx.AsyncClient, path: str, subprotocols: list[str] | None, headers: Any
) -> httpx.Request:
    """The handshake as an httpx request: the client's base URL, headers and cookies, plus the
    headers a browser sends to upgrade (so the app's scope looks like hypercorn's)."""
    request = client.build_request("GET", path, headers=headers)
    handshake = {
        "connection": "upgrade",
        "upgrade": "websocket",
        "sec-websocket-version": "13",
    }
    for key, value in handshake.items():
        request.headers[key] = value
    request.headers.setdefault("sec-websocket-key", base64.b64encode(os.urandom(16)).decode())
    if subprotocols:
        request.headers["sec-websocket-protocol"] = ", ".join(subprotocols)
    return request


def _websocket_scope(
    request: httpx.Request, transport: _ASGITransport, offered: list[str]
) -> Scope:
    scheme = {"http": "ws", "https": "wss"}.get(request.url.scheme, request.url.scheme)
    scope = _build_scope(
        "websocket",
        request.url.copy_with(scheme=scheme),
        request.headers,
        client=transport.client,
        root_path=transport.root_path,
        state=transport.state,
    )
    scope["subprotocols"] = offered
    return scope


# -- the client ----------------------------------------------------------------------------------


class TestClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` that talks to an ASGI app in-process, on asyncio or trio.

    ``async with TestClient(app) as client`` runs lifespan startup on entry and shutdown on exit
    and lets responses stream (``client.stream(...)``); without ``async with`` each request runs
    the app to completion and buffers the body. Cookies persist across requests, as with any
    httpx client; the default ``base_url`` is ``http://testserver``.

    - ``lifespan``: send lifespan events (only inside ``async with``).
    - ``raise_app_exceptions``: re-raise an exception that escapes the app in the test (it is a
      framework bug); when False the client answers 500 instead, or raises
      ``httpx.RemoteProtocolError`` if the response had already started.
    - ``client``, ``root_path``: the scope's ``client`` and ``root_path``.
    - ``disconnect_timeout``: how long an app call may keep running after its client left (or
      after ``lifespan.shutdown``) before it is cancelled and ``AppOutlivedClientError`` raised.

    Other keyword arguments go to ``httpx.AsyncClient`` (headers, cookies, follow_redirects...).
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        app: ASGIApp,
        *,
        base_url: str = "http://testserver",
        lifespan: bool = True,
        raise_app_exceptions: bool = True,
        client: tuple[str, int] = ("127.0.0.1", 50000),
        root_path: str = "",
        disconnect_timeout: float = 5.0,
        **httpx_kwargs: Any,
    ) -> None:
        self.app = app
        self.app_state: dict[str, Any] = {}
        self._asgi_transport = _ASGITransport(
            app,
            raise_app_exceptions=raise_app_exceptions,
            client=client,
            root_path=root_path,
            disconnect_timeout=disconnect_timeout,
            state=self.app_state,
        )
        self._use_lifespan = lifespan
        self._lifespan: _Lifespan | None = None  # one per ``async with``, with its streams
        self._exit_stack: AsyncExitStack | None = None
        super().__init__(base_url=base_url, transport=self._asgi_transport, **httpx_kwargs)

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        async with AsyncExitStack() as stack:
            stack.push_async_callback(super().__aexit__)
            if self._use_lifespan:
                self._lifespan = _Lifespan(
                    self.app, self.app_state, self._asgi_transport.disconnect_timeout
                )
                stack.callback(self._lifespan.close)
            task_group = await stack.enter_async_context(_open_task_group())
            self._asgi_transport.task_group = task_group
            stack.callback(setattr, self._asgi_transport, "task_group", None)
            if self._lifespan is not None:
                await self._lifespan.startup(task_group)
            self._exit_stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        stack, self._exit_stack = self._exit_stack, None
        task_group = self._asgi_transport.task_group
        if stack is None or task_group is None:
            raise RuntimeError("TestClient.__aexit__ without a matching __aenter__")
        async with stack:
            if exc_value is not None and not isinstance(exc_value, Exception):
                # Cancelled, KeyboardInterrupt...: no time for a graceful shutdown.
                task_group.cancel_scope.cancel()
                return
            try:
                await self._asgi_transport.close_open_exchanges()
            finally:
                if self._lifespan is not None:
                    await self._lifespan.shutdown()

    # -- WebSocket (see the WebSocket section above) ------------------------------------------

    @asynccontextmanager
    async def websocket_connect(
        self,
        path: str,
        subprotocols: list[str] | None = None,
        headers: dict[str, str] | list[tuple[str, str]] | httpx.Headers | None = None,
    ) -> AsyncIterator[WebSocketSession]:
        """Open a WebSocket connection to the app: ``async with client.websocket_connect("/chat")
        as ws``; the block yields once the app accepted.

        The handshake carries the client's headers and cookies, ``headers`` and the offered
        ``subprotocols``; cookies the app sets on accept go to the client's cookie jar (a
        ``Secure`` one, such as micropie's session cookie by default, is only sent back when
        ``base_url`` is ``https://``; the scope's scheme is then ``wss``). Raises
        ``WebSocketRejected`` (with the app's ``code`` and ``reason``) when the app closes before
        accepting. Leaving the block closes the connection with 1000 and waits for the app call
        to return (see ``WebSocketSession.close``). Needs ``async with TestClient(app)``: the app
        call runs in the client's task group.
        """
        transport = self._asgi_transport
        if transport.task_group is None:
            raise RuntimeError(
                "websocket_connect() needs `async with TestClient(app) as client:`, whose task"
                " group runs the app call"
            )
        request = _websocket_request(self, path, subprotocols, headers)
        session = WebSocketSession(
            _websocket_scope(request, transport, list(subprotocols or [])),
            transport,
            f"The app call for WebSocket {request.url.raw_path.decode()}",
        )
        transport.task_group.start_soon(session.call.run)
        try:
            await session.handshake()
            response = httpx.Response(101, headers=session.accept_headers, request=request)
            self.cookies.extract_cookies(response)
            yield session
        finally:
            await session.close()
