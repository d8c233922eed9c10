"""The in-process test client, against small raw ASGI apps, on asyncio and trio."""

from __future__ import annotations

import json
import pickle
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from micropie.core.types import Message, Receive, Scope, Send
from micropie.testing import (
    AppOutlivedClientError,
    ASGIProtocolError,
    LifespanError,
    TestClient,
    WebSocketClosed,
    WebSocketRejected,
)
from tests.support.drive import Boom, bounded

pytestmark = pytest.mark.anyio


async def read_body(receive: Receive) -> tuple[bytes, list[Message]]:
    """The whole request body, and the messages it came in."""
    messages = []
    while True:
        message = await receive()
        messages.append(message)
        if not message.get("more_body", False):
            return b"".join(m.get("body", b"") for m in messages), messages


async def first_chunk_then_leave(
    client: TestClient, path: str, flavour: str = "aiter_bytes"
) -> Any:
    """Stream ``path``, take the first chunk, leave early (the client disconnects)."""
    async with client.stream("GET", path) as response:
        async for chunk in getattr(response, flavour)():
            return chunk
    raise AssertionError("no chunk")  # pragma: no cover


async def respond(send: Send, status: int, body: bytes, headers: list[Any] | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or []})
    await send({"type": "http.response.body", "body": body})


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with a JSON summary of what it received."""
    if scope["type"] != "http":
        raise RuntimeError("no lifespan here")
    body, messages = await read_body(receive)
    summary = {
        "method": scope["method"],
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode(),
        "query_string": scope["query_string"].decode(),
        "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
        "body": body.decode("latin-1"),
        "more_body": [m["more_body"] for m in messages],
    }
    await respond(send, 200, json.dumps(summary).encode(), [(b"content-type", b"application/json")])


# -- requests -------------------------------------------------------------------------------------


@bounded
async def test_get_sees_a_complete_http_scope() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            seen.append(scope)
            await respond(send, 200, b"hi")

    async with TestClient(app, client=("10.0.0.1", 1234), root_path="/sub") as client:
        response = await client.get("/sub/greet/bob%20smith", params={"x": 1, "y": "a b"})

    assert response.status_code == 200
    assert response.text == "hi"
    (scope,) = seen
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.3"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "https"  # the default base_url: Secure cookies come back
    assert scope["server"] == ("testserver", 443)
    assert scope["client"] == ("10.0.0.1", 1234)
    assert scope["root_path"] == "/sub"
    assert scope["path"] == "/sub/greet/bob smith"
    assert scope["raw_path"] == b"/sub/greet/bob%20smith"
    assert scope["query_string"] == b"x=1&y=a+b"
    assert (b"host", b"testserver") in scope["headers"]
    assert all(key == key.lower() for key, _ in scope["headers"])


@bounded
async def test_post_json_and_headers_reach_the_app() -> None:
    async with TestClient(echo_app) as client:
        response = await client.post("/echo", json={"a": [1, 2]}, headers={"X-Token": "abc"})

    summary = response.json()
    assert summary["method"] == "POST"
    assert json.loads(summary["body"]) == {"a": [1, 2]}
    headers = dict(map(tuple, summary["headers"]))
    assert headers["x-token"] == "abc"
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == str(len(summary["body"]))


@bounded
async def test_form_and_files_arrive_intact() -> None:
    payload = bytes(range(256)) * 4
    async with TestClient(echo_app) as client:
        response = await client.post(
            "/upload",
            data={"name": "ann"},
            files={"upload": ("a.bin", payload, "application/octet-stream")},
        )

    summary = response.json()
    body = summary["body"].encode("latin-1")
    headers = dict(map(tuple, summary["headers"]))
    assert headers["content-type"].startswith("multipart/form-data; boundary=")
    assert headers["content-length"] == str(len(body))
    assert b'name="upload"; filename="a.bin"' in body
    assert payload in body
    assert b'name="name"\r\n\r\nann\r\n' in body


@bounded
async def test_urlencoded_form_body() -> None:
    async with TestClient(echo_app) as client:
        response = await client.post("/f", data={"a": "1 2", "b": "&"})
    assert response.json()["body"] == "a=1+2&b=%26"


@bounded
async def test_streamed_request_body_arrives_in_its_chunks() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"one ", b"two ", b"three"):
            yield part

    async with TestClient(echo_app) as client:
        response = await client.post("/echo", content=chunks())

    summary = response.json()
    assert summary["body"] == "one two three"
    assert summary["more_body"] == [True, True, False]


@bounded
async def test_empty_body_is_one_final_message() -> None:
    async with TestClient(echo_app) as client:
        response = await client.get("/")
    assert response.json()["more_body"] == [False]


@bounded
async def test_cookies_round_trip_across_requests() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/login":
            await respond(send, 200, b"", [(b"set-cookie", b"session=s3cr3t; Path=/")])
            return
        cookie = dict(scope["headers"]).get(b"cookie", b"")
        await respond(send, 200, cookie)

    async with TestClient(app) as client:
        assert (await client.get("/whoami")).content == b""
        await client.post("/login")
        assert (await client.get("/whoami")).content == b"session=s3cr3t"


@bounded
async def test_head_response_has_no_body() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await respond(send, 200, b"body", [(b"content-length", b"4")])

    async with TestClient(app) as client:
        response = await client.head("/")
    assert response.status_code == 200
    assert response.headers["content-length"] == "4"
    assert response.content == b""


@bounded
async def test_works_without_async_with() -> None:
    client = TestClient(echo_app)
    try:
        first = await client.post("/a", json=[1])
        second = await client.get("/b", params={"q": "x"})
    finally:
        await client.aclose()
    assert json.loads(first.json()["body"]) == [1]
    assert second.json()["query_string"] == "q=x"


@bounded
async def test_without_async_with_a_finite_stream_is_buffered() -> None:
    finished = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"a", b"b", b"c"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        finished.set()

    client = TestClient(app)
    async with client.stream("GET", "/") as response:
        assert finished.is_set()  # the app ran to completion before we got the response
        assert [chunk async for chunk in response.aiter_bytes()] == [b"abc"]
    await client.aclose()


@bounded
async def test_get_returns_after_the_app_call_ends() -> None:
    after_response: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await receive()
        await respond(send, 200, b"done")
        after_response.append(await receive())  # work after the response, then return

    async with TestClient(app) as client:
        assert (await client.get("/")).text == "done"
        assert after_response == [{"type": "http.disconnect"}]


# -- app errors -----------------------------------------------------------------------------------


async def raise_before_response(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        raise Boom("before")


async def raise_mid_body(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise Boom("mid body")


async def raise_after_response(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await respond(send, 200, b"done")
        raise Boom("after")


@pytest.mark.parametrize("app", [raise_before_response, raise_mid_body, raise_after_response])
@pytest.mark.parametrize("entered", [True, False], ids=["async-with", "plain"])
@bounded
async def test_app_exception_is_reraised_as_itself(app: Any, entered: bool) -> None:
    client = TestClient(app)

    async def get() -> None:
        if entered:
            async with client:
                await client.get("/")
        else:
            await client.get("/")

    with pytest.raises(Boom) as info:
        await get()
    assert type(info.value) is Boom  # not an ExceptionGroup around it
    await client.aclose()


@bounded
async def test_app_exception_inside_stream_is_reraised() -> None:
    async def read_all(client: TestClient) -> None:
        async with client.stream("GET", "/") as response:
            assert response.status_code == 200
            await response.aread()

    async with TestClient(raise_mid_body) as client:
        with pytest.raises(Boom, match="mid body"):
            await read_all(client)


@bounded
async def test_app_exception_becomes_500_when_not_raised() -> None:
    async with TestClient(raise_before_response, raise_app_exceptions=False) as client:
        response = await client.get("/")
    assert response.status_code == 500


@bounded
async def test_app_failing_mid_body_is_a_broken_response_when_not_raised() -> None:
    async with TestClient(raise_mid_body, raise_app_exceptions=False) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/")


@bounded
async def test_app_returning_without_a_response_is_a_clear_error() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        return

    async with TestClient(app) as client:
        with pytest.raises(ASGIProtocolError, match=r"returned without sending http\.response"):
            await client.get("/nothing")
    async with TestClient(app, raise_app_exceptions=False) as client:
        assert (await client.get("/nothing")).status_code == 500


@bounded
async def test_app_sending_body_before_start_is_a_protocol_error() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.body", "body": b"x"})

    async with TestClient(app) as client:
        with pytest.raises(ASGIProtocolError, match=r"before http\.response\.start"):
            await client.get("/")


# -- lifespan -------------------------------------------------------------------------------------


@bounded
async def test_lifespan_startup_and_shutdown_bracket_the_requests() -> None:
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            assert (await receive())["type"] == "lifespan.startup"
            scope["state"]["db"] = "connected"
            events.append("startup")
            await send({"type": "lifespan.startup.complete"})
            assert (await receive())["type"] == "lifespan.shutdown"
            events.append("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return
        events.append("request")
        await respond(send, 200, scope["state"]["db"].encode())

    async with TestClient(app) as client:
        assert events == ["startup"]
        assert (await client.get("/")).text == "connected"
        assert events == ["startup", "request"]
    assert events == ["startup", "request", "shutdown"]


@bounded
async def test_failing_startup_raises_with_the_apps_message() -> None:
    requests: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "database is down"})
            await receive()  # a lenient app waits; the client must not wait for it
        requests.append(scope)

    with pytest.raises(LifespanError, match="lifespan startup failed: database is down") as info:
        async with TestClient(app):
            pass  # pragma: no cover
    assert info.value.message == "database is down"
    assert requests == []


@bounded
async def test_startup_failure_carries_the_apps_exception() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        try:
            raise Boom("no db")
        except Boom as exc:
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            raise

    with pytest.raises(LifespanError) as info:
        async with TestClient(app):
            pass  # pragma: no cover
    assert isinstance(info.value.__cause__, Boom)


@bounded
async def test_failing_shutdown_raises() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.failed", "message": "flush failed"})

    with pytest.raises(LifespanError, match="shutdown failed: flush failed"):
        async with TestClient(app):
            pass


@pytest.mark.parametrize(
    "error",
    [
        LifespanError("startup", "database is down"),
        WebSocketRejected(1008, "No matching WebSocket route"),
        WebSocketClosed(1000, "Done"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_testing_errors_survive_pickling(error: Exception) -> None:
    """pytest-xdist and multiprocessing pickle exceptions: same type, fields and text after."""
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)


@pytest.mark.parametrize("behaviour", ["raises", "returns"])
@bounded
async def test_app_without_lifespan_support_still_serves(behaviour: str) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            if behaviour == "raises":
                raise RuntimeError("only http")
            return
        await respond(send, 200, b"ok")

    async with TestClient(app) as client:
        assert (await client.get("/")).text == "ok"


def lifespan_recorder(events: list[str]) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await respond(send, 200, b"")
            return
        try:
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            events.append("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
        finally:
            events.append("lifespan ended")

    return app


@bounded
async def test_failing_test_body_still_shuts_down() -> None:
    events: list[str] = []
    with pytest.raises(Boom):
        async with TestClient(lifespan_recorder(events)):
            raise Boom
    assert events == ["shutdown", "lifespan ended"]


@bounded
async def test_cancelled_test_body_cancels_the_app() -> None:
    events: list[str] = []
    with anyio.CancelScope() as scope:
        async with TestClient(lifespan_recorder(events)):
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert events == ["lifespan ended"]  # cancelled: no graceful shutdown, but nothing left running


@bounded
async def test_lifespan_can_be_switched_off() -> None:
    scopes: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope["type"])
        await respond(send, 204, b"")

    async with TestClient(app, lifespan=False) as client:
        await client.get("/")
    assert scopes == ["http"]


# -- streaming, disconnects and backpressure ----------------------------------------------------


@bounded
async def test_stream_delivers_chunks_one_by_one_while_the_app_runs() -> None:
    acked = [anyio.Event() for _ in range(3)]
    finished = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i, ack in enumerate(acked):
            await send({"type": "http.response.body", "body": b"chunk%d" % i, "more_body": True})
            await ack.wait()  # the next chunk only after the client has seen this one
        await send({"type": "http.response.body", "body": b""})
        finished.set()

    async with TestClient(app) as client, client.stream("GET", "/sse") as response:
        chunks = response.aiter_bytes()
        for i, ack in enumerate(acked):
            assert await anext(chunks) == b"chunk%d" % i
            assert not finished.is_set()
            ack.set()
        assert [chunk async for chunk in chunks] == []
    assert finished.is_set()


TICK = b"data: tick\n\n"


def endless_stream_app(
    disconnect: list[Message], finally_ran: anyio.Event, watch: bool = True
) -> Any:
    """Sends chunks forever; with ``watch`` it stops when receive() reports the disconnect."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await receive()  # the (empty) request body
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            async with anyio.create_task_group() as task_group:

                async def watch_for_disconnect() -> None:
                    disconnect.append(await receive())
                    task_group.cancel_scope.cancel()

                if watch:
                    task_group.start_soon(watch_for_disconnect)
                while True:
                    await send({"type": "http.response.body", "body": TICK, "more_body": True})
        finally:
            finally_ran.set()

    return app


