"""``WebSocket``: what a ``ws_`` handler is given, its settings, and what it does per message.

See the package docstring for the theory of operation.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar, cast

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream

from micropie.core import json_codec
from micropie.core.types import Message, Receive, Scope, Send
from micropie.http.request import WebSocketRequest
from micropie.lifetimes.connection_tasks import ConnectionTasks
from micropie.sessions import (
    format_session_cookie,
    validate_session_id,
)
from micropie.websocket._errors import (
    ConnectionClosed,
    ConnectionNotOpen,
    check_close_code,
    close_message,
)
from micropie.websocket._messages import (
    _as_bytes,
    _as_text,
    _payload,
    _receive_failed,
    _too_big,
    server_send_cannot_fail,
)
from micropie.websocket._pump import next_from_pump, reject
from micropie.websocket._state import (
    _CLOSED,
    _CONNECTING,
    _OPEN,
    connection_tasks,
    end_send_turn,
    take_send_turn,
)

_T = TypeVar("_T")

#: Largest incoming message (in bytes, text counted as UTF-8) a handler gets by default; a bigger
#: one closes the connection with 1009. 1 MiB, like the ``websockets`` and trio-websocket
#: clients. ``App(ws_max_message_size=None)`` lifts it (hypercorn's own 16 MiB limit remains).
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024

#: Sends in a row without a read (and without a sweep in between) after which a send yields to
#: the event loop first (see ``WebSocket._send_frame``).
SENDS_BETWEEN_CHECKPOINTS = 8

_NOT_ACCEPTED = "WebSocket connection not accepted"


class WebSocket:
    """One WebSocket connection, as a ``ws_`` handler sees it (the first argument).

    MicroPie's API: ``accept``, ``receive_text``/``receive_bytes``, ``send_text``/``send_bytes``,
    ``close`` and the attributes ``accepted`` and ``session_id``. Beyond it: ``receive()`` (str
    or bytes), ``receive_json``/``send_json``, ``async for message in ws``, ``subprotocols``,
    ``request``/``scope`` and ``start_soon`` for tasks that live as long as the connection.

    The framework builds it; constructing one yourself around raw ASGI callables works too (then
    ``accept`` reads ``websocket.connect`` itself and nothing reads ahead or enforces limits).
    """

    __slots__ = (
        "__dict__",  # user attributes (``ws.nickname = ...``); allocated only when used
        "_close_info",
        "_closed_by_handler",
        "_connect_pending",
        "_handler_scope",
        "_host",
        "_inbox",
        "_max_message_size",
        "_reading",
        "_reads",
        "_reads_at_last_sweep",
        "_receive",
        "_send",
        "_send_direct",
        "_send_waiters",
        "_sending",
        "_sends_since_read",
        "_session_cookie_pending",
        "_state",
        "_tasks",
        "request",
        "scope",
        "session_cookie_secure",
        "session_id",
        "session_id_validator",
        "subprotocol",
    )

    def __init__(
        self,
        receive: Receive,
        send: Send,
        *,
        session_cookie_secure: bool = True,
        session_id_validator: Callable[[str], str | None] | None = validate_session_id,
        scope: Scope | None = None,
        request: WebSocketRequest | None = None,
    ) -> None:
        self._receive = receive
        self._send = send
        self.session_id: str | None = None
        self.session_cookie_secure = session_cookie_secure
        self.session_id_validator = session_id_validator
        self._session_cookie_pending = False
        self.scope: Scope = scope if scope is not None else {"type": "websocket"}
        self.request = request if request is not None else WebSocketRequest(self.scope)
        #: The subprotocol chosen in ``accept`` (``None`` when there is none).
        self.subprotocol: str | None = None
        self._state = _CONNECTING
        self._connect_pending = True  # WebSocketConnection reads websocket.connect itself
        self._closed_by_handler = False
        self._close_info: tuple[int, str] | None = None  # why it is over, once it is
        self._sending = False  # a send is in progress (see _state.take_send_turn)
        self._send_waiters: anyio.Event | None = None
        self._send_direct = False  # set by accept (see _send_message)
        self._inbox: MemoryObjectReceiveStream[Message] | None = None
        self._host: anyio.abc.TaskGroup | None = None  # where its tasks run, while served
        self._tasks: ConnectionTasks | None = None  # made when the first task starts
        self._handler_scope: anyio.CancelScope | None = None
        self._max_message_size: int | None = None
        self._reading = False  # the handler is waiting in receive() itself
        self._reads = 0  # messages the handler has read, for the sweeper (see _pump.sweep)
        self._reads_at_last_sweep = -1
        self._sends_since_read = 0  # see _send_frame

    # --- state ---------------------------------------------------------------------------

    @property
    def accepted(self) -> bool:
        """Whether the connection is open: accepted and not closed yet (MicroPie's flag)."""
        return self._state is _OPEN

    @property
    def subprotocols(self) -> list[str]:
        """The subprotocols the client offered, in its order of preference."""
        return list(self.scope.get("subprotocols") or [])

    def _connection_closed(self) -> ConnectionClosed:
        code, reason = self._close_info or (1006, "")
        return ConnectionClosed(code, reason)

    # Every way the connection ends is one of the three transitions below (``close()``, the
    # handler's own, is the third): each sets ``_close_info`` with ``_state = _CLOSED``, so
    # ``_close_info is not None`` means "over" and nothing reads ``receive()`` after it.

    def _client_left(self, code: int, reason: str) -> None:
        """The client is gone (or the server says so): ``code``/``reason`` unless the
        connection was already over for another reason."""
        if self._close_info is None:
            self._close_info = (code, reason)
        self._state = _CLOSED

    def _closing_for_framework(self, code: int, reason: str) -> bool:
        """The framework closes the connection (after the handler, at shutdown, on a protocol
        error): ``True`` if the caller should now send the close, ``False`` if the connection
        is over already. Not the handler's own close: sends after it raise
        ``ConnectionClosed``, and ``_pump.end_soon`` still cancels a handler that lingers.
        """
        if self._close_info is not None:
            return False
        self._close_info = (code, reason)
        self._state = _CLOSED
        return True

    # --- handshake -------------------------------------------------------------------------

    async def accept(self, subprotocol: str | None = None, session_id: str | None = None) -> None:
        """Accept the connection; nothing can be sent or received before this.

        ``subprotocol`` must be one the client offered (``ValueError`` otherwise, when the server
        said what was offered). ``session_id`` sets the session cookie to that id; it must pass
        the app's validator (``ValueError``). The accept carries a ``Set-Cookie`` when the
        connection has a new session id (see ``WebSocketConnection``). A second call raises
        ``RuntimeError("WebSocket connection already accepted")``.
        """
        if self._state is _OPEN:
            raise RuntimeError("WebSocket connection already accepted")
        if self._state is _CLOSED:
            if self._closed_by_handler:
                raise RuntimeError("WebSocket connection is closed")
            raise self._connection_closed()
        if self._connect_pending:
            message = await self._receive()
            if message["type"] != "websocket.connect":
                raise ValueError(f"Expected websocket.connect, got {message['type']}")
            self._connect_pending = False
        offered = self.scope.get("subprotocols")
        if subprotocol is not None and offered is not None and subprotocol not in offered:
            raise ValueError(f"Subprotocol {subprotocol!r} was not offered by the client")
        if session_id is not None:
            self._use_session_id(session_id)
        headers: list[tuple[bytes, bytes]] = []
        if self._session_cookie_pending and self.session_id:
            cookie = format_session_cookie(self.session_id, secure=self.session_cookie_secure)
            headers.append((b"Set-Cookie", cookie.encode("latin-1")))
            self._session_cookie_pending = False
        message = {"type": "websocket.accept", "subprotocol": subprotocol, "headers": headers}
        await take_send_turn(self)
        try:
            await self._send_or_closed(message)
            self._state = _OPEN
        finally:
            end_send_turn(self)
        self.subprotocol = subprotocol
        # Direct sends hand back the server's own awaitable, which must be a coroutine like the
        # one ``send_text`` returns otherwise (``asyncio.create_task`` takes only those).
        self._send_direct = server_send_cannot_fail(self.scope) and inspect.iscoroutinefunction(
            self._send
        )

    def _use_session_id(self, session_id: str) -> None:
        validator = self.session_id_validator
        validated = validator(session_id) if validator is not None else session_id
        if not isinstance(validated, str) or not validated:
            raise ValueError("session_id was rejected by the session ID validator")
        self.session_id = validated
        self._session_cookie_pending = True

    # --- receiving -------------------------------------------------------------------------

    async def _next_message(self, convert: Callable[[Message], _T], iterating: bool = False) -> _T:
        """The next ``websocket.receive`` message, passed through ``convert``.

        Raises ``ConnectionClosed`` once the connection is over (``StopAsyncIteration`` when
        ``iterating``). While no pump runs, the handler reads ``receive()`` itself: no task hop
        per message. Every public ``receive_*`` returns this coroutine as it is, and the
        conversion happens here, so a message passes through one frame of ours, not three: the
        frames between the app and the server are paid for at every suspension, and kept
        alive for as long as the connection is open.
        """
        if self._state is _CONNECTING and self._close_info is None:
            raise ConnectionNotOpen(_NOT_ACCEPTED)
        while True:
            if self._inbox is not None:
                message = await next_from_pump(self, self._inbox, iterating)
                return convert(message)
            if self._close_info is not None:
                if iterating:
                    raise StopAsyncIteration
                raise self._connection_closed()
            self._reading = True
            try:
                message = await self._receive()
            except Exception:
                message = _receive_failed()
            finally:
                self._reading = False
            if message["type"] == "websocket.receive":
                limit = self._max_message_size
                text = message.get("text")
                # Inline for the usual case (no limit, or text that cannot be over it even at
                # four bytes a character): no call per message.
                if (
                    limit is None
                    or (text is not None and len(text) * 4 <= limit)
                    or not _too_big(message, limit)
                ):
                    self._reads += 1
                    self._sends_since_read = 0
                    if text is not None and convert is not _as_bytes:
                        return text  # type: ignore[no-any-return]  # what _payload, _as_text give
                    return convert(message)
            # Anything else ends the connection (a disconnect, a message over the limit, a
            # type the server must not send), so the loop goes round at most once more and
            # then raises: never a second ``receive()`` for one that returned at once.
            await reject(self, message)

    def receive(self) -> Coroutine[Any, Any, str | bytes]:
        """The next message: ``str`` for a text frame, ``bytes`` for a binary one (awaitable).

        Raises ``ConnectionClosed`` when the connection is over, ``RuntimeError`` before accept.
        """
        return self._next_message(_payload)

    def receive_text(self) -> Coroutine[Any, Any, str]:
        """The next message as text; a binary frame is decoded as UTF-8 (bad bytes dropped)."""
        return self._next_message(_as_text)

    def receive_bytes(self) -> Coroutine[Any, Any, bytes]:
        """The next message as bytes; a text frame is encoded as UTF-8."""
        return self._next_message(_as_bytes)

    async def receive_json(self) -> Any:
        """The next message (text or binary) parsed as JSON; ``ValueError`` if it is not JSON."""
        data = await self.receive()
        return json_codec.loads(data.encode("utf-8") if isinstance(data, str) else data)

    def __aiter__(self) -> WebSocket:
        """``async for message in ws`` yields ``receive()`` results until the connection ends."""
        return self

    def __anext__(self) -> Coroutine[Any, Any, str | bytes]:
        return self._next_message(_payload, True)  # iterating

    # --- sending ---------------------------------------------------------------------------

    async def _send_or_closed(self, message: Message) -> None:
        """Hand ``message`` to the server; a server that says the peer is gone (``OSError``,
        ASGI 2.4) makes it ``ConnectionClosed``."""
        try:
            await self._send(message)
        except OSError as exc:
            self._client_left(1006, "")
            raise self._connection_closed() from exc

    async def _send_frame(self, message: Message) -> None:
        if self._sends_since_read >= SENDS_BETWEEN_CHECKPOINTS:
            # A server's send() need not yield: hypercorn drops sends to a client that left
            # without a checkpoint. A handler that only sends would spin, starve the event loop
            # and never learn that the client left, so every so many sends in a row without a
            # read yield once (the pump or the server can then report the disconnect). Not
            # every one: a push handler usually waits elsewhere between sends (a broadcast, a
            # timer), and a checkpoint per message cost fan-out a task switch per delivery.
            # The sweeper resets the count every tick (``_pump.sweep``): a handler that let
            # the loop run since does not starve it, so fan-out (one send per message, each
            # subscriber in step) no longer pays 1,000 task switches on every 8th message.
            self._sends_since_read = 0
            await anyio.lowlevel.checkpoint()
        if self._sending:
            await take_send_turn(self)
        else:
            self._sending = True  # the uncontended case, without a call
        try:
            if self._state is not _OPEN:
                if self._close_info is not None and not self._closed_by_handler:
                    raise self._connection_closed()
                raise ConnectionNotOpen(_NOT_ACCEPTED)
            # ``_send_or_closed``, inlined: on servers that take this path for every message,
            # a call here would be one more frame resumed at every suspension of the send.
            try:
                await self._send(message)
            except OSError as exc:  # ASGI 2.4 servers: the peer is gone
                self._client_left(1006, "")
                raise self._connection_closed() from exc
        finally:
            self._sending = False
            if self._send_waiters is not None:
                end_send_turn(self)
        self._sends_since_read += 1

    def _send_message(self, message: Message) -> Coroutine[Any, Any, None]:
        """``message`` to the server: straight to its ``send()`` when nothing needs doing
        around it, else through ``_send_frame``.

        Straight means no frame of ours while the server sends, which is most of the
        framework's cost per echo: for an open connection with no send in progress and no
        checkpoint due, on a server whose ``send()`` cannot fail (``_send_direct``: a server
        that speaks ASGI before 2.4, as hypercorn does, raises no ``OSError`` for a client that
        left, so there is nothing to translate into ``ConnectionClosed``) and is a coroutine
        function. Such a send does not
        hold the send turn, so a send of another task (or ``close()``) can reach the server
        while it is still there, and a send woken from waiting for the turn can be passed by
        it: the server orders what reaches it (hypercorn frames a message before its first
        await and writes under a lock per connection). A send after ``close()`` still raises.
        """
        if (
            self._send_direct
            and self._state is _OPEN
            and not self._sending
            and self._sends_since_read < SENDS_BETWEEN_CHECKPOINTS
        ):
            self._sends_since_read += 1
            return cast(Coroutine[Any, Any, None], self._send(message))  # see accept
        return self._send_frame(message)

    def send_text(self, data: str) -> Coroutine[Any, Any, None]:
        """Send a text message (awaitable). ``RuntimeError`` before accept or after
        ``close()``; ``ConnectionClosed`` after the client left."""
        return self._send_message({"type": "websocket.send", "text": data})

    def send_bytes(self, data: bytes) -> Coroutine[Any, Any, None]:
        """Send a binary message (awaitable; same errors as ``send_text``)."""
        return self._send_message({"type": "websocket.send", "bytes": data})

    async def send_json(self, data: Any) -> None:
        """Send ``data`` serialised as JSON in a text message."""
        await self.send_text(json_codec.dumps(data))

    async def send(self, data: str | bytes | Mapping[str, Any]) -> None:
        """Send a text (``str``) or binary (``bytes``) message.

        A raw ASGI message (a mapping, as MicroPie's ``ws.send`` took) also works: it goes
        through ``accept``, ``send_*`` or ``close`` so the connection state stays right.
        """
        if isinstance(data, str):
            await self.send_text(data)
        elif isinstance(data, bytes | bytearray | memoryview):
            await self.send_bytes(bytes(data))
        else:
            await self._send_raw_message(data)

    async def _send_raw_message(self, message: Mapping[str, Any]) -> None:
        kind = message.get("type")
        if kind == "websocket.accept":
            await self.accept(message.get("subprotocol"))
        elif kind == "websocket.close":
            await self.close(message.get("code", 1000), message.get("reason"))
        elif kind == "websocket.send" and message.get("bytes") is not None:
            await self.send_bytes(bytes(message["bytes"]))
        elif kind == "websocket.send":
            await self.send_text(message["text"])
        else:
            raise ValueError(f"Unexpected message type: {kind}")

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Close the connection with ``code`` and ``reason``.

        Does nothing if the connection is not open (MicroPie's rule). ``ValueError``, before
        anything is sent, for a code a server may not send (RFC 6455 §7.4: 1000-1003,
        1007-1014 and 3000-4999 are the ones it may; wsproto-based clients such as
        trio-websocket still refuse 1014, registered after the RFC).

        After it, sends raise ``RuntimeError`` and nothing is read from the server any more:
        ``receive_*`` returns what was read ahead before the close, then raises
        ``ConnectionClosed`` with this code.
        """
        check_close_code(code)
        await take_send_turn(self)
        try:
            if self._state is not _OPEN:
                return
            self._state = _CLOSED
            self._closed_by_handler = True
            self._close_info = (code, reason or "")
            await self._send_or_closed(close_message(code, reason or ""))
        finally:
            end_send_turn(self)

    # --- tasks ---------------------------------------------------------------------------

    def start_soon(self, function: Callable[..., Any], *args: Any) -> None:
        """Run ``function(*args)`` in a task that lives exactly as long as the connection.

        It is cancelled when the handler ends (or the client leaves and the handler is
        cancelled); if it raises, the handler is cancelled and the connection closes with 1011.
        ``RuntimeError`` when the connection is not being served.
        """
        connection_tasks(self, "start_soon() needs a connection that is being served").start_soon(
            function, *args
        )
