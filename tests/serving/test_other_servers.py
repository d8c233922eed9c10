""" "Any ASGI server", tested: uvicorn and granian serve the same app as hypercorn does.

Each server runs tests/support/apps/any_server.py in a subprocess on 127.0.0.1 (one process per
server for the whole module; the tests use their own keys so they cannot see each other's state).
Both servers run the app on asyncio; the clients run on both anyio backends. What the app did
inside the server comes back over HTTP (``/happened/NAME``, see the app's docstring).

The last test pins down what these servers cannot do, as docs/servers.md says: a SIGTERM does
not end an open stream; the server waits for the client to leave.
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Iterator
from uuid import uuid4

import anyio
import httpx
import pytest

from tests.support.other_servers import SERVERS, start_server
from tests.support.servers import CliServer
from tests.support.ws_clients import Closed, ws_connect

pytestmark = pytest.mark.anyio

TARGET = "tests.support.apps.any_server:app"

#: The line each server logs once a SIGTERM has started its shutdown.
SHUTTING_DOWN = {"uvicorn": "Waiting for connections to close", "granian": "Stopping worker-1"}

#: What micropie logs, with one traceback, for each connection to the failing ``/broken``.
BROKEN_HANDLER_LOGGED = "Unhandled exception in WebSocket handler for /broken"

#: The exit status after a graceful SIGTERM: uvicorn re-raises the signal once it has shut down.
STOPPED_BY_SIGTERM = {"uvicorn": -signal.SIGTERM, "granian": 0}


#: For tests that need the ``websockets`` client's low-level controls (any close code, a drop
#: without a close frame): it runs on asyncio only, and the servers do too.
asyncio_client = pytest.mark.parametrize("anyio_backend", ["asyncio"])


@pytest.fixture(scope="module", params=SERVERS)
def server(request: pytest.FixtureRequest) -> Iterator[CliServer]:
    """One server process for the module; it must stop cleanly, with no unexpected traceback."""
    with start_server(request.param, TARGET) as running:
        yield running
        status = running.stop(signal.SIGTERM)
        assert status == STOPPED_BY_SIGTERM[request.param], running.output
        # One traceback per failing /broken handler (logged by micropie), and no other.
        tracebacks = running.output.count("Traceback")
        assert tracebacks == running.output.count(BROKEN_HANDLER_LOGGED), running.output


def port_of(server: CliServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


async def happened(client: httpx.AsyncClient, name: str) -> bool:
    """Whether the app reached moment ``name`` (the app waits up to 5 s for it)."""
    answer = await client.get(f"/happened/{name}")
    assert answer.status_code == 200
    return answer.text == "yes"


async def test_routes_json_upload_and_stream(server: CliServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        home = await client.get("/")
        assert (home.status_code, home.text) == (200, "micropie on asyncio")
        assert home.headers["content-type"] == "text/html; charset=utf-8"
        assert (await client.get("/nowhere")).status_code == 404

        posted = await client.post("/echo", json={"a": [1, 2], "é": None})
        assert posted.json() == {"json": {"a": [1, 2], "é": None}}

        data = os.urandom(300_000)
        uploaded = await client.post(
            "/upload", data={"title": "big"}, files={"doc": ("blob.bin", data)}
        )
        assert uploaded.status_code == 200
        assert uploaded.json() == {
            "title": "big",
            "filename": "blob.bin",
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }

        streamed = await client.get("/count/200")
        assert streamed.text == "".join(f"{i};" for i in range(200))


async def test_documented_websocket_examples_and_a_failing_handler(
    server: CliServer, anyio_backend: str
) -> None:
    async with ws_connect(f"{server.url}/echo", anyio_backend) as ws:
        await ws.send("hello")
        assert await ws.recv() == "Echo: hello"
        await ws.send("again")
        assert await ws.recv() == "Echo: again"
    for path, greeting in [("/greet/Alice", "Hello Alice!"), ("/greet?name=Bob", "Hello Bob!")]:
        async with ws_connect(server.url + path, anyio_backend) as ws:
            assert await ws.recv() == greeting
            with pytest.raises(Closed) as closed:
                await ws.recv()
            assert closed.value.code == 1000
    async with ws_connect(f"{server.url}/broken", anyio_backend) as ws:
        with pytest.raises(Closed) as failed:
            await ws.recv()
        assert (failed.value.code, failed.value.reason) == (1011, "Internal server error")


@pytest.mark.parametrize("route", ["slow", "endless"])
async def test_a_client_that_leaves_cancels_its_handler(server: CliServer, route: str) -> None:
    """A waiting handler is cancelled, a stream's generator closed, soon after the client left."""
    key = f"{route}-{uuid4().hex}"
    ended = f"{key}-cancelled" if route == "slow" else f"{key}-closed"
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        async with await anyio.connect_tcp("127.0.0.1", port_of(server)) as connection:
            await connection.send(f"GET /{route}/{key} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
            assert await happened(client, f"{key}-started")
            if route == "endless":  # leave mid-body
                with anyio.fail_after(5):
                    assert (await connection.receive()).startswith(b"HTTP/1.1 200 ")
        left = anyio.current_time()
        assert await happened(client, ended)
        assert anyio.current_time() - left < 2


async def test_a_websocket_handler_that_is_not_reading_is_cancelled_when_the_client_leaves(
    server: CliServer, anyio_backend: str
) -> None:
    key = f"ws-{uuid4().hex}"
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        async with ws_connect(f"{server.url}/wait/{key}", anyio_backend):
            assert await happened(client, f"{key}-started")
        left = anyio.current_time()
        assert await happened(client, f"{key}-cancelled")
        assert anyio.current_time() - left < 2  # micropie's grace for a handler not reading: 0.5 s


@asyncio_client
async def test_the_client_close_code_reaches_the_app(server: CliServer) -> None:
    """Unlike hypercorn (always 1006), both servers pass the client's own close code on.

    The ``websockets`` client (asyncio) is used alone: it can close with any code, or drop the
    connection with no close frame at all.
    """
    import websockets

    ws_url = server.url.replace("http://", "ws://")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        for code in (1000, 1001, 4000):
            key = f"code-{code}-{uuid4().hex}"
            async with websockets.connect(f"{ws_url}/listen/{key}") as ws:
                await ws.close(code, "bye")
            assert (await client.get(f"/close_code/{key}")).text == str(code)

        key = f"dropped-{uuid4().hex}"
        async with websockets.connect(f"{ws_url}/listen/{key}") as ws:
            ws.transport.abort()  # no close frame: ASGI's "no code" 1005
        assert (await client.get(f"/close_code/{key}")).text == "1005"


#: What a client's open WebSocket sees at SIGTERM: uvicorn closes it with 1012 (service
#: restart); granian drops the connection without a close frame.
CLOSE_AT_SIGTERM = {"uvicorn": 1012, "granian": None}


@asyncio_client
@pytest.mark.parametrize("server_name", SERVERS)
async def test_sigterm_closes_open_websockets_and_runs_the_lifespan_shutdown(
    server_name: str,
) -> None:
    import websockets

    with start_server(server_name, TARGET) as running:
        ws_url = running.url.replace("http://", "ws://")
        async with (
            httpx.AsyncClient(base_url=running.url, timeout=10) as client,
            websockets.connect(f"{ws_url}/wait/sigterm") as ws,
        ):
            assert await happened(client, "sigterm-started")
            running.process.send_signal(signal.SIGTERM)
            with anyio.fail_after(5), pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
        received = closed.value.rcvd
        assert (received.code if received else None) == CLOSE_AT_SIGTERM[server_name]
        assert running.wait() == STOPPED_BY_SIGTERM[server_name], running.output
        assert "lifespan shutdown ran" in running.output
        if server_name == "uvicorn":  # granian stops its loop before micropie's 0.5 s grace
            assert "WebSocket handler sigterm cancelled" in running.output


@pytest.mark.parametrize("server_name", SERVERS)
def test_shutdown_waits_for_an_open_stream(server_name: str) -> None:
    """SIGTERM does not end a stream: it goes on until the client leaves, then the server exits.

    hypercorn (through micropie's serving) ends streams at once; these servers cannot tell the
    app that a shutdown began, so an endless stream holds the shutdown up (docs/servers.md).
    """
    with start_server(server_name, TARGET) as running:
        with httpx.stream("GET", f"{running.url}/endless/shutdown", timeout=5) as response:
            chunks = response.iter_raw()
            assert next(chunks).startswith(b"tick")
            running.process.send_signal(signal.SIGTERM)
            running.wait_for_output(SHUTTING_DOWN[server_name])
            received = b""
            for _ in range(100):  # about 1 s of ticks after the shutdown began
                received += next(chunks)
                if received.count(b"tick") >= 20:
                    break
            assert received.count(b"tick") >= 20
            assert running.process.poll() is None, running.output
        # The client left: now the server finishes its shutdown.
        assert running.wait() == STOPPED_BY_SIGTERM[server_name], running.output
        assert "lifespan shutdown ran" in running.output
