"""WebSockets end to end: real hypercorn on 127.0.0.1, real clients, both workers.

``running_server`` (tests/servers.py) serves under the current anyio backend, so the asyncio
run uses hypercorn's asyncio worker and the ``websockets`` client, and the trio run uses the trio
worker and trio-websocket. hypercorn reports every client close to the app as 1006 and turns a
close before accept into an HTTP 403; the tests assert only what a client can really see.
"""

from __future__ import annotations

import logging
import socket
import struct
from typing import Any

import anyio
import anyio.abc
import pytest

from examples.websockets.app import MyApp
from micropie import App, ConnectionClosed, WebSocket, WebSocketMiddleware
from micropie.websocket import HANDLER_GRACE_AFTER_CLOSE
from tests.support.servers import running_server
from tests.support.ws_clients import Closed, ws_connect

pytestmark = pytest.mark.anyio


class DocumentedExamples(MyApp):
    """MicroPie's documented examples (examples/websockets/app.py), plus failure paths."""

    async def ws_quiet(self, ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text("bye")

    async def ws_broken(self, ws: WebSocket) -> None:
        await ws.accept()
        raise RuntimeError("secret detail")


async def test_documented_examples_work_as_written(anyio_backend: str) -> None:
    from examples.websockets.app import app  # MicroPie's documented examples, runnable

    async with running_server(app) as url:
        async with ws_connect(f"{url}/echo", anyio_backend) as ws:
            await ws.send("hello")
            assert await ws.recv() == "Echo: hello"
            await ws.send("again")
            assert await ws.recv() == "Echo: again"
        for path, greeting in [("/greet/Alice", "Hello Alice!"), ("/greet?name=Bob", "Hello Bob!")]:
            async with ws_connect(url + path, anyio_backend) as ws:
                assert await ws.recv() == greeting
                with pytest.raises(Closed) as closed:
                    await ws.recv()
                assert closed.value.code == 1000


async def test_close_codes_for_returning_and_failing_handlers(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_server(DocumentedExamples()) as url:
        async with ws_connect(f"{url}/quiet", anyio_backend) as ws:
            assert await ws.recv() == "bye"
            with pytest.raises(Closed) as closed:
                await ws.recv()
            assert closed.value.code == 1000  # hypercorn alone would send 1011
        async with ws_connect(f"{url}/broken", anyio_backend) as ws:
            with pytest.raises(Closed) as closed:
                await ws.recv()
            assert (closed.value.code, closed.value.reason) == (1011, "Internal server error")
    assert any("secret detail" in r.getMessage() or r.exc_info for r in caplog.records)


class CloseCodes(App):
    async def ws_code(self, ws: WebSocket, code: str) -> None:
        """Try to close with ``code``; report a refusal and close with 4000 instead."""
        await ws.accept()
        try:
            await ws.close(int(code))
        except ValueError as exc:
            await ws.send_text(f"ValueError: {exc}")
            await ws.close(4000, "instead")

    async def ws_uncaught(self, ws: WebSocket) -> None:
        await ws.accept()
        await ws.close(5000)


async def test_an_invalid_close_code_never_reaches_the_client(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_server(CloseCodes()) as url:
        for code in ["999", "1005", "1006", "1015", "2999", "5000"]:
            async with ws_connect(f"{url}/code/{code}", anyio_backend) as ws:
                assert str(await ws.recv()).startswith(
                    f"ValueError: Invalid WebSocket close code {code}"
                )
                with pytest.raises(Closed) as closed:
                    await ws.recv()
                assert (closed.value.code, closed.value.reason) == (4000, "instead")
        # 1014 (Bad Gateway, registered after RFC 6455) is valid, and browsers and websockets
        # accept it; wsproto, under trio-websocket, still fails the connection on it.
        valid = ["1000", "1013", "3000", "4999"] + (["1014"] if anyio_backend == "asyncio" else [])
        for code in valid:
            async with ws_connect(f"{url}/code/{code}", anyio_backend) as ws:
                with pytest.raises(Closed) as closed:
                    await ws.recv()
                assert closed.value.code == int(code)
        async with ws_connect(f"{url}/uncaught", anyio_backend) as ws:
            with pytest.raises(Closed) as closed:
                await ws.recv()
            assert (closed.value.code, closed.value.reason) == (1011, "Internal server error")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1  # the uncaught ValueError, once
    assert isinstance(errors[0].exc_info and errors[0].exc_info[1], ValueError)


async def test_refusals_are_rejected_handshakes_and_the_server_keeps_serving(
    anyio_backend: str,
) -> None:
    class Gate(WebSocketMiddleware):
        async def before_websocket(self, request: Any) -> dict[str, Any] | None:
            return {"reason": "no"} if request.query("token") != "ok" else None

        async def after_websocket(self, request: Any) -> None:
            pass

    app = DocumentedExamples()
    app.ws_middlewares.append(Gate())
    async with running_server(app) as url:
        for path in ["/nowhere?token=ok", "/echo"]:
            stream, response = await _handshake(url, path)
            await stream.aclose()
            assert response.startswith(b"HTTP/1.1 403"), response
        async with ws_connect(f"{url}/echo?token=ok", anyio_backend) as ws:
            await ws.send("still here")
            assert await ws.recv() == "Echo: still here"


async def test_oversized_message_closes_1009_and_spares_other_connections(
    anyio_backend: str,
) -> None:
    app = DocumentedExamples()
    app.ws_max_message_size = 1024  # type: ignore[attr-defined]
    async with (
        running_server(app) as url,
        ws_connect(f"{url}/echo", anyio_backend) as other,
        ws_connect(f"{url}/echo", anyio_backend) as ws,
    ):
        await ws.send("x" * 1024)
        assert await ws.recv() == "Echo: " + "x" * 1024
        await ws.send("x" * 1025)
        with pytest.raises(Closed) as closed:
            await ws.recv()
        assert (closed.value.code, closed.value.reason) == (1009, "Message too big")
        await other.send("fine")
        assert await other.recv() == "Echo: fine"


async def _handshake(url: str, path: str) -> tuple[anyio.abc.SocketStream, bytes]:
    """Send a WebSocket upgrade request over plain TCP; return the stream and the response head.

    Used where a client library would get in the way: reading a refusal's HTTP status (and
    trio-websocket 0.12 leaks its socket on a rejected handshake) and resetting the connection.
    """
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await anyio.connect_tcp(host, int(port))
    await stream.send(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    response = b""
    with anyio.fail_after(5):
        while b"\r\n\r\n" not in response:
            response += await stream.receive()
    return stream, response


async def test_client_reset_ends_a_pushing_handler_within_a_second(anyio_backend: str) -> None:
    pushed = anyio.Event()
    ended = anyio.Event()
    outcome: list[str] = []

    class Track(WebSocketMiddleware):
        async def before_websocket(self, request: Any) -> None:
            pass

        async def after_websocket(self, request: Any) -> None:
            ended.set()

    class Pusher(App):
        async def ws_push(self, ws: WebSocket) -> None:
            await ws.accept()
            sent = 0
            try:
                while True:
                    await ws.send_text("tick")
                    sent += 1
                    if sent == 3:
                        pushed.set()
                    await anyio.sleep(0.01)
            except ConnectionClosed:
                outcome.append("ConnectionClosed")
            except anyio.get_cancelled_exc_class():
                outcome.append("cancelled")
                raise

    app = Pusher()
    app.ws_middlewares.append(Track())
    async with running_server(app) as url:
        stream, response = await _handshake(url, "/push")
        assert response.startswith(b"HTTP/1.1 101"), response
        with anyio.fail_after(5):
            await pushed.wait()
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()  # RST
        reset_at = anyio.current_time()
        with anyio.fail_after(1):
            await ended.wait()
        assert anyio.current_time() - reset_at < 1
    assert len(outcome) == 1


async def test_server_shutdown_closes_open_connections_with_1001(anyio_backend: str) -> None:
    connected = anyio.Event()
    codes: list[int | None] = []

    async def hold_connection(url: str) -> None:
        async with ws_connect(f"{url}/echo", anyio_backend) as ws:
            await ws.send("hi")
            await ws.recv()
            connected.set()
            with pytest.raises(Closed) as closed:
                await ws.recv()
            codes.append(closed.value.code)

    with anyio.fail_after(10):
        # The client lives in the outer task group, so it outlasts the server's block.
        async with (
            anyio.create_task_group() as clients,
            running_server(DocumentedExamples(), graceful_timeout=0.2) as url,
        ):
            clients.start_soon(hold_connection, url)
            await connected.wait()
    assert codes == [1001]


class Lingering(App):
    """A handler that only sleeps and one that only pushes: both outlive a shutdown unless
    the framework ends them."""

    def __init__(self) -> None:
        super().__init__()
        self.events: dict[str, tuple[str, float]] = {}

    async def ws_sleep(self, ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text("ready")
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            self.events["sleep"] = ("cancelled", anyio.current_time())
            raise

    async def ws_push(self, ws: WebSocket) -> None:
        await ws.accept()
        try:
            for _ in range(3000):  # 30 s at most
                await ws.send_text("tick")
                await anyio.sleep(0.01)
        except ConnectionClosed as exc:
            self.events["push"] = (f"ConnectionClosed {exc.code}", anyio.current_time())
            raise


async def test_shutdown_sends_1001_then_cancels_a_sleeping_and_a_pushing_handler(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``begin_shutdown`` (``app.serve()`` calls it when its scope is cancelled): 1001 at once,
    the sleeping handler cancelled ``HANDLER_GRACE_AFTER_CLOSE`` later, the push loop ended by
    ``ConnectionClosed``; all well before hypercorn's own ``graceful_timeout``; no ERROR log."""
    app = Lingering()
    ready = [anyio.Event(), anyio.Event()]
    codes: dict[str, int | None] = {}

    async def hold(url: str, path: str, ready: anyio.Event) -> None:
        async with ws_connect(f"{url}/{path}", anyio_backend) as ws:
            await ws.recv()
            ready.set()
            for _ in range(5000):  # the pushes, then the close
                try:
                    await ws.recv()
                except Closed as closed:
                    codes[path] = closed.code
                    break

    with anyio.fail_after(10):
        async with anyio.create_task_group() as clients:
            async with running_server(app, graceful_timeout=5) as url:
                clients.start_soon(hold, url, "sleep", ready[0])
                clients.start_soon(hold, url, "push", ready[1])
                for event in ready:
                    await event.wait()
                began = anyio.current_time()
            stopped = anyio.current_time()
    assert codes == {"sleep": 1001, "push": 1001}
    outcome, cancelled_at = app.events["sleep"]
    assert outcome == "cancelled"
    assert HANDLER_GRACE_AFTER_CLOSE - 0.05 <= cancelled_at - began < HANDLER_GRACE_AFTER_CLOSE + 1
    outcome, ended_at = app.events["push"]
    assert outcome == "ConnectionClosed 1001"
    assert ended_at - began < HANDLER_GRACE_AFTER_CLOSE
    assert stopped - began < 3  # not hypercorn's 5 s graceful timeout
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
