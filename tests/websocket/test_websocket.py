"""WebSockets in-process: MicroPie's documented API, lifetimes, limits and what goes beyond it.

Each test plays the client over anyio memory streams (``Peer``): it sends ASGI messages to the
app's ``receive()`` and reads what the app passes to ``send()``. The app call runs in a task of
the test's own task group, so a test fails (instead of hanging) when the app never ends.

Every test runs twice: with the app's lifespan running (as under hypercorn: the connection's
tasks live in the app's task group and a pump starts only for a handler that stops reading)
and without it (the connection hosts its own tasks and pumps from the start).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from examples.websockets.app import MyApp
from micropie import (
    App,
    ConnectionClosed,
    InMemorySessionBackend,
    WebSocket,
    WebSocketMiddleware,
)
from micropie.websocket import (
    DEFAULT_MAX_MESSAGE_SIZE,
    HANDLER_GRACE_AFTER_CLOSE,
    INBOX_SIZE,
    SENDS_BETWEEN_CHECKPOINTS,
)
from micropie.websocket._messages import server_send_cannot_fail
from tests.support.drive import lifespan

pytestmark = pytest.mark.anyio

Message = dict[str, Any]
SESSION_ID = "00000000-0000-4000-8000-00000000000a"
DEADLINE = 5.0


_with_lifespan = True
_lifespan_running: list[App] = []  # apps that ``connect`` is serving right now


@pytest.fixture(autouse=True, params=["lifespan", "no lifespan"])
def lifespan_mode(request: pytest.FixtureRequest) -> str:
    """Whether ``connect`` runs the app's lifespan around the connection."""
    global _with_lifespan
    _with_lifespan = request.param == "lifespan"
    return str(request.param)


def close(code: int = 1000, reason: str = "") -> Message:
    return {"type": "websocket.close", "code": code, "reason": reason}


def text(data: str) -> Message:
    return {"type": "websocket.send", "text": data}


ACCEPT: Message = {"type": "websocket.accept", "subprotocol": None, "headers": []}


def server_scope(path: str, asgi: dict[str, str] | None = None) -> dict[str, Any]:
    """A bare WebSocket scope; it names an ASGI version (``scope["asgi"]``) only if given."""
    scope: dict[str, Any] = {"type": "websocket", "path": path, "headers": [], "query_string": b""}
    if asgi is not None:
        scope["asgi"] = asgi
    return scope


class Peer:
    """The client side of one in-process WebSocket connection."""

    def __init__(
        self,
        to_app: MemoryObjectSendStream[Message],
        from_app: MemoryObjectReceiveStream[Message],
    ) -> None:
        self.to_app = to_app
        self.from_app = from_app
        self.app_done = anyio.Event()
        self.app_error: BaseException | None = None

    async def send(self, message: Message) -> None:
        await self.to_app.send(message)

    async def send_text(self, data: str) -> None:
        await self.send({"type": "websocket.receive", "text": data, "bytes": None})

    async def send_bytes(self, data: bytes) -> None:
        await self.send({"type": "websocket.receive", "bytes": data, "text": None})

    async def disconnect(self, code: int = 1006) -> None:
        await self.send({"type": "websocket.disconnect", "code": code})

    async def receive(self) -> Message:
        """The next message the app sent (``EndOfStream`` once the app has returned)."""
        return await self.from_app.receive()

    async def receive_all(self) -> list[Message]:
        """Everything the app sends until it returns."""
        messages = []
        async for message in self.from_app:
            messages.append(message)
        return messages


@asynccontextmanager
async def connect(
    app: App,
    path: str = "/",
    *,
    query_string: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    subprotocols: list[str] | None = None,
) -> AsyncIterator[Peer]:
    """Start ``app`` on a WebSocket scope and yield the client side; the block ends only
    after the app call has returned."""
    scope: dict[str, Any] = {
        "type": "websocket",
        "path": path,
        "headers": headers or [],
        "query_string": query_string,
    }
    if subprotocols is not None:
        scope["subprotocols"] = subprotocols
    to_app, app_inbox = anyio.create_memory_object_stream[Message](math.inf)
    app_outbox, from_app = anyio.create_memory_object_stream[Message](math.inf)
    peer = Peer(to_app, from_app)

    async def run_app() -> None:
        try:
            with app_outbox:
                await app(scope, app_inbox.receive, app_outbox.send)
        except BaseException as exc:
            peer.app_error = exc
            raise
        finally:
            peer.app_done.set()

    shares_lifespan = app in _lifespan_running  # a second connection to the same app
    _lifespan_running.append(app)
    try:
        with anyio.fail_after(DEADLINE):
            async with (
                lifespan(app, running=_with_lifespan and not shares_lifespan),
                anyio.create_task_group() as task_group,
                to_app,
                from_app,
                app_inbox,
            ):
                task_group.start_soon(run_app)
                await to_app.send({"type": "websocket.connect"})
                yield peer
                await peer.app_done.wait()
    finally:
        _lifespan_running.remove(app)


