"""MicroPie 0.32 compatibility: WebSocket routing, binding, sessions and the documented API.

Ported from 0.32's ``TestWebSocket`` and the WebSocket half of ``TestFastPaths``, plus the
documented behaviour 0.32 gets wrong (docs/migration.md, "Every difference") and hypercorn's
message shapes.

The scripted client never sends ``websocket.disconnect`` before it has its answer: 0.32's tests
queued the disconnect up front, which only worked because 0.32 never reads ahead. A client that
has left cannot receive the echo, so the port lets it wait (``after_sent``) or leave only after
the app closed.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest

from micropie import App, ConnectionClosed, InMemorySessionBackend, WebSocket, WebSocketMiddleware
from tests.support.asgi import (
    ATTACKER_SESSION_ID,
    CONNECT,
    VALID_SESSION_ID,
    Connection,
    CountingSessionBackend,
    Message,
    after_sent,
    attach,
    cookie_header,
    cookie_session_id,
    differs_from_032,
    run_app,
    ws_bytes,
    ws_scope,
    ws_text,
)

pytestmark = pytest.mark.anyio

COOKIE_TAIL = b"; Path=/; SameSite=Lax; HttpOnly; Secure;"


@pytest.fixture
def app() -> App:
    return App(session_backend=InMemorySessionBackend())


def close(code: int, reason: str) -> Message:
    return {"type": "websocket.close", "code": code, "reason": reason}


def send_text(text: str) -> Message:
    return {"type": "websocket.send", "text": text}


def assert_accept_with_new_cookie(conn: Connection) -> str:
    """The accept message is exact: no subprotocol, a fresh session cookie; returns the id."""
    accept = conn.accept
    cookie = conn.set_cookie(accept)
    session_id = cookie_session_id(cookie)
    assert uuid.UUID(session_id).version == 4
    assert accept == {
        "type": "websocket.accept",
        "subprotocol": None,
        "headers": [(b"Set-Cookie", f"session_id={session_id}".encode() + COOKIE_TAIL)],
    }
    return session_id


async def test_websocket_handler(app: App) -> None:
    @attach(app)
    async def ws_echo(self: App, ws: WebSocket) -> None:
        await ws.accept()
        msg = await ws.receive_text()
        await ws.send_text(f"Echo: {msg}")
        await ws.close(1000, "Done")

    conn = await run_app(
        app, ws_scope("/echo"), [CONNECT, {"type": "websocket.receive", "text": "Hello"}]
    )
    assert_accept_with_new_cookie(conn)
    assert conn.sent[1:] == [send_text("Echo: Hello"), close(1000, "Done")]


async def test_websocket_missing_handler(app: App) -> None:
    conn = await run_app(app, ws_scope("/nonexistent"), [CONNECT])
    assert conn.sent == [close(1008, "No matching WebSocket route")]


async def test_websocket_non_callable_attribute_is_not_routable(app: App) -> None:
    app.ws_status = {"connected": False}  # type: ignore[attr-defined]
    conn = await run_app(app, ws_scope("/status"), [CONNECT])
    assert conn.sent == [close(1008, "No matching WebSocket route")]


async def test_websocket_private_name_is_refused(app: App) -> None:
    @attach(app)
    async def _secret(self: App, ws: WebSocket) -> None:
        raise AssertionError("private handler reached")

    conn = await run_app(app, ws_scope("/_secret"), [CONNECT])
    assert conn.sent == [close(1008, "Private handler not allowed")]


async def test_session_values_do_not_bind_websocket_parameters(app: App) -> None:
    @attach(app)
    async def ws_transfer(self: App, ws: WebSocket, user_id: str) -> None:
        await ws.accept()

    scope = ws_scope("/transfer")
    scope["session"] = {"user_id": "trusted-user"}
    conn = await run_app(app, scope, [CONNECT])
    assert conn.sent == [close(1008, "Missing required parameter 'user_id'")]


async def test_websocket_handler_without_parameters_is_refused(app: App) -> None:
    @attach(app)
    async def ws_bare(self: App) -> None:
        raise AssertionError("unreachable")

    conn = await run_app(app, ws_scope("/bare"), [CONNECT])
    assert conn.sent == [close(1011, "WebSocket handler must accept a connection argument")]


async def test_malformed_websocket_query_is_tolerated(app: App) -> None:
    @attach(app)
    async def ws_echo(self: App, ws: WebSocket, name: str) -> None:
        await ws.accept()
        await ws.send_text(name)
        await ws.close()

    conn = await run_app(app, ws_scope("/echo", query_string=b"name=%ZZ"), [CONNECT])
    assert conn.sent[1:] == [send_text("%ZZ"), close(1000, "")]


async def test_websocket_argument_binding_uses_path_and_query(app: App) -> None:
    @attach(app)
    async def ws_chat(self: App, ws: WebSocket, room: str, user: str = "guest") -> None:
        await ws.accept()
        await ws.send_text(f"{room}:{user}")
        await ws.close()

    conn = await run_app(app, ws_scope("/chat/lobby", query_string=b"user=alice"), [CONNECT])
    assert send_text("lobby:alice") in conn.sent
    conn = await run_app(app, ws_scope("/chat/hall"), [CONNECT])
    assert send_text("hall:guest") in conn.sent


async def test_websocket_keyword_only_and_var_keyword_binding(app: App) -> None:
    @attach(app)
    async def ws_options(
        self: App, connection: WebSocket, *, room: str = "lobby", **kwargs: Any
    ) -> None:
        await connection.accept()
        await connection.send_text(f"{room}:{kwargs['debug']}")
        await connection.close()

    conn = await run_app(app, ws_scope("/options", query_string=b"room=staff&debug=1"), [CONNECT])
    assert send_text("staff:1") in conn.sent


async def test_websocket_cookie_respects_secure_configuration() -> None:
    app = App(session_cookie_secure=False)

    @attach(app)
    async def ws_cookie(self: App, ws: WebSocket) -> None:
        await ws.accept(session_id=VALID_SESSION_ID)
        await ws.close()

    conn = await run_app(app, ws_scope("/cookie"), [CONNECT])
    cookie = conn.set_cookie(conn.accept)
    assert b"HttpOnly" in cookie
    assert b"Secure" not in cookie
    assert cookie == f"session_id={VALID_SESSION_ID}; Path=/; SameSite=Lax; HttpOnly;".encode()


async def test_websocket_accept_uses_custom_session_id_validator() -> None:
    app = App(
        session_id_factory=lambda: "signed.fresh",
        session_id_validator=lambda value: value if value.startswith("signed.") else None,
    )

    @attach(app)
    async def ws_cookie(self: App, ws: WebSocket) -> None:
        await ws.accept(session_id="signed.explicit")
        await ws.close()

    conn = await run_app(app, ws_scope("/cookie"), [CONNECT])
    assert b"session_id=signed.explicit" in conn.set_cookie(conn.accept)


async def test_websocket_session_uses_app_timeout() -> None:
    backend = CountingSessionBackend()
    app = App(session_backend=backend, session_timeout=321)

    @attach(app)
    async def ws_session(self: App, ws: WebSocket) -> None:
        self.request.session["user"] = "alice"
        await ws.accept()
        await ws.close()

    conn = await run_app(app, ws_scope("/session"), [CONNECT])
    assert backend.save_calls[-1][2] == 321
    cookie_id = assert_accept_with_new_cookie(conn)
    assert cookie_id == backend.save_calls[-1][0]
    assert backend.sessions[cookie_id] == {"user": "alice"}


async def test_websocket_rotates_unknown_client_session_id() -> None:
    backend = CountingSessionBackend()
    app = App(session_backend=backend)

    @attach(app)
    async def ws_login(self: App, ws: WebSocket) -> None:
        await ws.accept()
        self.request.session["user_id"] = 42
        await ws.close()

    conn = await run_app(
        app, ws_scope("/login", headers=[cookie_header(ATTACKER_SESSION_ID)]), [CONNECT]
    )
    new_session_id = assert_accept_with_new_cookie(conn)
    assert new_session_id != ATTACKER_SESSION_ID
    assert ATTACKER_SESSION_ID not in backend.sessions
    assert backend.sessions[new_session_id] == {"user_id": 42}


async def test_websocket_handler_exception_is_logged(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="micropie")

    @attach(app)
    async def ws_broken(self: App, ws: WebSocket) -> None:
        raise RuntimeError("websocket boom")

    conn = await run_app(app, ws_scope("/broken"), [CONNECT])
    assert any(r.exc_info for r in caplog.records if r.name.startswith("micropie"))
    assert conn.sent == [close(1011, "Internal server error")]


async def test_websocket_exception_after_accept_closes_1011(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="micropie")

    @attach(app)
    async def ws_broken(self: App, ws: WebSocket) -> None:
        await ws.accept()
        raise RuntimeError("secret detail")

    conn = await run_app(app, ws_scope("/broken"), [CONNECT])
    assert conn.sent[1:] == [close(1011, "Internal server error")]


# -- the examples and API of docs/guides/websockets.md ---------------------------------------


async def test_documented_echo_server_until_client_closes() -> None:
    class MyApp(App):
        async def ws_echo(self, ws: WebSocket) -> None:
            await ws.accept()
            while True:
                try:
                    message = await ws.receive_text()
                except ConnectionClosed:
                    break
                await ws.send_text(f"Echo: {message}")

    conn = await run_app(
        MyApp(),
        ws_scope("/echo"),
        [
            CONNECT,
            {"type": "websocket.receive", "text": "one"},
            {"type": "websocket.receive", "text": "two"},
            after_sent("websocket.send", 2),
            {"type": "websocket.disconnect", "code": 1000},
        ],
    )
    assert conn.sent[1:3] == [send_text("Echo: one"), send_text("Echo: two")]
    # After the client left, nothing but (at most) a close may follow.
    assert all(m["type"] == "websocket.close" for m in conn.sent[3:])


async def test_documented_greet_path_and_query() -> None:
    class MyApp(App):
        async def ws_greet(self, ws: WebSocket, name: str = "Guest") -> None:
            await ws.accept()
            await ws.send_text(f"Hello {name}!")
            await ws.close()

    app = MyApp()
    by_path = await run_app(app, ws_scope("/greet/Alice"), [CONNECT])
    by_query = await run_app(app, ws_scope("/greet", query_string=b"name=Bob"), [CONNECT])
    default = await run_app(app, ws_scope("/greet"), [CONNECT])
    assert send_text("Hello Alice!") in by_path.sent
    assert send_text("Hello Bob!") in by_query.sent
    assert send_text("Hello Guest!") in default.sent


async def test_binary_frames_and_subprotocol(app: App) -> None:
    @attach(app)
    async def ws_mirror(self: App, ws: WebSocket) -> None:
        await ws.accept(subprotocol="chat")
        data = await ws.receive_bytes()
        await ws.send_bytes(data)
        await ws.close()

    conn = await run_app(app, ws_scope("/mirror"), [CONNECT, ws_bytes(b"\x00\xff")])
    assert conn.accept["subprotocol"] == "chat"
    assert conn.sent[1:] == [{"type": "websocket.send", "bytes": b"\x00\xff"}, close(1000, "")]


async def test_accept_and_send_misuse_raise(app: App) -> None:
    errors: list[str] = []

    @attach(app)
    async def ws_misuse(self: App, ws: WebSocket) -> None:
        try:
            await ws.send_text("too early")
        except RuntimeError as exc:
            errors.append(str(exc))
        await ws.accept()
        try:
            await ws.accept()
        except RuntimeError as exc:
            errors.append(str(exc))
        await ws.close()

    conn = await run_app(app, ws_scope("/misuse"), [CONNECT])
    assert errors == ["WebSocket connection not accepted", "WebSocket connection already accepted"]
    assert [m["type"] for m in conn.sent] == ["websocket.accept", "websocket.close"]


async def test_websocket_middleware_rejects_before_accept(app: App) -> None:
    calls: list[str] = []

    class Reject(WebSocketMiddleware):
        def __init__(self, result: dict[str, Any]) -> None:
            self.result = result

        async def before_websocket(self, request: Any) -> dict[str, Any]:
            return self.result

        async def after_websocket(self, request: Any) -> None:
            calls.append("after")

    @attach(app)
    async def ws_chat(self: App, ws: WebSocket) -> None:
        calls.append("handler")

    app.ws_middlewares.append(Reject({"reason": "go away"}))
    conn = await run_app(app, ws_scope("/chat"), [CONNECT])
    assert conn.sent == [close(1008, "go away")]

    app.ws_middlewares[:] = [Reject({"code": 4001})]
    conn = await run_app(app, ws_scope("/chat"), [CONNECT])
    assert conn.sent == [close(4001, "Middleware rejected")]
    assert calls == []


async def test_after_websocket_runs_after_handler(app: App) -> None:
    order: list[str] = []

    class Track(WebSocketMiddleware):
        async def before_websocket(self, request: Any) -> None:
            order.append("before")

        async def after_websocket(self, request: Any) -> None:
            order.append("after")

    app.ws_middlewares.append(Track())

    @attach(app)
    async def ws_chat(self: App, ws: WebSocket) -> None:
        await ws.accept()
        order.append("handler")
        await ws.close()

    await run_app(app, ws_scope("/chat"), [CONNECT])
    assert order == ["before", "handler", "after"]


# -- where we deliberately differ from 0.32 ------------------------------------------------


# 0.32 looks up ws_ws_index.
@differs_from_032("Routing and binding: ws_index")
async def test_ws_index_answers_at_root(app: App) -> None:
    @attach(app)
    async def ws_index(self: App, ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text("root")
        await ws.close()

    conn = await run_app(app, ws_scope("/"), [CONNECT])
    assert conn.sent[1:] == [send_text("root"), close(1000, "")]


# 0.32 sends no close.
@differs_from_032("WebSockets: A handler that returns without closing")
async def test_handler_returning_without_close_closes_1000(app: App) -> None:
    @attach(app)
    async def ws_quiet(self: App, ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text("bye")

    conn = await run_app(app, ws_scope("/quiet"), [CONNECT])
    assert conn.sent[1:] == [send_text("bye"), close(1000, "")]


# 0.32's receive_text() evaluates message.get("bytes", b"").decode() eagerly, so
# {"text": "hi", "bytes": None} crashes it.
@differs_from_032("WebSockets: receive_text() under hypercorn")
async def test_hypercorn_shaped_text_frames(app: App) -> None:
    """hypercorn sends both keys, one of them None: ``{"text": "hi", "bytes": None}``."""

    @attach(app)
    async def ws_mirror(self: App, ws: WebSocket) -> None:
        await ws.accept()
        text = await ws.receive_text()
        data = await ws.receive_bytes()
        await ws.send_text(text)
        await ws.send_bytes(data)
        await ws.close()

    conn = await run_app(app, ws_scope("/mirror"), [CONNECT, ws_text("hi"), ws_bytes(b"\x01")])
    assert conn.sent[1:] == [
        send_text("hi"),
        {"type": "websocket.send", "bytes": b"\x01"},
        close(1000, ""),
    ]
