"""Every code sample in the docs runs, on asyncio and trio, and does what its page says.

The pages include their Python samples from ``docs_src/`` (``--8<-- "docs_src/..."``); this
module loads each file as the page shows it and checks, with ``TestClient``, the behaviour the
page describes. The sample test suites (the tutorial's and the testing guide's) run under pytest
in a subprocess, as a reader would run them. ``test_every_sample_is_included_and_tested`` keeps
the rule: a Python block in a page is an include, and every included file is tested here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest

from micropie.testing import TestClient, WebSocketClosed, WebSocketRejected
from tests.support.servers import CliServer

ROOT = Path(__file__).resolve().parent.parent.parent
DOCS = ROOT / "docs"
SAMPLES = ROOT / "docs_src"

#: Sample files checked below (relative to docs_src/); the guard test compares it with the pages.
TESTED = {
    "deployment/app.py",
    "deployment/embed.py",
    "deployment/prefix.py",
    "deployment/proxy.py",
    "fanout/chat.py",
    # run by tests/test_trio_send_eof.py, against real hypercorn trio workers:
    "hypercorn_send_eof/client.py",
    "hypercorn_send_eof/greet.py",
    "hypercorn_send_eof/plain_app.py",
    "hypercorn_send_eof/plain_app_fixed.py",
    "fanout/live.py",
    "fanout/own_lifespan.py",
    "fanout/redis_sessions.py",
    "fanout/sse_feed.py",
    "lifetimes/app.py",
    "lifetimes/protect.py",
    "middleware/app.py",
    "migration/differences.py",
    "requests/app.py",
    "routing/app.py",
    "sessions/app.py",
    "sessions/backend.py",
    "streaming/app.py",
    "streaming/cleanup.py",
    "templates/app.py",
    "templates/templates/hello.html",
    "testing/app.py",
    "testing/conftest.py",
    "testing/test_app.py",
    "tutorial/app.py",
    "tutorial/conftest.py",
    "tutorial/test_app.py",
    "uploads/app.py",
    "uploads/to_disk.py",
    "websockets/echo.py",
    "websockets/ticker.py",
}

_counter = iter(range(1_000_000))


def load(relative: str) -> ModuleType:
    """A fresh copy of the sample module (no state shared between tests or backends)."""
    path = SAMPLES / relative
    name = f"docs_sample_{next(_counter)}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def sample_modules() -> Iterator[None]:
    yield
    for name in [n for n in sys.modules if n.startswith("docs_sample_")]:
        del sys.modules[name]


# --- the rule --------------------------------------------------------------------------------

_INCLUDE = re.compile(r'--8<--\s+"(docs_src/[^":]+)(?::[\w-]+)?"')
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def test_every_sample_is_included_and_tested() -> None:
    included: set[str] = set()
    for page in DOCS.rglob("*.md"):
        text = page.read_text(encoding="utf-8")
        for language, body in _FENCE.findall(text):
            if language in {"python", "py", "html", "jinja"}:
                lines = [line for line in body.splitlines() if line.strip()]
                assert lines, f"{page}: an empty {language} block"
                assert all(_INCLUDE.search(line) for line in lines), (
                    f"{page.relative_to(ROOT)}: a {language} block that is not an include from"
                    f" docs_src/ (samples live there so that a test runs them):\n{body}"
                )
        included.update(m.removeprefix("docs_src/") for m in _INCLUDE.findall(text))
    for relative in included:
        assert (SAMPLES / relative).is_file(), f"docs include a missing file: {relative}"
    assert included <= TESTED, f"included but not tested: {sorted(included - TESTED)}"
    on_disk = {str(p.relative_to(SAMPLES)) for p in SAMPLES.rglob("*") if p.is_file()}
    on_disk = {p for p in on_disk if "__pycache__" not in p}
    assert on_disk == TESTED, f"samples no test knows: {sorted(on_disk - TESTED)}"


# --- the sample test suites, run as a reader runs them ---------------------------------------


@pytest.mark.parametrize(("folder", "tests"), [("tutorial", 3), ("testing", 5)])
def test_sample_test_suite_passes_on_both_backends(folder: str, tests: int) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"],
        cwd=SAMPLES / folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{tests * 2} passed" in result.stdout, result.stdout  # each on asyncio and trio


# --- tutorial ----------------------------------------------------------------------------------


def test_tutorial_app_served_by_the_cli(sample_modules: None) -> None:
    """The tutorial's ``python -m micropie app:app``, on both backends, over real HTTP."""
    for backend in ("asyncio", "trio"):
        with CliServer.start(str(SAMPLES / "tutorial" / "app.py") + ":app", backend=backend) as s:
            assert httpx.get(f"{s.url}/greet/Alice").text == "Hello, Alice!"
            assert httpx.get(f"{s.url}/add/1/2").json() == {"sum": 3}


