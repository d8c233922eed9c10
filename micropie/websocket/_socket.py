"""``WebSocket``: what a ``ws_`` handler is given, and every change of its connection's state.

The state machine
-----------------
Every transition of a connection happens in a method of this module's ``WebSocket``: no other
module writes its attributes (``_lifetime`` and ``dispatch`` call the methods below, marked
*framework*). The handler's API and the framework's side live in one class because both change
the same state, and one object per connection is all an open connection pays for.

``_state``: ``CONNECTING`` → ``OPEN`` → ``CLOSED``
    ``accept()`` opens (reading ``websocket.connect`` itself unless the framework did, see
    ``_handshake_done``). Every way the connection ends sets ``_close_info`` (why) together
    with ``CLOSED``, so ``_close_info is not None`` means "over" and nothing reads ``receive()``
    after it: the handler's ``close()`` (``_closed_by_handler``; its later sends raise
    ``RuntimeError``), ``_client_left`` (a disconnect, a failed send) and
    ``_closing_for_framework`` (after the handler, at shutdown, on a protocol error).

Send turn: ``_sending``, ``_send_waiters``
    One send at a time among those that take the turn (``_take_send_turn``): the handler, its
    tasks and the pump may all send. The uncontended case is the flag alone; an
    ``anyio.Event`` exists only while sends wait. A direct send (``_send_message``) skips the
    turn on servers whose ``send()`` cannot fail.

Reading: ``_reading``, ``_reads``, ``_reads_at_last_sweep``, ``_sends_since_read``, ``_inbox``
    The handler reads ``receive()`` itself while it waits in ``receive_*()`` (``_reading``).
    Each round the app's sweeper calls ``_swept()``: a handler that has read nothing since the
    last round and is not reading now gets a *pump* (``_start_pump``), a task that reads for it
    from then on into ``_inbox`` (``INBOX_SIZE`` messages, so a handler that does not read stops
    the server reading the socket). A message that is not for the handler (a disconnect, one
    over ``_max_message_size``, a type a server must not send) goes to ``_reject``, which ends
    the connection.

Serving: ``_host``, ``_handler_scope``, ``_tasks``
    ``_begin_serving`` enters the handler's cancel scope and says where the connection's tasks
    run (the sweeper's task group, or the connection's own); ``_end_serving`` leaves it and
    refuses new tasks; ``_close_tasks`` cancels and awaits them. Once the connection is over
    the handler gets ``HANDLER_GRACE_AFTER_CLOSE`` seconds before its scope is cancelled
    (``_end_soon``, a deadline, not a task); at graceful shutdown ``_going_away_soon`` closes
    with 1001 from a task and then does the same.

Per message the cost is what an echo benchmark against a raw ASGI app measures
(``benchmarks/websocket.py``): ``receive_*``/``send_*`` hand back the one coroutine that does the
work instead of awaiting it (each frame between the app and the server is paid at every
suspension, and kept alive by every open connection), and sends take a flag, not a lock.
"""

from __future__ import annotations

