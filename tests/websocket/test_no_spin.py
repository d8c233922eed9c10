"""A WebSocket never spins the event loop, whatever the server's ``receive()`` does.

The server here is a test double whose ``receive()`` answers at once, without a checkpoint
(as ``unittest.mock.AsyncMock`` does, which MicroPie's own tests use), always with the same
message. A framework that calls it in a loop without awaiting anything else freezes the event
loop; so after the app's close nothing may call ``receive()`` again, and a message type the
server must not send (a second ``websocket.connect``) ends the connection with 1011.

The double answers at once for its first ``INSTANT_ANSWERS`` calls only, then blocks, so that a
regression shows up as a failed assertion on the number of calls (or a ``fail_after``), not as
a test run that never ends. Every test runs with and without the app's lifespan (with it, a
pump starts only for a handler that stops reading; without it, it starts at once) and on both
backends.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from micropie import App, ConnectionClosed, WebSocket
from micropie.websocket import HANDLER_GRACE_AFTER_CLOSE
from tests.support.drive import lifespan

pytestmark = pytest.mark.anyio

Message = dict[str, Any]

#: Calls the double answers at once before it blocks (a spinning framework would use them all).
INSTANT_ANSWERS = 1000
#: The longest the event loop may go without running another task.
MAX_STALL = 0.5
DEADLINE = 5.0


@pytest.fixture(params=["lifespan", "no lifespan"])
def with_lifespan(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "lifespan")


class InstantServer:
    """A ``receive()`` that returns ``answer`` at once, and a ``send()`` that records."""

    def __init__(self, answer: Message) -> None:
        self.answer = answer
        self.receive_calls = 0
        self.sent: list[Message] = []
        self.receives_after_close = 0

    async def receive(self) -> Message:
        self.receive_calls += 1
        if any(message["type"] == "websocket.close" for message in self.sent):
            self.receives_after_close += 1
        if self.receive_calls > INSTANT_ANSWERS:
            await anyio.sleep_forever()
        return dict(self.answer)

    async def send(self, message: Message) -> None:
        self.sent.append(message)


class Ticker:
    """A concurrent task that measures the longest stretch the event loop did not run it."""

    def __init__(self) -> None:
        self.longest_gap = 0.0

    async def run(self) -> None:
        last = anyio.current_time()
        while True:
            await anyio.sleep(0.005)
            now = anyio.current_time()
            self.longest_gap = max(self.longest_gap, now - last)
            last = now


async def serve(app: App, path: str, server: InstantServer, with_lifespan: bool) -> Ticker:
    """Run one connection of ``app`` against ``server`` with a ticker beside it; return the
    ticker once the app call has returned (within ``DEADLINE``)."""
    ticker = Ticker()
    scope = {"type": "websocket", "path": path, "headers": [], "query_string": b""}
    with anyio.fail_after(DEADLINE):
        async with lifespan(app, running=with_lifespan), anyio.create_task_group() as group:
            group.start_soon(ticker.run)
            await app(scope, server.receive, server.send)
            group.cancel_scope.cancel()
    assert ticker.longest_gap < MAX_STALL
    return ticker


CONNECT: Message = {"type": "websocket.connect"}


async def test_nothing_is_received_after_the_handler_closed(with_lifespan: bool) -> None:
    """MicroPie's own tests' shape: accept, send, close, against an instant ``connect``."""

    class Greets(App):
        async def ws_greet(self, ws: WebSocket) -> None:
            await ws.accept()
            await ws.send_text("hello")
            await ws.close()
            await anyio.sleep(0.2)  # a pump (no lifespan) or a sweep has time to run

    server = InstantServer(CONNECT)
    await serve(Greets(session_cookie_secure=False), "/greet", server, with_lifespan)
    assert [m["type"] for m in server.sent] == [
        "websocket.accept",
        "websocket.send",
        "websocket.close",
    ]
    assert server.receives_after_close == 0
    assert server.receive_calls <= 2  # the handshake, and perhaps one pump read before close


async def test_an_unexpected_message_type_ends_a_reading_handler_with_1011(
    with_lifespan: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caught: list[ConnectionClosed] = []

    class Reads(App):
        async def ws_read(self, ws: WebSocket) -> None:
            await ws.accept()
            try:
                await ws.receive_text()
            except ConnectionClosed as exc:
                caught.append(exc)
            try:
                await ws.receive_text()  # over: raises at once, no receive() on the server
            except ConnectionClosed as exc:
                caught.append(exc)

    server = InstantServer(CONNECT)
    with caplog.at_level(logging.WARNING, "micropie"):
        await serve(Reads(session_cookie_secure=False), "/read", server, with_lifespan)
    assert [(exc.code, exc.reason) for exc in caught] == [(1011, "Internal server error")] * 2
    assert server.sent[1:] == [
        {"type": "websocket.close", "code": 1011, "reason": "Internal server error"}
    ]
    assert server.receive_calls == 2  # the handshake and the one unexpected message
    assert server.receives_after_close == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'websocket.connect'" in warnings[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_unexpected_message_type_ends_a_push_only_handler(
    with_lifespan: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that never reads gets a pump (at once, or after one sweep); the pump's first
    read is the bad message, so the pushes stop with ``ConnectionClosed(1011)``."""
    pushed: list[int] = []
    caught: list[ConnectionClosed] = []

    class Pushes(App):
        async def ws_push(self, ws: WebSocket) -> None:
            await ws.accept()
            try:
                for count in range(200):  # 2 s at most: the pump ends it long before
                    await ws.send_text("tick")
                    pushed.append(count)
                    await anyio.sleep(0.01)
            except ConnectionClosed as exc:
                caught.append(exc)

    server = InstantServer(CONNECT)
    with caplog.at_level(logging.WARNING, "micropie"):
        await serve(Pushes(session_cookie_secure=False), "/push", server, with_lifespan)
    assert [(exc.code, exc.reason) for exc in caught] == [(1011, "Internal server error")]
    assert len(pushed) < 50
    assert server.sent[-1] == {
        "type": "websocket.close",
        "code": 1011,
        "reason": "Internal server error",
    }
    assert server.receive_calls == 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_handler_that_ignores_the_end_is_cancelled_after_the_grace(
    with_lifespan: bool,
) -> None:
    outcome: list[str] = []

    class Ignores(App):
        async def ws_ignore(self, ws: WebSocket) -> None:
            await ws.accept()
            try:
                await ws.receive_text()
            except ConnectionClosed:
                pass
            try:
                await anyio.sleep(DEADLINE)
            except anyio.get_cancelled_exc_class():
                outcome.append("cancelled")
                raise

    server = InstantServer(CONNECT)
    started = anyio.current_time()
    await serve(Ignores(session_cookie_secure=False), "/ignore", server, with_lifespan)
    assert outcome == ["cancelled"]
    assert anyio.current_time() - started < HANDLER_GRACE_AFTER_CLOSE + 1
    assert server.receive_calls == 2


@pytest.mark.parametrize("answer", [{"type": "websocket.receive", "text": "x"}, {"type": "x"}])
async def test_a_handshake_that_does_not_start_with_connect_is_refused(
    with_lifespan: bool, answer: Message, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    class Never(App):
        async def ws_index(self, ws: WebSocket) -> None:
            ran.append("handler")

    server = InstantServer(answer)
    with caplog.at_level(logging.WARNING, "micropie"):
        await serve(Never(session_cookie_secure=False), "/", server, with_lifespan)
    assert ran == []
    assert server.sent == [
        {"type": "websocket.close", "code": 1011, "reason": "Internal server error"}
    ]
    assert server.receive_calls == 1
    assert any("instead of websocket.connect" in r.getMessage() for r in caplog.records)