# --- guides ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_routing(sample_modules: None) -> None:
    app = load("routing/app.py").app
    async with TestClient(app) as client:
        assert (await client.get("/")).text == "Welcome to the shop"
        missing = await client.get("/no/such/page")
        assert (missing.status_code, missing.text) == (404, "No page at /no/such/page")
        assert (await client.get("/item/7?colour=red")).json() == {"id": 7, "colour": "red"}
        assert (await client.get("/item/7")).json() == {"id": 7, "colour": "any"}
        bad = await client.get("/item/seven")
        assert (bad.status_code, bad.text) == (
            400,
            "400 Bad Request: Invalid value for parameter 'item_id'",
        )
        assert (await client.get("/files/a/b/c")).text == "a/b/c"
        assert (await client.get("/search?q=tea&sort=price")).json() == {
            "q": "tea",
            "filters": {"sort": "price"},
        }
        no_q = await client.get("/search")
        assert (no_q.status_code, no_q.text) == (
            400,
            "400 Bad Request: Missing required parameter 'q'",
        )
        added = await client.post("/cart")
        assert (added.status_code, added.text) == (201, "added")
        assert (await client.get("/cart")).text == "your cart"
        private = await client.get("/_helper")
        assert (private.status_code, private.text) == (404, "404 Not Found")


@pytest.mark.anyio
async def test_requests_and_responses(sample_modules: None) -> None:
    app = load("requests/app.py").app
    async with TestClient(app) as client:
        info = await client.get(
            "/info?tag=a&tag=b",
            headers={"user-agent": "docs-test", "cookie": "theme=dark"},
        )
        assert info.json() == {
            "method": "GET",
            "path": "/info",
            "agent": "docs-test",
            "page": "1",
            "tags": ["a", "b"],
            "theme": "dark",
        }
        assert info.headers["content-type"] == "application/json"
        echo = await client.post("/echo", json={"a": [1, 2]})
        assert echo.json() == {"you sent": {"a": [1, 2]}}
        form = await client.post("/signup", data={"email": "a@example.org"})
        assert (form.status_code, form.text) == (201, "a@example.org (newsletter: no)")
        as_json = await client.post("/signup", json={"email": "b@example.org", "newsletter": "y"})
        assert as_json.text == "b@example.org (newsletter: y)"
        raw = await client.post("/raw", content=b"\x00\x01 signed", headers={"content-type": "x"})
        assert raw.content == b"\x00\x01 signed"
        teapot = await client.get("/teapot")
        assert (teapot.status_code, teapot.text) == (418, "I'm a teapot")
        assert teapot.headers["x-brew"] == "earl grey"
        assert teapot.headers["content-type"] == "text/plain"
        nothing = await client.get("/nothing")
        assert (nothing.status_code, nothing.content) == (200, b"")
        assert nothing.headers["content-length"] == "0"
        old = await client.get("/old")
        assert (old.status_code, old.headers["location"]) == (302, "/new%20place?x=1")


@pytest.mark.anyio
async def test_sessions_login(sample_modules: None) -> None:
    app = load("sessions/app.py").app
    async with TestClient(app) as client:
        wrong = await client.post("/login", data={"username": "alice", "password": "x"})
        assert wrong.status_code == 401
        assert "set-cookie" not in wrong.headers
        ok = await client.post("/login", data={"username": "alice", "password": "wonderland"})
        assert ok.text == "Logged in"
        cookie = ok.headers["set-cookie"]
        assert cookie.endswith("; Path=/; SameSite=Lax; HttpOnly; Secure;")
        assert (await client.get("/me")).text == "You are alice"
        assert (await client.get("/logout")).text == "Logged out"
        me = await client.get("/me")
        assert (me.status_code, me.text) == (401, "Not logged in")


@pytest.mark.anyio
async def test_sessions_secure_cookie_is_not_sent_over_http(sample_modules: None) -> None:
    """What the sessions page warns about: over plain http the cookie never comes back."""
    app = load("sessions/app.py").app
    async with TestClient(app, base_url="http://testserver") as client:
        await client.post("/login", data={"username": "alice", "password": "wonderland"})
        assert (await client.get("/me")).status_code == 401


@pytest.mark.anyio
async def test_sessions_custom_backend(sample_modules: None) -> None:
    module = load("sessions/backend.py")
    async with TestClient(module.app) as client:
        assert (await client.get("/")).text == "Visit number 1"
        assert (await client.get("/")).text == "Visit number 2"
    assert list(module.backend.rows.values()) == [{"visits": 2}]