@pytest.mark.parametrize("flavour", ["aiter_bytes", "aiter_raw", "aiter_text", "aiter_lines"])
@bounded
async def test_leaving_a_stream_early_disconnects_the_app(flavour: str) -> None:
    disconnect: list[Message] = []
    finally_ran = anyio.Event()

    async with TestClient(endless_stream_app(disconnect, finally_ran)) as client:
        chunk = await first_chunk_then_leave(client, "/sse", flavour)
        # Leaving stream() waited for the app call to end.
        assert disconnect == [{"type": "http.disconnect"}]
        assert finally_ran.is_set()
    assert chunk in (b"data: tick\n\n", "data: tick\n\n", "data: tick")


@bounded
async def test_cancelling_a_request_disconnects_the_app() -> None:
    app_waiting = anyio.Event()
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await receive()
        app_waiting.set()
        seen.append(await receive())  # blocks until the client leaves

    async with TestClient(app) as client, anyio.create_task_group() as task_group:
        task_group.start_soon(client.get, "/slow")
        await app_waiting.wait()
        task_group.cancel_scope.cancel()
    assert seen == [{"type": "http.disconnect"}]


@bounded
async def test_app_ignoring_the_disconnect_is_a_clear_error() -> None:
    finally_ran = anyio.Event()
    app = endless_stream_app([], finally_ran, watch=False)

    async with TestClient(app, disconnect_timeout=0.1) as client:
        started = anyio.current_time()
        with pytest.raises(
            AppOutlivedClientError,
            match=r"GET /sse was still running 0\.1 s after its client left \(was cancelled\)",
        ):
            await first_chunk_then_leave(client, "/sse")
        assert anyio.current_time() - started >= 0.1
        assert finally_ran.is_set()  # it was cancelled, not leaked


