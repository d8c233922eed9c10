"""WebSocket clients that misbehave slowly or leave: real hypercorn on 127.0.0.1, both workers.

* A client that never reads while the handler floods it with 1 MiB messages: the handler's
  sends block (backpressure all the way down to the socket), the memory the server holds stays
  bounded, and the handler ends soon after the client drops the connection.
* A client that closes cleanly while the handler waits in ``receive_text()``: the handler sees
  ``ConnectionClosed``, the session is saved under the id of the accept's cookie, nothing is
  logged as an error.
"""

from __future__ import annotations

import logging
import tracemalloc
from http.cookies import SimpleCookie
from typing import Any

import anyio
import anyio.abc
import pytest

from micropie import App, ConnectionClosed, WebSocket
from micropie.sessions import InMemorySessionBackend
from micropie.websocket import SENDS_BETWEEN_CHECKPOINTS
from tests.support.servers import running_server
from tests.support.ws_clients import open_raw_websocket, ws_connect

pytestmark = pytest.mark.anyio

MIB = 2**20

#: Completed 1 MiB sends allowed while the client does not read: what the kernel's socket
#: buffers and hypercorn's write buffer can hold. Without backpressure this passes in a blink.
MAX_SENDS_WHILE_STALLED = 64

#: Seconds without a completed send after which the handler counts as blocked in ``send``.
#: Unthrottled, the handler completes a 1 MiB send every millisecond or so: more than
#: 1 GiB (``1024`` sends) would have gone out in this window.
STALLED_FOR = 0.5

#: Completed sends after which the flood handler stops by itself (see ``FloodApp``).
RUNAWAY_SENDS = 2 * MAX_SENDS_WHILE_STALLED


class FloodApp(App):
    """Sends 1 MiB messages as fast as the connection takes them, and tells when it ends.

    A runaway guard keeps a broken server from hanging the test run: past ``RUNAWAY_SENDS``
    completed sends the handler gives up (``runaway``). That happens when nothing blocks the
    sends, or when sends keep returning after the client left without ever yielding (then the
    event loop is starved, no timeout can fire, and only the handler itself can stop).
    """

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0
        self.last_progress_at = 0.0
        self.in_send = False
        self.runaway = False
        self.peak = 0
        self.started = anyio.Event()
        self.ended = anyio.Event()
        self.ended_at = 0.0
        self.error: BaseException | None = None

    async def ws_flood(self, ws: WebSocket) -> None:
        await ws.accept()
        self.last_progress_at = anyio.current_time()
        self.started.set()
        try:
            while self.sent < RUNAWAY_SENDS:
                self.in_send = True
                await ws.send_bytes(b"x" * MIB)
                self.in_send = False
                self.sent += 1
                self.last_progress_at = anyio.current_time()
            self.runaway = True
        except BaseException as error:
            self.error = error
            raise
        finally:
            self.ended_at = anyio.current_time()
            self.ended.set()


async def wait_until_sends_stall(app: FloodApp) -> None:
    """Poll (bounded) until no send has completed for ``STALLED_FOR`` s while one is pending.

    On trio not even the first 1 MiB send completes (``send_all`` wants it all in the kernel's
    buffers); on asyncio a few do (hypercorn's transport buffers up to its high-water mark).

    Fails as soon as more than ``MAX_SENDS_WHILE_STALLED`` sends completed: then nothing
    blocks them and the server buffers what the client does not read.
    """
    with anyio.fail_after(STALLED_FOR + 4):
        while True:
            assert app.sent < MAX_SENDS_WHILE_STALLED, f"{app.sent} MiB sent, none read"
            now = anyio.current_time()
            if app.in_send and now - app.last_progress_at >= STALLED_FOR:
                return
            await anyio.sleep(0.05)


async def test_sends_to_a_client_that_never_reads_block_with_bounded_memory(
    anyio_backend: str,
) -> None:
    app = FloodApp()
    tracing_already = tracemalloc.is_tracing()
    if not tracing_already:
        tracemalloc.start()
    try:
        with anyio.fail_after(8):  # the whole test, server shutdown included
            await flood_and_measure(app)
    finally:
        if not tracing_already:
            tracemalloc.stop()
    assert app.peak < 64 * MIB, f"server held {app.peak / MIB:.0f} MiB"


