"""An app mounted under a prefix (``root_path``) routes on the path below it.

Unit tests of the rule, then the app behind hypercorn's ``root_path`` setting on both of its
workers, with real HTTP and WebSocket clients: what ``hypercorn --root-path /api`` does.
"""

from __future__ import annotations

import httpx
import pytest

from micropie import App, WebSocket, url_path
from micropie.routing.mount import route_path
from tests.support.servers import running_server
from tests.support.ws_clients import ws_connect


@pytest.mark.parametrize(
    ("path", "root_path", "routed"),
    [
        ("/api/greet/alice", "/api", "/greet/alice"),  # hypercorn, uvicorn: prefix kept
        ("/greet/alice", "/api", "/greet/alice"),  # a proxy that strips the prefix
        ("/api", "/api", "/"),
        ("/api/", "/api", "/"),
        ("/apiary/x", "/api", "/apiary/x"),  # not below /api: a segment must match whole
        ("/api/x", "/api/", "/x"),
        ("/x", "", "/x"),
    ],
)
def test_route_path_follows_starlettes_rule(path: str, root_path: str, routed: str) -> None:
    assert route_path({"path": path, "root_path": root_path}) == routed


def test_route_path_without_root_path_in_the_scope() -> None:
    assert route_path({"path": "/a"}) == "/a"


class Scope:
    def __init__(self, root_path: str) -> None:
        self.scope = {"root_path": root_path}


@pytest.mark.parametrize(
    ("root_path", "path", "url"),
    [
        ("/api", "/greet/alice", "/api/greet/alice"),
        ("", "/x", "/x"),
        ("/api/", "x?y=1", "/api/x?y=1"),
    ],
)
def test_url_path_puts_the_prefix_back(root_path: str, path: str, url: str) -> None:
    assert url_path(Scope(root_path), path) == url


class Greeter(App):
    async def index(self) -> str:
        return f"index at {url_path(self.request, '/')}"

    async def greet(self, name: str) -> str:
        return f"hello {name}"

    async def away(self) -> tuple[int, str, list[tuple[str, str]]]:
        return self._redirect(url_path(self.request, "/greet/bob"))

    async def ws_echo(self, ws: WebSocket, prefix: str = "") -> None:
        await ws.accept()
        text = await ws.receive_text()
        await ws.send_text(f"{prefix}{text} via {url_path(self.request, '/echo')}")


@pytest.mark.anyio
async def test_behind_hypercorns_root_path_every_route_answers(anyio_backend: str) -> None:
    app = Greeter(session_cookie_secure=False)
    async with (
        running_server(app, root_path="/api") as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        greeting = await client.get("/api/greet/alice")
        assert (greeting.status_code, greeting.text) == (200, "hello alice")
        index = await client.get("/api/")
        assert index.text == "index at /api/"
        away = await client.get("/api/away")
        assert (away.status_code, away.headers["location"]) == (302, "/api/greet/bob")
        assert (await client.get("/api/greet/bob")).text == "hello bob"
        # a proxy that strips the prefix: the path alone still routes
        assert (await client.get("/greet/carol")).text == "hello carol"
        assert (await client.get("/apiary")).status_code == 404
        async with ws_connect(f"{url}/api/echo/>", anyio_backend) as ws:
            await ws.send("hi")
            assert await ws.recv() == ">hi via /api/echo"


@pytest.mark.anyio
async def test_without_root_path_nothing_changes(anyio_backend: str) -> None:
    app = Greeter(session_cookie_secure=False)
    async with running_server(app) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/greet/alice")).text == "hello alice"
        assert (await client.get("/api/greet/alice")).status_code == 404
        assert (await client.get("/away")).headers["location"] == "/greet/bob"
        async with ws_connect(f"{url}/echo", anyio_backend) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi via /echo"