# --- MicroPie's documented examples ---------------------------------------------------------------


DocumentedExamples = MyApp  # MicroPie's two documented examples (examples/websockets/app.py)


async def test_documented_echo_until_the_client_leaves() -> None:
    app = DocumentedExamples()
    async with connect(app, "/echo", headers=[(b"cookie", b"session_id=x")]) as peer:
        accept = await peer.receive()
        assert accept["type"] == "websocket.accept"
        await peer.send_text("one")
        assert await peer.receive() == text("Echo: one")
        await peer.send_bytes("två".encode())
        assert await peer.receive() == text("Echo: två")
        await peer.disconnect()
        assert await peer.receive_all() == []  # nothing is sent to a client that left


@pytest.mark.parametrize(
    ("path", "query", "greeting"),
    [
        ("/greet/Alice", b"", "Hello Alice!"),
        ("/greet", b"name=Bob", "Hello Bob!"),
        ("/greet", b"", "Hello Guest!"),
    ],
)
async def test_documented_greet_by_path_query_and_default(
    path: str, query: bytes, greeting: str
) -> None:
    async with connect(DocumentedExamples(), path, query_string=query) as peer:
        messages = await peer.receive_all()
    assert messages[1:] == [text(greeting), close()]


# --- routing and binding refusals ----------------------------------------------------------


class RoutedApp(App):
    async def ws_room(self, ws, room: str, user: str = "guest") -> None:  # type: ignore[no-untyped-def]
        await ws.accept()
        await ws.send_text(f"{room}:{user}")

    async def ws_count(self, ws, n: int) -> None:  # type: ignore[no-untyped-def]
        await ws.accept()
        await ws.send_text(repr(n))

    async def ws_bare(self) -> None:
        raise AssertionError("unreachable")

    async def _ws_secret(self, ws: WebSocket, room: str) -> None:
        await ws.accept()
        await ws.send_text(f"secret {room}")


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        ("/_ws_secret", b"", [close(1008, "Private handler not allowed")]),
        ("/nowhere", b"", [close(1008, "No matching WebSocket route")]),
        ("/ws_room/x", b"", [close(1008, "No matching WebSocket route")]),
        ("/room", b"", [close(1008, "Missing required parameter 'room'")]),
        ("/bare", b"", [close(1011, "WebSocket handler must accept a connection argument")]),
        ("/count/x", b"", [close(1008, "Invalid value for parameter 'n'")]),
        ("/count/7", b"", [ACCEPT, text("7"), close()]),
        ("/room/hall", b"user=ann&user=bob", [ACCEPT, text("hall:ann"), close()]),
    ],
)
async def test_routing_binding_and_refusals_send_exact_messages(
    path: str, query: bytes, expected: list[Message]
) -> None:
    headers = [(b"cookie", f"session_id={SESSION_ID}".encode())]
    app = RoutedApp()
    await app.session_backend.save(SESSION_ID, {"user": "known"}, 60)  # no cookie rotation
    async with connect(app, path, query_string=query, headers=headers) as peer:
        assert await peer.receive_all() == expected


async def test_middleware_routes_explicitly_with_its_own_path_params() -> None:
    class ExplicitRoutes(WebSocketMiddleware):
        async def before_websocket(self, request: Any) -> None:
            if request.path.startswith("/rooms/"):
                request._ws_route_handler = "_ws_secret"
                request.path_params = [request.path.rsplit("/", 1)[1]]

        async def after_websocket(self, request: Any) -> None:
            pass

    app = RoutedApp(session_cookie_secure=False)
    app.ws_middlewares.append(ExplicitRoutes())
    async with connect(app, "/rooms/lobby/42") as peer:
        messages = await peer.receive_all()
    assert messages[1:] == [text("secret 42"), close()]


# --- middleware ----------------------------------------------------------------------------


class Recorder(WebSocketMiddleware):
    def __init__(self, verdict: dict[str, Any] | None = None) -> None:
        self.verdict = verdict
        self.calls: list[str] = []
        self.after = anyio.Event()

    async def before_websocket(self, request: Any) -> dict[str, Any] | None:
        self.calls.append("before")
        return self.verdict

    async def after_websocket(self, request: Any) -> None:
        self.calls.append("after")
        self.after.set()


@pytest.mark.parametrize(
    ("verdict", "expected"),
    [
        ({"reject": True}, close(1008, "Middleware rejected")),
        ({"code": 4003, "reason": "Login first"}, close(4003, "Login first")),
    ],
)
async def test_before_websocket_rejects_before_accept(
    verdict: dict[str, Any], expected: Message
) -> None:
    recorder = Recorder(verdict)
    app = DocumentedExamples()
    app.ws_middlewares.append(recorder)
    async with connect(app, "/echo") as peer:
        assert await peer.receive_all() == [expected]
    assert recorder.calls == ["before"]


