"""HTTP: one request/response between the test and an app call, and the httpx transport that
runs each request as one (see the package docstring for streaming and disconnects)."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import httpx
from anyio.abc import TaskGroup

from micropie.core.types import ASGIApp, Message, Scope
from micropie.testing._app_call import _AppCall, _open_task_group
from micropie.testing._errors import ASGIProtocolError
from micropie.testing._responses import _BufferedStream, _ResponseStream, _TestResponse
from micropie.testing._scopes import _build_scope

logger = logging.getLogger("micropie")

#: Response body chunks the app may send ahead of the reader before its ``send()`` blocks. Small
#: on purpose: a test should see the app wait for a slow reader, as it would behind a socket.
RESPONSE_BUFFER_CHUNKS = 1


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


class _ASGITransport(httpx.AsyncBaseTransport):
    """Runs each request as an app call; see the package docstring for the model."""

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
        body = _ResponseStream(exchange.read_chunk, partial(self.close_exchange, exchange))
        return _TestResponse(exchange.status, exchange.headers, body)

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
