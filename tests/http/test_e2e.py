"""HTTP end to end: a real hypercorn server (asyncio and trio workers) and real clients.

``running_server`` serves on the test's backend, so each test runs once on hypercorn's asyncio
worker and once on its trio worker.
"""

from __future__ import annotations

import anyio
import httpx
import pytest

from micropie import App
from tests.support.servers import running_server

pytestmark = pytest.mark.anyio


class Shop(App):
    def __init__(self) -> None:
        super().__init__(session_cookie_secure=False, body_timeout=0.3)
        self.slow_started = anyio.Event()
        self.slow_cancelled = anyio.Event()

    async def index(self) -> str:
        return "home"

    async def greet(self, name: str, greeting: str = "Hello") -> str:
        return f"{greeting}, {name}!"

    async def add(self, a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    async def echo(self) -> dict[str, object]:
        return {"json": self.request.json(), "form": self.request.body_params}

    async def visit(self) -> str:
        visits = self.request.session.get("visits", 0) + 1
        self.request.session["visits"] = visits
        return str(visits)

    async def slow(self) -> str:
        self.slow_started.set()
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            self.slow_cancelled.set()
            raise
        return "too late"


async def test_routes_bodies_and_sessions_over_the_wire() -> None:
    app = Shop()
    async with running_server(app) as url, httpx.AsyncClient(base_url=url) as client:
        home = await client.get("/")
        assert (home.status_code, home.text) == (200, "home")
        assert home.headers["content-length"] == "4"
        assert home.headers["content-type"] == "text/html; charset=utf-8"

        assert (await client.get("/greet/Ada", params={"greeting": "Hi"})).text == "Hi, Ada!"
        assert (await client.get("/add/2/3")).json() == {"sum": 5}
        assert (await client.get("/add/2/x")).status_code == 400

        posted = await client.post("/echo", json={"a": [1, 2]})
        assert posted.json() == {"json": {"a": [1, 2]}, "form": {}}
        form = await client.post("/echo", data={"k": "v"})
        assert form.json() == {"json": {}, "form": {"k": ["v"]}}

        assert (await client.get("/visit")).text == "1"
        assert (await client.get("/visit")).text == "2"  # the cookie came back
        assert (await client.get("/_private")).status_code == 404


async def test_a_client_that_drops_its_connection_cancels_the_handler() -> None:
    app = Shop()
    async with running_server(app) as url:
        port = int(url.rsplit(":", 1)[1])
        stream = await anyio.connect_tcp("127.0.0.1", port)
        await stream.send(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
        with anyio.fail_after(5):
            await app.slow_started.wait()
        await stream.aclose()  # the client leaves without waiting for an answer
        with anyio.fail_after(1.0):
            await app.slow_cancelled.wait()
        async with httpx.AsyncClient(base_url=url) as client:  # and the server is still fine
            assert (await client.get("/")).text == "home"


async def test_a_stalled_body_gets_408_and_an_oversized_one_413() -> None:
    app = Shop()
    app.max_body_size = 10
    async with running_server(app) as url:
        port = int(url.rsplit(":", 1)[1])
        stream = await anyio.connect_tcp("127.0.0.1", port)
        async with stream:
            await stream.send(
                b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 8\r\n\r\nabc"  # five bytes never come
            )
            answer = b""
            with anyio.fail_after(5):
                while not answer.endswith(b"body"):  # the head and body may come apart
                    answer += await stream.receive()
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert answer.endswith(b"408 Request Timeout: Failed to receive body")

        async with httpx.AsyncClient(base_url=url) as client:
            too_big = await client.post("/echo", content=b"x" * 11)
            assert too_big.status_code == 413
            assert too_big.text == "413 Payload Too Large"
            assert (await client.post("/echo", content=b"k=vvvvvvvv")).status_code == 200