import enum
import inspect
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar, cast

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from micropie.core import json_codec
from micropie.core.types import Message, Receive, Scope, Send
from micropie.http.request import WebSocketRequest
from micropie.lifetimes.cancel_scopes import CancelScopeLike, ScopeMaker
from micropie.lifetimes.connection_tasks import ConnectionTasks
from micropie.sessions import format_session_cookie, validate_session_id
from micropie.websocket._errors import (
    _GOING_AWAY,
    _TOO_BIG,
    INTERNAL_ERROR,
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

logger = logging.getLogger("micropie")

_T = TypeVar("_T")

#: Largest incoming message (in bytes, text counted as UTF-8) a handler gets by default; a bigger
#: one closes the connection with 1009. 1 MiB, like the ``websockets`` and trio-websocket
#: clients. ``App(ws_max_message_size=None)`` lifts it (hypercorn's own 16 MiB limit remains).
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024

#: Sends in a row without a read (and without a sweep in between) after which a send yields to
#: the event loop first (see ``WebSocket._send_frame``).
SENDS_BETWEEN_CHECKPOINTS = 8

#: Seconds a handler may keep running once its connection is over (the client left, the
#: framework closed it, or the server is shutting down) before it is cancelled. Long enough for
#: a handler that sees ``ConnectionClosed`` to clean up, short enough that a push-only loop
#: stops well within a second. Cleanup that needs longer belongs in ``after_websocket`` (which
#: runs after the handler, uncancelled) or in a shielded scope.
HANDLER_GRACE_AFTER_CLOSE = 0.5

#: Messages read ahead of the handler. Small, so a handler that does not read soon stops the
#: server from reading the socket instead of buffering without bound.
INBOX_SIZE = 8

#: Seconds allowed for sending close 1001 when the server shuts the connection down.
SHUTDOWN_CLOSE_TIMEOUT = 1.0

_NOT_ACCEPTED = "WebSocket connection not accepted"


class _State(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


# Module constants, not ``_State.OPEN`` at each use: the state is checked on every message, and
# a global lookup is cheaper than an attribute lookup on the enum class.
_CONNECTING, _OPEN, _CLOSED = _State.CONNECTING, _State.OPEN, _State.CLOSED


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
        self._connect_pending = True  # accept() reads websocket.connect (see _handshake_done)
        self._closed_by_handler = False
        self._close_info: tuple[int, str] | None = None  # why it is over, once it is
        self._sending = False  # a send is in progress (see _take_send_turn)
        self._send_waiters: anyio.Event | None = None
        self._send_direct = False  # set by accept (see _send_message)
        self._inbox: MemoryObjectReceiveStream[Message] | None = None
        self._host: anyio.abc.TaskGroup | None = None  # where its tasks run, while served
        self._tasks: ConnectionTasks | None = None  # made when the first task starts
        self._handler_scope: CancelScopeLike | None = None
        self._max_message_size: int | None = None
        self._reading = False  # the handler is waiting in receive() itself
        self._reads = 0  # messages the handler has read, for the sweeper (see _swept)
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
        ``ConnectionClosed``, and ``_end_soon`` still cancels a handler that lingers.
        """
        if self._close_info is not None:
            return False
        self._close_info = (code, reason)
        self._state = _CLOSED
        return True

    # --- handshake -------------------------------------------------------------------------

    def _handshake_done(
        self, session_id: str | None, new_session: bool, max_message_size: int | None
    ) -> None:
        """*Framework*: it read ``websocket.connect``, routed the connection and chose its
        session; ``accept`` sends the session cookie when ``new_session``."""
        self._connect_pending = False
        self.session_id = session_id
        self._session_cookie_pending = new_session
        self._max_message_size = max_message_size

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
        await self._take_send_turn()
        try:
            await self._send_or_closed(message)
            self._state = _OPEN
        finally:
            self._end_send_turn()
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
                message = await self._next_from_pump(self._inbox, iterating)
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
            await self._reject(message)

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

    # --- the pump: reading for a handler that does not ------------------------------------

    def _swept(self) -> None:
        """*Framework*, every sweeper round: start a pump for a handler that stopped reading.

        A handler that has read nothing since the last round and is not waiting in
        ``receive()`` now (a push-only loop, a long computation) would not notice the client
        leaving; the pump reads for it from then on. A handler that keeps reading never pays
        for a pump.

        It also forgets the handler's sends in a row (see ``_send_frame``): the sweeper runs
        only when the event loop does, so the sends before this did not starve it. A push
        handler that waits elsewhere between sends (a broadcast, a timer) then never pays the
        checkpoint; one that spins without yielding cannot let the sweeper run, and still
        yields every ``SENDS_BETWEEN_CHECKPOINTS`` sends.
        """
        self._sends_since_read = 0
        if self._inbox is not None or self._reading or self._host is None:
            return
        if self._reads == self._reads_at_last_sweep:
            self._start_pump()
        self._reads_at_last_sweep = self._reads

    def _start_pump(self) -> None:
        tasks = self._connection_tasks("The pump needs a connection that is being served")
        inbox_send, self._inbox = anyio.create_memory_object_stream[Message](INBOX_SIZE)
        tasks.start_soon(self._pump, inbox_send)

    async def _pump(self, inbox: MemoryObjectSendStream[Message]) -> None:
        """Own ``receive()`` for a handler that does not read: feed its inbox, notice the
        client leaving, and cancel the handler ``HANDLER_GRACE_AFTER_CLOSE`` after that."""
        with inbox:
            # Not one ``receive()`` once the connection is over, the app's own close included: a
            # server (or a test double) that answers at once would make this loop spin.
            while self._close_info is None:
                try:
                    message = await self._receive()
                except Exception:
                    message = _receive_failed()
                if message.get("type") != "websocket.receive" or _too_big(
                    message, self._max_message_size
                ):
                    await self._reject(message)  # ends the connection
                    return
                await inbox.send(message)  # a checkpoint, whatever ``receive()`` did

    async def _next_from_pump(
        self, inbox: MemoryObjectReceiveStream[Message], iterating: bool
    ) -> Message:
        """The next message the pump read; once the connection is over, only those it already
        read (the pump may still wait in a ``receive()`` that will never give more)."""
        try:
            if self._close_info is None:
                message = await inbox.receive()
            else:
                message = inbox.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            if iterating:
                raise StopAsyncIteration from None
            raise self._connection_closed() from None
        self._reads += 1
        self._sends_since_read = 0
        return message

    async def _reject(self, message: Message) -> None:
        """A message that is not for the handler ends the connection: a disconnect, one too
        big, or a type a server must not send now (a second ``websocket.connect``, a typo): a
        protocol error, closed with 1011 so that the client is not left waiting, and logged
        once."""
        kind = message.get("type")
        if kind == "websocket.disconnect":
            self._client_left(message.get("code", 1005), message.get("reason") or "")
        elif kind == "websocket.receive":
            await self._close_in_turn(*_TOO_BIG)
        else:
            logger.warning(
                "WebSocket %s: the server sent an unexpected ASGI message %r; closing with 1011",
                self.request.path,
                kind,
            )
            await self._close_in_turn(*INTERNAL_ERROR)
        self._end_soon()

    # --- sending ---------------------------------------------------------------------------

    async def _take_send_turn(self) -> None:
        """Wait until no other send is in progress, then hold the turn (``_end_send_turn``
        frees it).

        ``anyio.Lock`` would do, but even uncontended it costs a task lookup and a cancellation
        check per acquire, and a deque per connection: a large share of the framework's cost
        per echo. Here the uncontended case is the ``_sending`` flag (``_send_frame`` tests it
        inline), and an ``anyio.Event`` exists only while sends wait. Two slots rather than a
        gate object: one object less per connection.
        """
        while self._sending:
            if self._send_waiters is None:
                self._send_waiters = anyio.Event()
            await self._send_waiters.wait()
        self._sending = True

    def _end_send_turn(self) -> None:
        """Free the turn; every waiting send re-checks and the first to run takes it."""
        self._sending = False
        waiters, self._send_waiters = self._send_waiters, None
        if waiters is not None:
            waiters.set()

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
            # The sweeper resets the count every round (``_swept``): a handler that let the
            # loop run since does not starve it, so fan-out (one send per message, each
            # subscriber in step) no longer pays 1,000 task switches on every 8th message.
            self._sends_since_read = 0
            await anyio.lowlevel.checkpoint()
        if self._sending:
            await self._take_send_turn()
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
                self._end_send_turn()
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

    # --- closing ---------------------------------------------------------------------------

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
        await self._take_send_turn()
        try:
            if self._state is not _OPEN:
                return
            self._state = _CLOSED
            self._closed_by_handler = True
            self._close_info = (code, reason or "")
            await self._send_or_closed(close_message(code, reason or ""))
        finally:
            self._end_send_turn()

    async def _close_in_turn(self, code: int, reason: str) -> None:
        """Close with ``code`` unless the connection is over already; in its send turn, so that
        the close comes after a send in progress."""
        await self._take_send_turn()
        try:
            if self._closing_for_framework(code, reason):
                try:
                    await self._send(close_message(code, reason))
                except OSError:
                    logger.debug("Could not send close %s", code, exc_info=True)
        finally:
            self._end_send_turn()

    async def _close_quietly(self, code: int, reason: str) -> None:
        """Send close ``code`` unless the connection is over already; a failed send is the
        client gone, nothing to report."""
        if not self._closing_for_framework(code, reason):
            return
        try:
            await self._send(close_message(code, reason))
        except Exception:
            logger.debug("Could not send WebSocket close %s", code, exc_info=True)

    async def _finish(self, failed: bool) -> None:
        """*Framework*, after the handler: close the connection if the handler left it open
        (1000, or 1011 after an error)."""
        code, reason = INTERNAL_ERROR if failed else (1000, "")
        await self._close_quietly(code, reason)

    async def _going_away(self) -> None:
        """*Framework*, server shutdown: close with 1001 unless the connection is over,
        shielded and bounded.

        The handler then sees ``ConnectionClosed(1001)`` from its sends and receives, not the
        ``RuntimeError`` of a connection it closed itself.
        """
        with anyio.move_on_after(SHUTDOWN_CLOSE_TIMEOUT, shield=True):
            await self._close_quietly(*_GOING_AWAY)

    def _going_away_soon(self) -> None:
        """*Framework*, graceful server shutdown: close with 1001 now (from a task of the
        connection), cancel the handler after the grace."""
        if self._host is not None:
            self._connection_tasks("").start_soon(self._leave)

    async def _leave(self) -> None:
        await self._going_away()
        # Every handler, even one that had closed the connection itself: the server is going.
        self._cancel_after_grace()

    def _end_soon(self) -> None:
        """The connection is over: the handler gets ``HANDLER_GRACE_AFTER_CLOSE`` to notice and
        finish (a handler blocked elsewhere, or one that ignores ``ConnectionClosed``, is
        cancelled). A handler that closed the connection itself is trusted to finish on its
        own."""
        if not self._closed_by_handler:
            self._cancel_after_grace()

    def _cancel_after_grace(self) -> None:
        """Cancel the handler ``HANDLER_GRACE_AFTER_CLOSE`` from now if it is still running.

        A deadline on the handler's scope rather than a task that sleeps: nothing to start.
        """
        scope = self._handler_scope
        if scope is not None:
            scope.deadline = min(scope.deadline, anyio.current_time() + HANDLER_GRACE_AFTER_CLOSE)

    # --- serving: the handler's scope and the connection's tasks ----------------------------

    def _begin_serving(
        self, host: anyio.abc.TaskGroup, swept: bool, make_scope: ScopeMaker
    ) -> None:
        """*Framework*, in the handler's task just before the handler runs: enter its cancel
        scope (made by ``make_scope``, see ``lifetimes.cancel_scopes``); the connection's tasks
        run in ``host``. Without a sweeper (``swept`` false) the pump starts at once: nobody
        would notice a handler that does not read."""
        self._host = host
        self._handler_scope = scope = make_scope()
        if not swept:
            self._start_pump()
        scope.__enter__()

    def _end_serving(self, error: BaseException | None) -> bool:
        """*Framework*, the handler is done (``error``: what it raised): leave its scope and
        refuse new tasks. Returns whether the scope swallowed ``error`` (a cancellation of
        ours: the grace after close, shutdown, a failed task)."""
        scope = self._handler_scope
        assert scope is not None
        self._host = None
        if error is None:
            return bool(scope.__exit__(None, None, None))
        return bool(scope.__exit__(type(error), error, error.__traceback__))

    async def _close_tasks(self, failure: BaseException | None) -> None:
        """*Framework*, after ``_end_serving``: cancel and await the connection's tasks; raise
        what they raised (with ``failure``, the handler's own exception, as a group)."""
        tasks = self._tasks
        if tasks is not None:
            await tasks.close()
        if self._inbox is not None:
            self._inbox.close()
        if tasks is None or not tasks.errors:
            return
        errors: list[BaseException] = [*tasks.errors]
        if failure is not None:
            errors.insert(0, failure)
        if len(errors) == 1:
            raise errors[0]
        raise BaseExceptionGroup("WebSocket connection tasks failed", errors)

    def _connection_tasks(self, refusal: str) -> ConnectionTasks:
        """The connection's tasks, made on first use: most connections never start one."""
        if self._tasks is None:
            if self._host is None or self._handler_scope is None:
                raise RuntimeError(refusal)
            self._tasks = ConnectionTasks(self._host, self._handler_scope.cancel)
        return self._tasks

    def start_soon(self, function: Callable[..., Any], *args: Any) -> None:
        """Run ``function(*args)`` in a task that lives exactly as long as the connection.

        It is cancelled when the handler ends (or the client leaves and the handler is
        cancelled); if it raises, the handler is cancelled and the connection closes with 1011.
        ``RuntimeError`` when the connection is not being served.
        """
        self._connection_tasks("start_soon() needs a connection that is being served").start_soon(
            function, *args
        )