@bounded
async def test_slow_reader_blocks_the_apps_send() -> None:
    sent = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal sent
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(50):
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            sent += 1
        await send({"type": "http.response.body", "body": b""})

    async with TestClient(app) as client, client.stream("GET", "/") as response:
        await anyio.wait_all_tasks_blocked()
        blocked_at = sent
        assert blocked_at < 5  # the app waits in send() for us
        chunks = response.aiter_raw()
        for step in range(1, 4):
            await anext(chunks)
            await anyio.wait_all_tasks_blocked()
            assert sent == blocked_at + step  # one chunk read, one more sent
        remaining = [chunk async for chunk in chunks]
    assert len(remaining) == 50 - 3
    assert sent == 50


@bounded
async def test_open_stream_is_disconnected_when_the_client_closes() -> None:
    disconnect: list[Message] = []
    finally_ran = anyio.Event()

    async with TestClient(endless_stream_app(disconnect, finally_ran)) as client:
        request = client.build_request("GET", "/sse")
        response = await client.send(request, stream=True)
        assert response.status_code == 200
        # Never closed by the test: leaving the client disconnects it.
    assert disconnect == [{"type": "http.disconnect"}]
    assert finally_ran.is_set()


@bounded
async def test_concurrent_requests_do_not_wait_for_each_other() -> None:
    release = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            await release.wait()
        await respond(send, 200, scope["path"].encode())

    results: list[str] = []
    async with TestClient(app) as client, anyio.create_task_group() as task_group:

        async def get(path: str) -> None:
            results.append((await client.get(path)).text)
            release.set()

        task_group.start_soon(get, "/slow")
        task_group.start_soon(get, "/fast")
    assert results == ["/fast", "/slow"]