async def flood_and_measure(app: FloodApp) -> None:
    """Flood a client that never reads until sends stall; record the memory peak in ``app``."""
    async with running_server(app) as url:
        port = int(url.rsplit(":", 1)[1])
        tracemalloc.reset_peak()
        baseline, _ = tracemalloc.get_traced_memory()
        stream = await open_raw_websocket(port, "/flood")
        try:
            with anyio.fail_after(2):
                await app.started.wait()
            await wait_until_sends_stall(app)
            _, peak = tracemalloc.get_traced_memory()
            app.peak = peak - baseline
            assert not app.ended.is_set()
        finally:
            await stream.aclose()
        with anyio.fail_after(2):
            await app.ended.wait()  # (how it ends: the test below)


async def test_a_flooding_handler_ends_soon_after_the_client_drops_the_connection(
    anyio_backend: str, request: pytest.FixtureRequest
) -> None:
    # After the client left, hypercorn returns from every ``websocket.send`` at once without
    # yielding (it drops sends on a closed stream). ``WebSocket._send_frame`` therefore yields
    # every few sends in a row, so a push-only loop cannot spin: the pump reads the
    # disconnect and the next send raises ``ConnectionClosed``. On trio the send blocked in
    # hypercorn's shielded ``send_all`` cannot be cancelled, but fails as soon as the peer
    # resets the connection. A few sends may still "complete" (dropped by the server) while
    # the reset travels through the server; a spinning loop would reach the runaway guard.
    app = FloodApp()
    with anyio.fail_after(8):  # the whole test, server shutdown included
        closed_at, sent_while_stalled = await flood_then_drop(app)
    assert not app.runaway, f"{app.sent - sent_while_stalled} sends completed after it left"
    assert app.ended_at - closed_at < 1.0
    # The send stalled when the client left completes too; it let the event loop run while it
    # waited, so it is not one of the sends in a row that lead to a checkpoint.
    assert app.sent - sent_while_stalled <= 1 + 2 * SENDS_BETWEEN_CHECKPOINTS
    assert isinstance(app.error, ConnectionClosed), app.error


async def flood_then_drop(app: FloodApp) -> tuple[float, int]:
    """Flood until sends stall, reset the connection; return (when, sends completed by then)."""
    async with running_server(app) as url:
        port = int(url.rsplit(":", 1)[1])
        stream = await open_raw_websocket(port, "/flood")
        try:
            with anyio.fail_after(2):
                await app.started.wait()
            await wait_until_sends_stall(app)
            sent_while_stalled = app.sent
        finally:
            # Abrupt: unread data in the receive buffer makes the kernel send a RST.
            closed_at = anyio.current_time()
            await stream.aclose()
        with anyio.fail_after(1):
            await app.ended.wait()
    return closed_at, sent_while_stalled


class SignallingBackend(InMemorySessionBackend):
    """In-memory sessions that tell when one was saved."""

    def __init__(self) -> None:
        super().__init__()
        self.saved = anyio.Event()

    async def save(self, session_id: str, data: dict[str, Any], timeout: int) -> None:  # noqa: ASYNC109
        await super().save(session_id, data, timeout)
        self.saved.set()


class WaitingApp(App):
    """Marks the session, then waits for a message that never comes."""

    def __init__(self, backend: InMemorySessionBackend) -> None:
        super().__init__(backend)
        self.waiting = anyio.Event()
        self.ended = anyio.Event()
        self.error: BaseException | None = None
        self.session_id: str | None = None

    async def ws_wait(self, ws: WebSocket) -> None:
        await ws.accept()
        self.session_id = ws.session_id
        self.request.session["seen"] = True
        self.waiting.set()
        try:
            await ws.receive_text()
        except BaseException as error:
            self.error = error
            raise
        finally:
            self.ended.set()


def handshake_cookie(connection: Any, backend: str) -> str:
    """The ``session_id`` the server set in the handshake response (either client library)."""
    if backend == "trio":
        headers = [(k.decode(), v.decode()) for k, v in connection.handshake_headers]
    else:
        headers = list(connection.response.headers.raw_items())
    cookie: SimpleCookie = SimpleCookie()
    for name, value in headers:
        if name.lower() == "set-cookie":
            cookie.load(value)
    assert "session_id" in cookie, headers
    return cookie["session_id"].value


async def test_a_clean_close_while_waiting_in_receive_saves_the_session(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="micropie")
    backend = SignallingBackend()
    app = WaitingApp(backend)
    async with running_server(app) as url:
        with anyio.fail_after(5):
            async with ws_connect(f"{url}/wait", anyio_backend) as client:
                session_id = handshake_cookie(client._connection, anyio_backend)
                await app.waiting.wait()
            # The client sent close 1000 and left; the server saves after the handler.
            await app.ended.wait()
            await backend.saved.wait()
    assert isinstance(app.error, ConnectionClosed), app.error
    assert app.session_id == session_id
    assert backend.sessions[session_id] == {"seen": True}
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