@pytest.mark.anyio
async def test_middleware(sample_modules: None) -> None:
    module = load("middleware/app.py")
    async with TestClient(module.app) as client:
        public = await client.get("/")
        assert public.text == "public"
        assert public.headers["server-timing"].startswith("app;dur=")
        refused = await client.get("/admin")
        assert (refused.status_code, refused.text) == (401, "Missing or wrong API key")
        assert "server-timing" not in refused.headers  # a short-circuit skips after_request
        admitted = await client.get("/admin", headers={"x-api-key": module.API_KEY})
        assert admitted.text == "the admin page"
        async with client.websocket_connect("/console") as ws:
            assert await ws.receive_text() == "console ready"
    async with TestClient(module.app, client=("203.0.113.9", 4000)) as remote:
        with pytest.raises(WebSocketRejected) as rejected:
            async with remote.websocket_connect("/console"):
                pass
        assert (rejected.value.code, rejected.value.reason) == (1008, "local clients only")


@pytest.mark.anyio
async def test_websocket_documented_examples(sample_modules: None) -> None:
    app = load("websockets/echo.py").app
    async with TestClient(app) as client:
        async with client.websocket_connect("/echo") as ws:
            await ws.send_text("Hello")
            assert await ws.receive_text() == "Echo: Hello"
        for path, expected in [("/greet/Alice", "Hello Alice!"), ("/greet?name=Bob", "Hello Bob!")]:
            async with client.websocket_connect(path) as ws:
                assert await ws.receive_text() == expected
                with pytest.raises(WebSocketClosed) as closed:
                    await ws.receive_text()
                assert closed.value.code == 1000


@pytest.mark.anyio
async def test_websocket_ticker(sample_modules: None) -> None:
    app = load("websockets/ticker.py").app
    async with TestClient(app) as client:
        async with client.websocket_connect("/ticker?every=0.01") as ws:
            ticks = [await ws.receive_json() for _ in range(2)]
            assert ticks == [{"tick": 0}, {"tick": 1}]
            await ws.send_text("hi")
            for _ in range(100):  # ticks keep coming; the echo arrives among them
                if await ws.receive_json() == {"echo": "hi"}:
                    break
            else:
                pytest.fail("no echo")
            await ws.send_text("stop")
            with pytest.raises(WebSocketClosed) as closed:  # noqa: PT012
                for _ in range(1000):
                    await ws.receive_json()
            assert (closed.value.code, closed.value.reason) == (1000, "bye")
        async with client.websocket_connect("/") as ws:
            assert await ws.receive_text() == "root"


@pytest.mark.anyio
async def test_streaming_and_sse(sample_modules: None) -> None:
    app = load("streaming/app.py").app
    async with TestClient(app) as client:
        countdown = await client.get("/countdown")
        assert countdown.text == "3\n2\n1\nliftoff!\n"
        assert "content-length" not in countdown.headers
        clock = await client.get("/clock?ticks=2")
        assert clock.headers["content-type"] == "text/event-stream; charset=utf-8"
        spaced = clock.text.replace('{"tick": ', '{"tick":')  # json without orjson
        assert spaced == (
            'event: tick\nid: 0\ndata: {"tick":0}\n\nevent: tick\nid: 1\ndata: {"tick":1}\n\n'
        )


@pytest.mark.anyio
async def test_streaming_cleanup(sample_modules: None) -> None:
    app = load("streaming/cleanup.py").app
    async with TestClient(app) as client:
        async with client.stream("GET", "/feed") as response:
            async for line in response.aiter_lines():
                assert app.open_feeds == 1
                if line == "line 2":
                    break
        assert app.open_feeds == 0  # the generator's finally ran when the client left


def _multipart(title: str, data: bytes) -> dict[str, Any]:
    return {"data": {"title": title}, "files": {"file": ("notes.txt", data, "text/plain")}}


@pytest.mark.anyio
async def test_uploads(sample_modules: None) -> None:
    app = load("uploads/app.py").app
    data = b"0123456789" * 100_000
    async with TestClient(app) as client:
        response = await client.post("/upload", **_multipart("ten", data))
        assert response.json() == {
            "title": "ten",
            "filename": "notes.txt",
            "content_type": "text/plain",
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }


