"""The test client's WebSocket sessions, against micropie apps and raw ASGI apps, on both backends.

``client.websocket_connect(path)`` runs the app call in the client's task group; these tests
check what a test author sees through it: messages both ways, the handshake (subprotocols,
refusals, cookies), both sides closing, the app's exceptions, and that an app is stopped (or
reported) once its client has left.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from micropie import App, ConnectionClosed, WebSocket, WebSocketMiddleware
from micropie.core.types import Message, Receive, Scope, Send
from micropie.http.request import Request
from micropie.testing import (
    WEBSOCKET_BUFFER_MESSAGES,
    AppOutlivedClientError,
    ASGIProtocolError,
    TestClient,
    WebSocketClosed,
    WebSocketRejected,
)
from tests.support.drive import Boom, bounded

pytestmark = pytest.mark.anyio


# --- micropie apps --------------------------------------------------------------------------


class Refuser(WebSocketMiddleware):
    async def before_websocket(self, request: Request) -> dict[str, Any] | None:
        if request.path.startswith("/private"):
            return {"code": 4003, "reason": "members only"}
        return None

    async def after_websocket(self, request: Request) -> None:
        return None


class ChatApp(App):
    """Small handlers, one per behaviour under test."""

    def __init__(self) -> None:
        super().__init__(session_cookie_secure=False)
        self.ws_middlewares.append(Refuser())
        self.push_cancelled = anyio.Event()

    async def ws_echo(self, ws: WebSocket) -> None:
        await ws.accept()
        async for message in ws:
            if isinstance(message, str):
                await ws.send_text(f"Echo: {message}")
            else:
                await ws.send_bytes(message[::-1])

    async def ws_json(self, ws: WebSocket) -> None:
        await ws.accept()
        while True:
            data = await ws.receive_json()
            await ws.send_json({"got": data, "keys": sorted(data)})

    async def ws_proto(self, ws: WebSocket) -> None:
        await ws.accept(subprotocol="chat.v2" if "chat.v2" in ws.subprotocols else None)
        await ws.send_text(",".join(ws.subprotocols))

    async def ws_bye(self, ws: WebSocket, code: str = "4000") -> None:
        await ws.accept()
        await ws.send_text("last words")
        await ws.close(int(code), "bye now")

    async def ws_visits(self, ws: WebSocket) -> None:
        session = self.request.session
        session["visits"] = session.get("visits", 0) + 1
        await ws.accept()
        await ws.send_text(str(session["visits"]))

    async def ws_push(self, ws: WebSocket) -> None:
        """Pushes and never reads: only the client leaving can stop it."""
        await ws.accept()
        try:
            while True:
                await ws.send_text("tick")
                await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            self.push_cancelled.set()
            raise

    async def ws_fails(self, ws: WebSocket) -> None:
        await ws.accept()
        await ws.receive_text()
        raise Boom("handler bug")


@bounded
async def test_text_echo() -> None:
    async with TestClient(ChatApp()) as client, client.websocket_connect("/echo") as ws:
        await ws.send_text("hello")
        assert await ws.receive_text() == "Echo: hello"
        await ws.send_text("again")
        assert await ws.receive() == "Echo: again"


@bounded
async def test_binary_messages_stay_binary() -> None:
    async with TestClient(ChatApp()) as client, client.websocket_connect("/echo") as ws:
        await ws.send_bytes(b"\x00\x01\xff")
        assert await ws.receive_bytes() == b"\xff\x01\x00"
        await ws.send_bytes(b"ab")
        assert await ws.receive() == b"ba"
        await ws.send_bytes(b"cd")
        with pytest.raises(TypeError, match="expected a text message"):
            await ws.receive_text()
        await ws.send_text("x")
        with pytest.raises(TypeError, match="expected a binary message"):
            await ws.receive_bytes()


@bounded
async def test_json_round_trip() -> None:
    async with TestClient(ChatApp()) as client, client.websocket_connect("/json") as ws:
        await ws.send_json({"b": [1, 2], "a": "é"})
        assert await ws.receive_json() == {"got": {"b": [1, 2], "a": "é"}, "keys": ["a", "b"]}
        await ws.send_json({"z": None}, mode="binary")
        assert await ws.receive_json() == {"got": {"z": None}, "keys": ["z"]}


@bounded
async def test_subprotocol_is_offered_and_accepted() -> None:
    async with TestClient(ChatApp()) as client:
        async with client.websocket_connect("/proto", subprotocols=["chat.v1", "chat.v2"]) as ws:
            assert ws.accepted_subprotocol == "chat.v2"
            assert await ws.receive_text() == "chat.v1,chat.v2"
        async with client.websocket_connect("/proto") as ws:
            assert ws.accepted_subprotocol is None
            assert await ws.receive_text() == ""


@bounded
async def test_refusal_carries_the_apps_code_and_reason() -> None:
    async with TestClient(ChatApp()) as client:
        with pytest.raises(WebSocketRejected) as refused:
            async with client.websocket_connect("/private/room"):
                raise AssertionError("the block must not run")
        assert (refused.value.code, refused.value.reason) == (4003, "members only")
        with pytest.raises(WebSocketRejected) as unknown:
            async with client.websocket_connect("/nowhere"):
                raise AssertionError("the block must not run")
        assert (unknown.value.code, unknown.value.reason) == (1008, "No matching WebSocket route")


@bounded
async def test_server_close_code_reaches_the_next_receive() -> None:
    async with TestClient(ChatApp()) as client, client.websocket_connect("/bye?code=4001") as ws:
        assert await ws.receive_text() == "last words"
        with pytest.raises(WebSocketClosed) as closed:
            await ws.receive_text()
        assert (closed.value.code, closed.value.reason) == (4001, "bye now")
        with pytest.raises(WebSocketClosed):  # and it stays closed
            await ws.receive()
        with pytest.raises(WebSocketClosed):
            await ws.send_text("too late")


@bounded
async def test_session_cookie_is_set_on_accept_and_sent_back() -> None:
    async with TestClient(ChatApp()) as client:
        async with client.websocket_connect("/visits") as ws:
            assert await ws.receive_text() == "1"
            set_cookie = ws.accept_headers["set-cookie"]
        assert set_cookie.startswith("session_id=")
        session_id = set_cookie.split(";")[0].removeprefix("session_id=")
        assert client.cookies["session_id"] == session_id
        async with client.websocket_connect("/visits") as ws:
            assert await ws.receive_text() == "2"
            assert "set-cookie" not in ws.accept_headers


@bounded
async def test_secure_session_cookie_round_trips_over_wss() -> None:
    class SecureApp(App):  # session_cookie_secure=True, micropie's default
        async def ws_visits(self, ws: WebSocket) -> None:
            session = self.request.session
            session["visits"] = session.get("visits", 0) + 1
            await ws.accept()
            await ws.send_text(f"{ws.scope['scheme']} {session['visits']}")

    async with TestClient(SecureApp()) as client:  # https://testserver, the default
        for expected in ("wss 1", "wss 2"):
            async with client.websocket_connect("/visits") as ws:
                assert await ws.receive_text() == expected


@bounded
async def test_leaving_cancels_a_push_only_handler() -> None:
    app = ChatApp()
    async with TestClient(app) as client:
        async with client.websocket_connect("/push") as ws:
            assert await ws.receive_text() == "tick"
        # The block returns only once the app call has: the handler has been cancelled.
        assert app.push_cancelled.is_set()


@bounded
async def test_handler_exception_is_a_1011_close() -> None:
    async with TestClient(ChatApp()) as client, client.websocket_connect("/fails") as ws:
        await ws.send_text("go")
        with pytest.raises(WebSocketClosed) as closed:
            await ws.receive()
        assert (closed.value.code, closed.value.reason) == (1011, "Internal server error")


# --- raw ASGI apps --------------------------------------------------------------------------


class RawEcho:
    """Accepts, echoes text and bytes, and records what it saw."""

    def __init__(self, accept_headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.scope: Scope = {}
        self.received: list[Message] = []
        self.accept_headers = accept_headers or []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return  # no lifespan
        self.scope = scope
        assert await receive() == {"type": "websocket.connect"}
        await send({"type": "websocket.accept", "headers": self.accept_headers})
        while True:
            message = await receive()
            self.received.append(message)
            if message["type"] == "websocket.disconnect":
                return
            await send({**message, "type": "websocket.send"})


@bounded
async def test_raw_app_sees_a_websocket_scope_with_cookies_and_headers() -> None:
    app = RawEcho()
    async with TestClient(app, cookies={"flavour": "oat"}) as client:
        headers = {"x-token": "t1"}
        async with client.websocket_connect("/a%20b/c?x=1", ["p1"], headers) as ws:
            await ws.send_text("ping")
            assert await ws.receive_text() == "ping"
    scope = app.scope
    assert scope["type"] == "websocket"
    assert (scope["scheme"], scope["path"], scope["query_string"]) == ("wss", "/a b/c", b"x=1")
    assert scope["raw_path"] == b"/a%20b/c"
    assert scope["subprotocols"] == ["p1"]
    headers_seen = dict(scope["headers"])
    assert headers_seen[b"cookie"] == b"flavour=oat"
    assert headers_seen[b"x-token"] == b"t1"
    assert headers_seen[b"upgrade"] == b"websocket"
    assert headers_seen[b"connection"] == b"upgrade"
    assert headers_seen[b"sec-websocket-protocol"] == b"p1"
    assert "websocket.http.response" not in scope.get("extensions", {})


@bounded
async def test_client_close_reaches_the_app_after_the_messages_before_it() -> None:
    app = RawEcho()
    async with TestClient(app) as client:
        async with client.websocket_connect("/") as ws:
            await ws.send_text("one")
            await ws.send_bytes(b"two")
            await ws.close(4002, "done here")
            await ws.close()  # again: nothing more happens
            with pytest.raises(RuntimeError, match="closed"):
                await ws.send_text("after close")
        # close() returned after the app call: everything is recorded already.
        assert app.received == [
            {"type": "websocket.receive", "text": "one"},
            {"type": "websocket.receive", "bytes": b"two"},
            {"type": "websocket.disconnect", "code": 4002, "reason": "done here"},
        ]


@bounded
async def test_leaving_the_block_is_a_1000_close() -> None:
    app = RawEcho()
    async with TestClient(app) as client:
        async with client.websocket_connect("/"):
            pass
        assert app.received == [{"type": "websocket.disconnect", "code": 1000, "reason": ""}]


@bounded
async def test_cookies_set_on_accept_land_in_the_jar() -> None:
    app = RawEcho(accept_headers=[(b"set-cookie", b"token=abc; Path=/")])
    async with TestClient(app) as client:
        async with client.websocket_connect("/") as ws:
            assert ws.accept_headers["set-cookie"] == "token=abc; Path=/"
        assert client.cookies["token"] == "abc"
        async with client.websocket_connect("/"):
            pass
        assert dict(app.scope["headers"])[b"cookie"] == b"token=abc"


@bounded
async def test_apps_close_is_answered_with_a_disconnect() -> None:
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4005, "reason": "enough"})
        seen.append(await receive())

    async with TestClient(app, lifespan=False) as client, client.websocket_connect("/") as ws:
        with pytest.raises(WebSocketClosed) as closed:
            await ws.receive()
        assert closed.value.code == 4005
    assert seen == [{"type": "websocket.disconnect", "code": 4005, "reason": "enough"}]


@bounded
async def test_close_before_accept_defaults_to_1000() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.close"})

    async with TestClient(app, lifespan=False) as client:
        with pytest.raises(WebSocketRejected) as refused:
            async with client.websocket_connect("/"):
                raise AssertionError("the block must not run")
    assert (refused.value.code, refused.value.reason) == (1000, "")
    assert str(refused.value) == "WebSocket connection rejected with code 1000"


@bounded
async def test_app_returning_without_closing_is_a_1011_close() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "only this"})

    async with TestClient(app, lifespan=False) as client, client.websocket_connect("/") as ws:
        assert await ws.receive_text() == "only this"
        with pytest.raises(WebSocketClosed) as closed:
            await ws.receive_text()
        assert closed.value.code == 1011


@bounded
@pytest.mark.parametrize("before_accept", [True, False])
async def test_app_exception_surfaces_as_itself(before_accept: bool) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        if not before_accept:
            await send({"type": "websocket.accept"})
            await receive()
        raise Boom("raw app bug")

    async def talk(client: TestClient) -> None:
        async with client.websocket_connect("/") as ws:
            await ws.send_text("trigger")
            await ws.receive()

    async with TestClient(app, lifespan=False) as client:
        with pytest.raises(Boom, match="raw app bug"):
            await talk(client)


@bounded
async def test_app_exception_is_logged_when_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        raise Boom("quiet bug")

    client = TestClient(app, lifespan=False, raise_app_exceptions=False)
    async with client, client.websocket_connect("/") as ws:
        with pytest.raises(WebSocketClosed) as closed:
            await ws.receive()
        assert closed.value.code == 1011
    assert any(
        record.exc_info and "quiet bug" in str(record.exc_info[1]) for record in caplog.records
    )


@bounded
async def test_app_that_ignores_the_disconnect_outlived_its_client() -> None:
    cancelled = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        try:
            await anyio.sleep_forever()  # never reads: never sees the disconnect
        finally:
            cancelled.set()

    async with TestClient(app, lifespan=False, disconnect_timeout=0.1) as client:
        with pytest.raises(AppOutlivedClientError, match="was cancelled"):
            async with client.websocket_connect("/ignore"):
                pass
        assert cancelled.is_set()


@bounded
@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([{"type": "websocket.send", "text": "hi"}], "'websocket.send' sent before"),
        ([{"type": "websocket.accept", "subprotocol": "nope"}], "'nope' was not offered"),
        ([{"type": "websocket.accept"}, {"type": "websocket.accept"}], "unexpected message"),
        ([{"type": "websocket.accept"}, {"type": "websocket.send"}], "exactly one of"),
        ([{"type": "websocket.accept"}, {"type": "websocket.send", "text": b"x"}], "must be str"),
    ],
)
async def test_protocol_violations_are_clear_errors(messages: list[Message], error: str) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        for message in messages:
            await send(message)
        await receive()

    async with TestClient(app, lifespan=False) as client:
        with pytest.raises(ASGIProtocolError, match=error):
            async with client.websocket_connect("/") as ws:
                await ws.receive()


@bounded
async def test_app_returning_before_the_handshake_is_a_protocol_error() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()

    async with TestClient(app, lifespan=False) as client:
        with pytest.raises(ASGIProtocolError, match="without accepting or closing"):
            async with client.websocket_connect("/"):
                raise AssertionError("the block must not run")


@bounded
async def test_an_app_pushing_faster_than_the_test_reads_waits_in_send() -> None:
    sent = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal sent
        await receive()
        await send({"type": "websocket.accept"})
        for number in range(WEBSOCKET_BUFFER_MESSAGES * 3):
            await send({"type": "websocket.send", "text": str(number)})
            sent += 1
        await send({"type": "websocket.close", "code": 1000})

    async with TestClient(app, lifespan=False) as client, client.websocket_connect("/") as ws:
        await anyio.wait_all_tasks_blocked()
        assert sent == WEBSOCKET_BUFFER_MESSAGES  # the next send is waiting for the reader
        received = [await ws.receive_text() for _ in range(WEBSOCKET_BUFFER_MESSAGES * 3)]
        with pytest.raises(WebSocketClosed):
            await ws.receive_text()
        assert received == [str(number) for number in range(WEBSOCKET_BUFFER_MESSAGES * 3)]


@bounded
async def test_websocket_connect_needs_async_with() -> None:
    client = TestClient(RawEcho())
    try:
        with pytest.raises(RuntimeError, match="needs `async with TestClient"):
            async with client.websocket_connect("/"):
                raise AssertionError("the block must not run")
    finally:
        await client.aclose()


@bounded
async def test_the_client_handler_sees_connection_closed_on_client_close() -> None:
    """A micropie handler blocked in receive sees ``ConnectionClosed`` with the client's code."""
    seen: list[tuple[int, str]] = []

    class App_(App):
        async def ws_index(self, ws: WebSocket) -> None:
            await ws.accept()
            try:
                await ws.receive_text()
            except ConnectionClosed as closed:
                seen.append((closed.code, closed.reason))

    async with TestClient(App_()) as client:
        async with client.websocket_connect("/") as ws:
            await ws.close(4100, "leaving")
        assert seen == [(4100, "leaving")]