async def test_failing_middleware_closes_1011_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(WebSocketMiddleware):
        async def before_websocket(self, request: Any) -> None:
            raise KeyError("middleware detail")

        async def after_websocket(self, request: Any) -> None:
            pass

    app = DocumentedExamples()
    app.ws_middlewares.append(Broken())
    async with connect(app, "/echo") as peer:
        assert await peer.receive_all() == [close(1011, "Internal server error")]
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [KeyError]


async def test_after_websocket_runs_after_a_handler_error(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()

    class FailingApp(App):
        async def ws_fail(self, ws: WebSocket) -> None:
            await ws.accept()
            raise ValueError("secret detail")

    app = FailingApp()
    app.ws_middlewares.append(recorder)
    async with connect(app, "/fail") as peer:
        messages = await peer.receive_all()
    assert messages[1:] == [close(1011, "Internal server error")]
    assert recorder.calls == ["before", "after"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert errors[0].exc_info[0] is ValueError
    assert "secret detail" not in repr(messages)


# --- sessions ------------------------------------------------------------------------------


class SessionApp(App):
    async def ws_login(self, ws: WebSocket, user: str) -> None:
        await ws.accept()
        self.request.session["user"] = user
        await ws.send_text("ok")

    async def ws_whoami(self, ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text(str(self.request.session.get("user")))
        if self.request.session.get("user") == "mallory":
            raise RuntimeError("after a change")

    async def ws_logout(self, ws: WebSocket) -> None:
        await ws.accept()
        self.request.session.clear()


def cookie_id(accept: Message) -> str:
    [(name, value)] = accept["headers"]
    assert name == b"Set-Cookie"
    assert value.endswith(b"; Path=/; SameSite=Lax; HttpOnly; Secure;")
    return value.decode().split(";")[0].removeprefix("session_id=")


async def test_session_cookie_on_accept_and_saved_after_the_handler() -> None:
    backend = InMemorySessionBackend()
    app = SessionApp(session_backend=backend)
    async with connect(app, "/login/ann") as peer:
        session_id = cookie_id(await peer.receive())
        assert await peer.receive() == text("ok")
    assert backend.sessions[session_id] == {"user": "ann"}

    cookie = [(b"cookie", f"session_id={session_id}".encode())]
    async with connect(app, "/whoami", headers=cookie) as peer:
        messages = await peer.receive_all()
    assert messages == [ACCEPT, text("ann"), close()]  # known session: no new cookie

    async with connect(app, "/logout", headers=cookie) as peer:
        await peer.receive_all()
    assert session_id not in backend.sessions


async def test_failed_handler_does_not_save_its_session_changes() -> None:
    backend = InMemorySessionBackend()
    await backend.save(SESSION_ID, {"user": "ann"}, 60)
    app = SessionApp(session_backend=backend)

    class Mallory(WebSocketMiddleware):
        async def before_websocket(self, request: Any) -> None:
            request.session["user"] = "mallory"

        async def after_websocket(self, request: Any) -> None:
            pass

    app.ws_middlewares.append(Mallory())
    cookie = [(b"cookie", f"session_id={SESSION_ID}".encode())]
    async with connect(app, "/whoami", headers=cookie) as peer:
        messages = await peer.receive_all()
    assert messages == [ACCEPT, text("mallory"), close(1011, "Internal server error")]
    assert backend.sessions[SESSION_ID] == {"user": "ann"}


async def test_session_is_saved_when_the_client_leaves() -> None:
    backend = InMemorySessionBackend()

    class App2(App):
        async def ws_track(self, ws: WebSocket) -> None:
            await ws.accept()
            async for message in ws:
                self.request.session["last"] = message

    async with connect(App2(session_backend=backend), "/track") as peer:
        session_id = cookie_id(await peer.receive())
        await peer.send_text("a")
        await peer.send_text("b")
        await peer.disconnect()
    assert backend.sessions[session_id] == {"last": "b"}


# --- message shapes and the API beyond MicroPie --------------------------------------------


async def test_receive_conversions_json_and_iteration() -> None:
    seen: list[Any] = []

    class Api(App):
        async def ws_api(self, ws: WebSocket) -> None:
            await ws.accept()
            seen.append(await ws.receive_text())  # binary frame → text
            seen.append(await ws.receive_bytes())  # text frame → bytes
            seen.append(await ws.receive())
            seen.append(await ws.receive())
            seen.append(await ws.receive_json())
            await ws.send_json({"n": [1, 2]})
            await ws.send(b"\x00")
            await ws.send("plain")
            seen.extend([message async for message in ws])

    async with connect(Api(session_cookie_secure=False), "/api") as peer:
        await peer.receive()
        await peer.send_bytes("é".encode() + b"\xff")
        await peer.send_text("é")
        await peer.send_text("t")
        await peer.send_bytes(b"b")
        await peer.send({"type": "websocket.receive", "text": '{"a": 1}'})  # no "bytes" key
        assert await peer.receive() == text('{"n":[1,2]}')
        assert await peer.receive() == {"type": "websocket.send", "bytes": b"\x00"}
        assert await peer.receive() == text("plain")
        await peer.send_text("last")
        await peer.disconnect()
    assert seen == ["é", "é".encode(), "t", b"b", {"a": 1}, "last"]


async def test_subprotocols_scope_and_request_are_exposed() -> None:
    seen: list[Any] = []

    class Proto(App):
        async def ws_proto(self, ws: WebSocket) -> None:
            seen.extend([ws.subprotocols, ws.request is self.request, ws.scope["path"]])
            await ws.accept(subprotocol="chat.v2")
            seen.append(ws.subprotocol)
            await ws.close()

    app = Proto()
    async with connect(app, "/proto", subprotocols=["chat.v1", "chat.v2"]) as peer:
        accept = await peer.receive()
    assert accept["subprotocol"] == "chat.v2"
    assert seen == [["chat.v1", "chat.v2"], True, "/proto", "chat.v2"]


async def test_subprotocol_the_client_did_not_offer_fails_cleanly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Proto(App):
        async def ws_proto(self, ws: WebSocket) -> None:
            await ws.accept(subprotocol="x")

    async with connect(Proto(), "/proto", subprotocols=[]) as peer:
        assert await peer.receive_all() == [close(1011, "Internal server error")]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert errors[0].exc_info[0] is ValueError


async def test_misuse_raises_runtime_errors_without_hanging() -> None:
    errors: list[str] = []

    class Misuse(App):
        async def ws_misuse(self, ws: WebSocket) -> None:
            for attempt in (ws.send_text("early"), ws.send_bytes(b"early"), ws.receive_text()):
                try:
                    await attempt
                except RuntimeError as exc:
                    errors.append(str(exc))
            await ws.accept()
            try:
                await ws.accept()
            except RuntimeError as exc:
                errors.append(str(exc))
            await ws.close(4000, "bye")
            await ws.close()  # a no-op once closed
            try:
                await ws.send_text("late")
            except RuntimeError as exc:
                errors.append(str(exc))

    async with connect(Misuse(session_cookie_secure=False), "/misuse") as peer:
        messages = await peer.receive_all()
    assert [m["type"] for m in messages] == ["websocket.accept", "websocket.close"]
    assert messages[1] == close(4000, "bye")
    not_accepted = "WebSocket connection not accepted"
    assert errors == [not_accepted] * 3 + ["WebSocket connection already accepted", not_accepted]


INVALID_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535, True, "1000", None]
VALID_CLOSE_CODES = [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999]


async def test_a_close_code_a_server_may_not_send_raises_before_anything_is_sent() -> None:
    refused: list[tuple[object, bool]] = []

    class BadCodes(App):
        async def ws_bad(self, ws: WebSocket) -> None:
            await ws.accept()
            for code in INVALID_CLOSE_CODES:
                for attempt in (
                    ws.close(code),  # type: ignore[arg-type]
                    ws.send({"type": "websocket.close", "code": code}),
                ):
                    try:
                        await attempt
                    except ValueError as exc:
                        refused.append((code, str(exc).startswith("Invalid WebSocket close code")))
            assert ws.accepted  # still open: nothing happened
            await ws.send_text("still open")
            await ws.close(4000, "fine")

    async with connect(BadCodes(session_cookie_secure=False), "/bad") as peer:
        messages = await peer.receive_all()
    assert messages[0]["type"] == "websocket.accept"
    assert messages[1:] == [text("still open"), close(4000, "fine")]
    assert refused == [(code, True) for code in INVALID_CLOSE_CODES for _ in range(2)]


@pytest.mark.parametrize("code", VALID_CLOSE_CODES)
async def test_every_close_code_a_server_may_send_reaches_the_client(code: int) -> None:
    class Closes(App):
        async def ws_close(self, ws: WebSocket) -> None:
            await ws.accept()
            await ws.close(code, "why")

    async with connect(Closes(session_cookie_secure=False), "/close") as peer:
        messages = await peer.receive_all()
    assert [m["type"] for m in messages] == ["websocket.accept", "websocket.close"]
    assert messages[1] == close(code, "why")


async def test_an_invalid_close_code_is_an_error_even_when_the_connection_is_not_open() -> None:
    """The code is checked first: a bug shows itself before accept too, not only on the wire."""
    outcome: list[str] = []

    class Early(App):
        async def ws_early(self, ws: WebSocket) -> None:
            try:
                await ws.close(5000)
            except ValueError:
                outcome.append("ValueError")
            await ws.close(1000)  # a no-op before accept (MicroPie's rule)
            outcome.append("no-op")

    async with connect(Early(session_cookie_secure=False), "/early") as peer:
        assert await peer.receive_all() == [close(1000, "")]  # the rejection after the handler
    assert outcome == ["ValueError", "no-op"]


# --- how connections end --------------------------------------------------------------------


async def test_returning_without_close_closes_1000_and_without_accept_rejects() -> None:
    class Ends(App):
        async def ws_open(self, ws: WebSocket) -> None:
            await ws.accept()

        async def ws_never(self, ws: WebSocket) -> None:
            pass

    app = Ends(session_cookie_secure=False)
    async with connect(app, "/open") as peer:
        messages = await peer.receive_all()
    assert [m["type"] for m in messages] == ["websocket.accept", "websocket.close"]
    assert messages[1] == close(1000, "")
    async with connect(app, "/never") as peer:
        assert await peer.receive_all() == [close(1000, "")]  # before accept: a rejection (403)


async def test_pending_receive_raises_connection_closed_with_code_and_reason() -> None:
    caught: list[ConnectionClosed] = []

    class Waits(App):
        async def ws_wait(self, ws: WebSocket) -> None:
            await ws.accept()
            try:
                await ws.receive_text()
            except ConnectionClosed as exc:
                caught.append(exc)
            try:
                await ws.send_text("too late")
            except ConnectionClosed as exc:
                caught.append(exc)
            try:
                await ws.receive_bytes()
            except ConnectionClosed as exc:
                caught.append(exc)

    async with connect(Waits(), "/wait") as peer:
        await peer.receive()
        await peer.send({"type": "websocket.disconnect", "code": 4001, "reason": "gone"})
        assert await peer.receive_all() == []
    assert [(c.code, c.reason) for c in caught] == [(4001, "gone")] * 3


@pytest.mark.parametrize("blocked_in", ["push loop", "sleep", "start_soon task"])
async def test_handler_blocked_elsewhere_is_cancelled_after_the_grace_period(
    blocked_in: str,
) -> None:
    recorder = Recorder()
    cancelled = anyio.Event()
    pushing = anyio.Event()

    class Pusher(App):
        async def ws_push(self, ws: WebSocket) -> None:
            await ws.accept()
            try:
                if blocked_in == "push loop":
                    while True:  # sends raise ConnectionClosed: bounded by the client leaving
                        await ws.send_text("tick")
                        pushing.set()
                        await anyio.sleep(0.01)
                elif blocked_in == "sleep":
                    pushing.set()
                    await anyio.sleep_forever()
                else:
                    ws.start_soon(anyio.sleep_forever)
                    pushing.set()
                    await anyio.Event().wait()
            except anyio.get_cancelled_exc_class():
                cancelled.set()
                raise

    app = Pusher()
    app.ws_middlewares.append(recorder)
    async with connect(app, "/push") as peer:
        await pushing.wait()
        left_at = anyio.current_time()
        await peer.disconnect()
        await recorder.after.wait()
        elapsed = anyio.current_time() - left_at
    if blocked_in == "push loop":
        # The first send after the disconnect raises ConnectionClosed: no cancellation needed.
        assert elapsed < HANDLER_GRACE_AFTER_CLOSE
    else:
        assert cancelled.is_set()
        assert HANDLER_GRACE_AFTER_CLOSE <= elapsed < HANDLER_GRACE_AFTER_CLOSE + 0.5
    assert recorder.calls == ["before", "after"]


async def test_start_soon_task_lives_exactly_as_long_as_the_connection() -> None:
    events: list[str] = []
    started = anyio.Event()

    async def heartbeat(ws: WebSocket) -> None:
        try:
            started.set()
            await anyio.sleep_forever()
        finally:
            events.append("task ended")

    class Beats(App):
        async def ws_beat(self, ws: WebSocket) -> None:
            await ws.accept()
            ws.start_soon(heartbeat, ws)
            await ws.receive_text()
            events.append("handler returns")

    async with connect(Beats(session_cookie_secure=False), "/beat") as peer:
        await started.wait()
        await peer.send_text("stop")
        assert (await peer.receive_all())[-1] == close()
    assert events == ["handler returns", "task ended"]


async def test_failing_start_soon_task_closes_1011_and_only_its_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With lifespan the task runs in the app's task group: its error must not reach it."""

    async def broken() -> None:
        raise LookupError("task detail")

    class Tasks(App):
        async def ws_tasks(self, ws: WebSocket) -> None:
            await ws.accept()
            ws.start_soon(broken)
            await anyio.sleep_forever()

        async def ws_echo(self, ws: WebSocket) -> None:
            await ws.accept()
            await ws.send_text(await ws.receive_text())

    app = Tasks(session_cookie_secure=False)
    async with connect(app, "/echo") as survivor:
        await survivor.receive()
        async with connect(app, "/tasks") as failing:
            assert (await failing.receive_all())[1:] == [close(1011, "Internal server error")]
        await survivor.send_text("still here")
        assert await survivor.receive() == text("still here")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.exc_info[0] for r in errors if r.exc_info] == [LookupError]


async def test_group_of_connection_closed_is_a_normal_end(caplog: pytest.LogCaptureFixture) -> None:
    readers = 0
    both_reading = anyio.Event()

    async def read(ws: WebSocket) -> None:
        nonlocal readers
        readers += 1
        if readers == 2:
            both_reading.set()
        await ws.receive_text()

    class Fanout(App):
        async def ws_fan(self, ws: WebSocket) -> None:
            await ws.accept()
            async with anyio.create_task_group() as group:
                group.start_soon(read, ws)
                group.start_soon(read, ws)

    async with connect(Fanout(), "/fan") as peer:
        await peer.receive()
        await both_reading.wait()
        await peer.disconnect()
        assert await peer.receive_all() == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_server_shutdown_sends_1001_then_the_cancellation_propagates() -> None:
    ready = anyio.Event()

    class Idle(App):
        async def ws_idle(self, ws: WebSocket) -> None:
            await ws.accept()
            ready.set()
            await ws.receive_text()

    app = Idle(session_cookie_secure=False)
    scope = {"type": "websocket", "path": "/idle", "headers": [], "query_string": b""}
    to_app, app_inbox = anyio.create_memory_object_stream[Message](math.inf)
    app_outbox, from_app = anyio.create_memory_object_stream[Message](math.inf)
    await to_app.send({"type": "websocket.connect"})
    outcome: list[str] = []
    with anyio.fail_after(DEADLINE), to_app, app_inbox, app_outbox, from_app:
        async with anyio.create_task_group() as server:

            async def connection() -> None:
                try:
                    await app(scope, app_inbox.receive, app_outbox.send)
                except anyio.get_cancelled_exc_class():
                    outcome.append("cancelled")
                    raise
                outcome.append("returned")

            server.start_soon(connection)
            await ready.wait()
            server.cancel_scope.cancel()
        messages = [from_app.receive_nowait() for _ in range(2)]
    assert messages[1] == close(1001, "Going away")
    assert outcome == ["cancelled"]


async def test_client_leaving_during_the_handshake_cancels_the_handler() -> None:
    cancelled = anyio.Event()
    sleeping = anyio.Event()

    class Slow(App):
        async def ws_slow(self, ws: WebSocket) -> None:
            try:
                sleeping.set()
                await anyio.sleep_forever()  # never accepts
            finally:
                cancelled.set()

    async with connect(Slow(), "/slow") as peer:
        await sleeping.wait()
        await peer.disconnect()
        assert await peer.receive_all() == []
    assert cancelled.is_set()


# --- limits and backpressure ----------------------------------------------------------------


async def test_oversized_message_closes_1009_and_spares_other_connections() -> None:
    caught: list[ConnectionClosed] = []

    class Echo(App):
        async def ws_echo(self, ws: WebSocket) -> None:
            await ws.accept()
            try:
                while True:
                    await ws.send_text(await ws.receive_text())
            except ConnectionClosed as exc:
                caught.append(exc)

    app = Echo(session_cookie_secure=False)
    app.ws_max_message_size = 8  # type: ignore[attr-defined]
    async with connect(app, "/echo") as other, connect(app, "/echo") as peer:
        await other.receive()
        await peer.receive()
        await peer.send_text("12345678")  # at the limit: fine
        assert await peer.receive() == text("12345678")
        await peer.send_text("ééé")  # 6 bytes
        assert await peer.receive() == text("ééé")
        await peer.send_text("éééé!")  # 5 characters, 9 bytes
        assert await peer.receive_all() == [close(1009, "Message too big")]
        await other.send_bytes(b"x" * 8)
        assert await other.receive() == text("x" * 8)
        await other.send_bytes(b"x" * 9)
        assert await other.receive() == close(1009, "Message too big")
    assert [(c.code, c.reason) for c in caught] == [(1009, "Message too big")] * 2


def test_default_message_limit_is_one_mebibyte() -> None:
    assert DEFAULT_MAX_MESSAGE_SIZE == 1024 * 1024


async def test_a_handler_that_does_not_read_stops_the_pump() -> None:
    release = anyio.Event()
    received: list[str] = []
    # The pump (at once without lifespan, after a sweep or two with it) takes INBOX_SIZE
    # messages plus the one it is trying to hand over, and then stops reading.
    reads_when_full = 1 + INBOX_SIZE + 1  # websocket.connect first
    reads = 0
    pump_full = anyio.Event()

    class Lazy(App):
        async def ws_lazy(self, ws: WebSocket) -> None:
            await ws.accept()
            await release.wait()
            received.extend([message async for message in ws])  # type: ignore[misc]

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            async def counted() -> Any:
                nonlocal reads
                message = await receive()
                reads += 1
                if reads == reads_when_full:
                    pump_full.set()
                return message

            await super().__call__(
                scope, counted if scope["type"] == "websocket" else receive, send
            )

    async with connect(Lazy(), "/lazy") as peer:
        await peer.receive()
        for number in range(50):
            await peer.send_text(str(number))
        await pump_full.wait()
        for _ in range(100):
            await anyio.lowlevel.checkpoint()
        assert reads == reads_when_full
        assert peer.to_app.statistics().current_buffer_used == 50 - INBOX_SIZE - 1
        release.set()
        await peer.disconnect()
    assert received == [str(number) for number in range(50)]


async def test_nothing_outlives_the_connection() -> None:
    class Busy(App):
        async def ws_busy(self, ws: WebSocket) -> None:
            await ws.accept()
            for _ in range(3):
                ws.start_soon(anyio.sleep_forever)
            await ws.send_text("ready")
            await ws.receive_text()

    before = len(anyio.get_running_tasks())
    async with connect(Busy(), "/busy") as peer:
        await peer.receive()
        assert await peer.receive() == text("ready")
        assert len(anyio.get_running_tasks()) >= before + 5  # app call, pump, 3 tasks
        await peer.disconnect()
    await anyio.lowlevel.checkpoint()
    assert len(anyio.get_running_tasks()) == before


@pytest.mark.parametrize("asgi", [None, {"version": "3.0", "spec_version": "2.4"}])
async def test_send_raising_oserror_means_the_client_left(asgi: dict[str, str] | None) -> None:
    """ASGI 2.4 servers raise ``OSError`` from ``send()`` after a disconnect (a scope that names
    no version may come from one)."""
    caught: list[ConnectionClosed] = []

    class Talker(App):
        async def ws_talk(self, ws: WebSocket) -> None:
            await ws.accept()
            try:
                await ws.send_text("lost")
            except ConnectionClosed as exc:
                caught.append(exc)

    sent: list[Message] = []

    async def send(message: Message) -> None:
        if message["type"] == "websocket.send":
            raise OSError("peer gone")
        sent.append(message)

    inbox, app_inbox = anyio.create_memory_object_stream[Message](math.inf)
    await inbox.send({"type": "websocket.connect"})
    scope = server_scope("/talk", asgi)
    with anyio.fail_after(DEADLINE), inbox, app_inbox:
        await Talker(session_cookie_secure=False)(scope, app_inbox.receive, send)
    assert [(c.code, c.reason) for c in caught] == [(1006, "")]
    assert [m["type"] for m in sent] == ["websocket.accept"]  # no close to a peer that left


@pytest.mark.parametrize("asgi", [None, {"version": "3.0", "spec_version": "2.4"}])
async def test_sends_from_the_handler_and_its_tasks_reach_the_server_one_at_a_time(
    asgi: dict[str, str] | None,
) -> None:
    """On a server whose ``send()`` may raise (ASGI 2.4, or unknown), every send holds the turn:
    while one is inside the server's ``send()``, the others (tasks, ``close()``) wait, so the
    server never sees two at once, and nothing is lost or sent after the close."""
    first_send_entered, release_first_send, all_texts_sent = (anyio.Event() for _ in range(3))
    tasks_about_to_send: list[anyio.Event] = [anyio.Event() for _ in range(3)]
    sent: list[Message] = []
    in_send = most_at_once = 0

    class Chat(App):
        async def ws_chat(self, ws: WebSocket) -> None:
            await ws.accept()

            async def say(index: int) -> None:
                tasks_about_to_send[index].set()
                await ws.send_text(f"task {index}")

            for index in range(3):
                ws.start_soon(say, index)
            await ws.send_text("handler")
            await all_texts_sent.wait()
            await ws.close(4000, "done")

    async def send(message: Message) -> None:
        nonlocal in_send, most_at_once
        in_send += 1
        most_at_once = max(most_at_once, in_send)
        try:
            sent.append(message)
            if message["type"] == "websocket.send" and not first_send_entered.is_set():
                first_send_entered.set()
                await release_first_send.wait()
            if len([m for m in sent if m["type"] == "websocket.send"]) == 4:
                all_texts_sent.set()
            await anyio.lowlevel.checkpoint()
        finally:
            in_send -= 1

    inbox, app_inbox = anyio.create_memory_object_stream[Message](math.inf)
    await inbox.send({"type": "websocket.connect"})
    scope = server_scope("/chat", asgi)
    app = Chat(session_cookie_secure=False)
    with anyio.fail_after(DEADLINE), inbox, app_inbox:
        async with lifespan(app, running=_with_lifespan), anyio.create_task_group() as tg:
            tg.start_soon(app, scope, app_inbox.receive, send)
            await first_send_entered.wait()
            for started in tasks_about_to_send:
                await started.wait()
            for _ in range(5):  # let the tasks run into the held turn
                await anyio.lowlevel.checkpoint()
            assert [m.get("text") for m in sent[1:]] == ["handler"]  # the others wait
            release_first_send.set()
    assert most_at_once == 1
    assert sent[1] == text("handler")
    assert sorted(m["text"] for m in sent[2:5]) == ["task 0", "task 1", "task 2"]
    assert sent[5:] == [close(4000, "done")]


async def test_sends_go_straight_to_a_server_that_cannot_fail_them_in_order() -> None:
    """A server before ASGI 2.4 (hypercorn says 2.3) raises nothing from ``send()``, so a send
    hands it the message directly (the awaitable is the server's own coroutine). The handler
    waits in the server while it is there, and its messages arrive in order, the close last."""
    first_send_entered, release_first_send, all_texts_sent = (anyio.Event() for _ in range(3))
    handler_sent = anyio.Event()
    sent: list[Message] = []

    class Chat(App):
        async def ws_chat(self, ws: WebSocket) -> None:
            await ws.accept()
            sending = ws.send_text("first")
            assert getattr(sending, "cr_code", None) is send.__code__  # the server's own
            await sending
            handler_sent.set()
            for index in range(3):
                await ws.send_bytes(f"then {index}".encode())
            await all_texts_sent.wait()
            await ws.close(4000, "done")

    async def send(message: Message) -> None:
        sent.append(message)
        if message.get("text") == "first":
            first_send_entered.set()
            await release_first_send.wait()
        if len([m for m in sent if m["type"] == "websocket.send"]) == 4:
            all_texts_sent.set()

    inbox, app_inbox = anyio.create_memory_object_stream[Message](math.inf)
    await inbox.send({"type": "websocket.connect"})
    scope = server_scope("/chat", {"version": "3.0", "spec_version": "2.3"})
    app = Chat(session_cookie_secure=False)
    with anyio.fail_after(DEADLINE), inbox, app_inbox:
        async with lifespan(app, running=_with_lifespan), anyio.create_task_group() as tg:
            tg.start_soon(app, scope, app_inbox.receive, send)
            await first_send_entered.wait()
            assert not handler_sent.is_set()  # the handler waits in the server's send()
            release_first_send.set()
    assert sent[1:] == [
        text("first"),
        *({"type": "websocket.send", "bytes": f"then {i}".encode()} for i in range(3)),
        close(4000, "done"),
    ]


async def test_a_server_send_that_is_not_a_coroutine_function_is_wrapped() -> None:
    """``send_text`` always returns a coroutine (``asyncio.create_task`` takes only those): a
    server whose ``send`` returns some other awaitable goes through the framework's send."""
    sent: list[Message] = []

    class Done:
        def __await__(self) -> Any:
            return iter(())

    def send(message: Message) -> Done:
        sent.append(message)
        return Done()

    inbox, app_inbox = anyio.create_memory_object_stream[Message](math.inf)
    await inbox.send({"type": "websocket.connect"})
    scope = server_scope("/", {"version": "3.0", "spec_version": "2.3"})
    ws = WebSocket(app_inbox.receive, send, scope=scope)
    with anyio.fail_after(DEADLINE), inbox, app_inbox:
        await ws.accept()
        sending = ws.send_text("hello")
        assert inspect.iscoroutine(sending)
        await sending
    assert sent[1:] == [text("hello")]


@pytest.mark.parametrize(
    ("asgi", "cannot_fail"),
    [
        ({"version": "3.0", "spec_version": "2.3"}, True),
        ({"spec_version": "2.0"}, True),
        ({"spec_version": "2.4"}, False),
        ({"spec_version": "2.10"}, False),
        ({"spec_version": "3.0"}, False),
        ({"spec_version": "two"}, False),
        ({"spec_version": 2.3}, False),
        ({"version": "3.0"}, False),
        ("3.0", False),
        (None, False),
    ],
)
def test_which_servers_get_sends_directly(asgi: object, cannot_fail: bool) -> None:
    scope: dict[str, Any] = {"type": "websocket"}
    if asgi is not None:
        scope["asgi"] = asgi
    assert server_send_cannot_fail(scope) is cannot_fail


async def test_hand_built_websocket_reads_the_connect_itself() -> None:
    messages: list[Message] = [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "hi", "bytes": None},
        {"type": "websocket.disconnect", "code": 1001},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    ws = WebSocket(receive, send)
    await ws.accept()
    assert await ws.receive_text() == "hi"
    with pytest.raises(ConnectionClosed) as closed:
        await ws.receive_text()
    assert closed.value.code == 1001
    assert sent == [ACCEPT]
    with pytest.raises(RuntimeError):
        ws.start_soon(anyio.sleep, 0)


async def test_a_send_yields_after_sends_in_a_row_unless_the_sweeper_ran() -> None:
    """A handler that only sends yields every ``SENDS_BETWEEN_CHECKPOINTS`` sends (so a loop
    against a server whose ``send`` never yields cannot starve the event loop); a sweep in
    between proves the loop ran, so fan-out (one send per message) pays no task switch."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)  # never yields, like hypercorn's send after the client left

    async def send_yields(ws: WebSocket) -> bool:
        """Whether this send reached a checkpoint (a cancelled scope stops it there)."""
        with anyio.CancelScope() as scope:
            scope.cancel()
            await ws.send_text("probe")
        return scope.cancelled_caught

    ws = WebSocket(receive, send)
    await ws.accept()
    for _ in range(SENDS_BETWEEN_CHECKPOINTS):
        assert not await send_yields(ws)
    assert await send_yields(ws)  # the ninth in a row yields, and is not sent
    for _ in range(SENDS_BETWEEN_CHECKPOINTS):
        assert not await send_yields(ws)
    ws._swept()  # what the sweeper does every round (SWEEP_INTERVAL)
    for _ in range(SENDS_BETWEEN_CHECKPOINTS):
        assert not await send_yields(ws)
    assert await send_yields(ws)
    assert len(sent) == 1 + 3 * SENDS_BETWEEN_CHECKPOINTS  # the accept, and the sends that ran