@pytest.mark.anyio
async def test_uploads_to_disk(
    sample_modules: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPLOAD_DIR", str(tmp_path))
    app = load("uploads/to_disk.py").app
    async with TestClient(app) as client:
        saved = await client.post(
            "/save", files={"file": ("../../etc/evil.txt", b"hello", "text/plain")}
        )
        assert (saved.status_code, saved.text) == (201, "Saved evil.txt")
        assert (tmp_path / "evil.txt").read_bytes() == b"hello"
        cut = await client.post(
            "/save",
            content=b"--B\r\nContent-Disposition: form-data; name=file; filename=cut.txt\r\n\r\nh",
            headers={"content-type": "multipart/form-data; boundary=B"},
        )
        assert cut.status_code == 400
        assert not (tmp_path / "cut.txt").exists()


@pytest.mark.anyio
async def test_templates(sample_modules: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")  # template_dir does not depend on the working directory
    app = load("templates/app.py").app
    async with TestClient(app) as client:
        page = await client.get("/?name=<Bob>")
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "<h1>Hello, &lt;Bob&gt;!</h1>" in page.text  # autoescaped
        assert "<li>tea</li>" in page.text
        assert "<li>cake</li>" in page.text


@pytest.mark.anyio
async def test_lifetimes(sample_modules: None) -> None:
    app = load("lifetimes/app.py").app
    async with TestClient(app) as client:
        for _ in range(500):  # the background task ticks every 10 ms
            if (await client.get("/")).json()["ticks"] >= 3:
                break
            await anyio.sleep(0.01)
        else:
            pytest.fail("the background task did not run")
        with anyio.move_on_after(0.2):  # the client gives up: the handler is cancelled
            await client.get("/slow")
        assert app.state["slow_finished"] is True  # its finally ran before the request ended


@pytest.mark.anyio
async def test_lifetimes_protect(sample_modules: None) -> None:
    app = load("lifetimes/protect.py").app
    async with TestClient(app) as client:
        with anyio.move_on_after(0.02):  # the client leaves during the shielded write
            await client.post("/transfer", params={"amount": 5})
        assert app.ledger == [("transfer", 5)]  # written; the handler stopped right after
        with anyio.move_on_after(0.02):  # the client leaves during the charge
            await client.post("/checkout", params={"order": "A1"})
        assert app.ledger[1:] == [("charge", "A1"), ("ship", "A1")]  # finished all the same
        assert (await client.post("/receipt", params={"order": "A1"})).text == "queued"
        for _ in range(500):  # written after the request ended, by the app's task
            if app.ledger[-1] == ("receipt", "A1"):
                break
            await anyio.sleep(0.01)
        else:
            pytest.fail("the receipt was never written")
        with anyio.fail_after(5):
            report = await client.get("/report")
        assert report.status_code == 503
        assert report.text == "503 Service Unavailable: Request timed out"
        assert (await client.get("/export", params={"rows": 2})).text == "2 rows"
        app.ledger.clear()
        with anyio.move_on_after(0.3):  # the client leaves during the second row
            await client.get("/export")
        assert 1 <= len(app.ledger) <= 3  # the export noticed and stopped early


# --- fan-out -----------------------------------------------------------------------------------


async def _publish_until_received(client: TestClient, path: str, ws: Any, text: str) -> None:
    """Publish until the subscriber has it: the page's subscriber goes live after the accept."""
    for _ in range(200):
        assert (await client.post(path, params={"text": text})).text == "sent"
        with anyio.move_on_after(0.05):
            assert await ws.receive_text() == text
            return
    pytest.fail(f"{text!r} never arrived")


@pytest.mark.anyio
async def test_fanout_live(sample_modules: None) -> None:
    app = load("fanout/live.py").app
    async with TestClient(app) as client:
        async with client.websocket_connect("/feed/news") as ws:
            await _publish_until_received(client, "/publish/news", ws, "hello")
        async with client.websocket_connect("/feed_filtered/news") as ws:
            await _publish_until_received(client, "/publish/news", ws, "first")
            await client.post("/publish/news", params={"text": "#hidden"})
            await client.post("/publish/news", params={"text": "shown"})
            assert await ws.receive_text() == "shown"


@pytest.mark.anyio
async def test_fanout_own_lifespan(sample_modules: None) -> None:
    module = load("fanout/own_lifespan.py")
    async with TestClient(module.app) as client:
        assert (await client.get("/")).json() == {"db": True}
    assert module.database.connected is False


@pytest.mark.anyio
async def test_fanout_chat(sample_modules: None) -> None:
    app = load("fanout/chat.py").app
    async with (
        TestClient(app) as client,
        client.websocket_connect("/chat/tea") as alice,
        client.websocket_connect("/lobby?nick=bob") as bob,
    ):
        await alice.send_text("hi all")  # read inside the forward: it comes back to alice
        assert await alice.receive_text() == "hi all"
        assert await bob.receive_json() == {"type": "welcome", "nick": "bob"}
        await bob.send_text("bob here")
        assert await bob.receive_text() == "bob here"


@pytest.mark.anyio
async def test_fanout_sse(sample_modules: None) -> None:
    app = load("fanout/sse_feed.py").app
    async with TestClient(app) as client, anyio.create_task_group() as group:
        received = anyio.Event()

        async def publish() -> None:
            for _ in range(200):
                await client.post("/publish/news", params={"text": "hello"})
                with anyio.move_on_after(0.05):
                    await received.wait()
                    return

        async with client.stream("GET", "/events/news") as response:
            group.start_soon(publish)
            async for line in response.aiter_lines():
                if line:
                    assert line == "data: hello"
                    received.set()
                    break


def test_fanout_redis_sessions(sample_modules: None) -> None:
    from micropie.sessions.redis import RedisSessionBackend

    module = load("fanout/redis_sessions.py")
    assert isinstance(module.app.session_backend, RedisSessionBackend)
    assert module.app.lifespan == module.sessions.lifespan


# --- deployment ----------------------------------------------------------------------------------


def test_deployment_cli_both_backends(sample_modules: None) -> None:
    for backend in ("asyncio", "trio"):
        target = str(SAMPLES / "deployment" / "app.py") + ":app"
        with CliServer.start(target, backend=backend) as server:
            assert httpx.get(server.url).text == "Hello from behind the proxy"


@pytest.mark.anyio
async def test_deployment_embedded(sample_modules: None) -> None:
    module = load("deployment/embed.py")
    async with anyio.create_task_group() as group:
        with anyio.fail_after(10):
            host, port = await group.start(module.main, 0)
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://{host}:{port}/")
        assert response.json()["heartbeats"] >= 1  # the program's own task runs beside
        group.cancel_scope.cancel()


@pytest.mark.anyio
async def test_deployment_proxy_headers(sample_modules: None) -> None:
    app = load("deployment/proxy.py").app
    async with TestClient(app, base_url="http://testserver") as client:  # a plain-http hop
        direct = await client.get("/whoami")
        assert direct.json() == {"client": "127.0.0.1", "scheme": "http"}
        proxied = await client.get(
            "/whoami", headers={"x-forwarded-for": "203.0.113.9", "x-forwarded-proto": "https"}
        )
        assert proxied.json() == {"client": "203.0.113.9", "scheme": "https"}


@pytest.mark.anyio
@pytest.mark.parametrize("prefix_in_path", [True, False], ids=["kept", "stripped"])
async def test_deployment_under_a_prefix(sample_modules: None, prefix_in_path: bool) -> None:
    """Whether the proxy keeps /shop in the path (hypercorn --root-path) or strips it."""
    app = load("deployment/prefix.py").app
    mount = "/shop" if prefix_in_path else ""
    async with TestClient(app, root_path="/shop") as client:
        index = await client.get(f"{mount}/")
        assert index.text == '<a href="/shop/cart">cart</a>'
        cart = await client.get(f"{mount}/cart")
        assert cart.json() == {"items": [], "root_path": "/shop"}
        checkout = await client.get(f"{mount}/checkout")
        assert (checkout.status_code, checkout.headers["location"]) == (302, "/shop/cart")
        async with client.websocket_connect(f"{mount}/updates") as ws:
            assert await ws.receive_text() == "updates for /shop/cart"


@pytest.mark.anyio
async def test_deployment_prefix_sample_without_a_prefix(sample_modules: None) -> None:
    app = load("deployment/prefix.py").app
    async with TestClient(app) as client:
        assert (await client.get("/")).text == '<a href="/cart">cart</a>'
        assert (await client.get("/checkout")).headers["location"] == "/cart"


# --- migration -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_migration_differences(sample_modules: None) -> None:
    app = load("migration/differences.py").app
    async with TestClient(app, raise_app_exceptions=False) as client:
        async with client.websocket_connect("/") as ws:
            assert await ws.receive_text() == "root"
        nothing = await client.get("/nothing")
        assert (nothing.content, nothing.headers["content-length"]) == (b"", "0")
        assert (await client.get("/host")).text == "testserver"
        assert (await client.get("/double/21")).json() == {"n": 42}
        assert (await client.get("/seen")).text == "ok"  # a session exists from here on
        failed = await client.get("/fail")
        assert (failed.status_code, failed.text) == (500, "500 Internal Server Error")
        assert (await client.get("/touched")).json() == {"touched": False}