# -- as a fixture ------------------------------------------------------------------------------


@pytest.fixture
async def lifespan_events() -> AsyncIterator[list[str]]:
    events: list[str] = []
    yield events
    assert events == ["shutdown", "lifespan ended"]  # the client fixture shut down first


@pytest.fixture
async def client(lifespan_events: list[str]) -> AsyncIterator[TestClient]:
    async with TestClient(lifespan_recorder(lifespan_events)) as client:
        yield client


@bounded
async def test_client_works_from_a_fixture(client: TestClient, lifespan_events: list[str]) -> None:
    assert (await client.get("/")).status_code == 200
    assert lifespan_events == []


# -- the defaults a newcomer relies on --------------------------------------------------------


@bounded
async def test_a_login_test_written_the_obvious_way_keeps_its_session() -> None:
    """micropie's session cookie is Secure by default; the client talks https, so it comes back."""
    from micropie import App

    class Login(App):
        async def login(self, user: str) -> str:
            self.request.session["user"] = user
            return "ok"

        async def me(self) -> str:
            return str(self.request.session.get("user", "nobody"))

    async with TestClient(Login()) as client:
        login = await client.post("/login", data={"user": "alice"})
        assert "Secure" in login.headers["set-cookie"]
        assert (await client.get("/me")).text == "alice"
    async with TestClient(Login(), base_url="http://testserver") as client:
        await client.post("/login", data={"user": "alice"})
        assert (await client.get("/me")).text == "nobody"  # what a plain-http browser sees
