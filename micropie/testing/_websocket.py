"""WebSocket: the test's end of one in-process connection.

``client.websocket_connect(path)`` runs one app call on a ``websocket`` scope, in the client's
task group, and hands the test a ``WebSocketSession`` (the client's end of the connection).

*Handshake.* The app's first ``receive()`` returns ``websocket.connect``; the session is handed
over once the app sent ``websocket.accept``. A ``websocket.close`` instead is a refusal
(hypercorn answers the handshake with 403): ``WebSocketRejected`` with the app's code and
reason. An app that raises or returns before either surfaces its exception (or
``ASGIProtocolError``).

*Messages.* The test's messages reach the app through an unbounded stream, so a test never
blocks on a send and the order in which it sends and receives cannot deadlock it against the
app. The app's messages come through a bounded one (``WEBSOCKET_BUFFER_MESSAGES``): an app
pushing faster than the test reads waits in ``send()``, as it would behind a socket.

*Closing.* The app's ``websocket.close`` is answered at once, as a client's close frame
would be (``websocket.disconnect`` with the same code), and makes the test's next receive
raise ``WebSocketClosed``. The test closing (``session.close()``, or leaving the block, which
closes with 1000) hands the app ``websocket.disconnect`` after the messages already sent,
drops whatever the app sends from then on, and waits for the app call to return, as for a
disconnected HTTP response: at most ``disconnect_timeout`` seconds, then
``AppOutlivedClientError``. An app that returns without closing is reported as close 1011, as
hypercorn does; an exception that escaped the app is re-raised in the test, as itself, by the
receive, close or block exit that comes first.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import httpx

from micropie.core.types import Message, Scope
from micropie.testing._app_call import _AppCall
from micropie.testing._errors import ASGIProtocolError, WebSocketClosed, WebSocketRejected

if TYPE_CHECKING:
    from micropie.testing._http import _ASGITransport

#: Messages the app may send ahead of the test before its ``send()`` blocks.
WEBSOCKET_BUFFER_MESSAGES = 16

#: What the test is told when the app returned after accepting without closing (hypercorn's
#: answer: close 1011).
_ENDED_WITHOUT_CLOSE = (1011, "")


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
