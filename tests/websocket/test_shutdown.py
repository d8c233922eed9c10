"""Graceful shutdown of WebSockets in-process: close 1001 at once, the handler cancelled
``HANDLER_GRACE_AFTER_CLOSE`` later, whatever it is doing; nothing logged as an error.

``app.begin_shutdown()`` is what ``app.serve()`` and ``python -m micropie`` call when a shutdown
starts (tests/test_websocket_e2e.py checks the same on a real hypercorn). The client here answers
the 1001 the way a real one does: with its own close, which the server reports as
``websocket.disconnect``. Both backends; the app's lifespan runs (shutdown reaches connections
through it).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import anyio
import pytest

from micropie import App, ConnectionClosed, WebSocket
from micropie.websocket import HANDLER_GRACE_AFTER_CLOSE
from tests.support.drive import lifespan

pytestmark = pytest.mark.anyio

Message = dict[str, Any]
DEADLINE = 5.0
GOING_AWAY: Message = {"type": "websocket.close", "code": 1001, "reason": "Going away"}
#: "At once": well before the grace after which a handler would be cancelled instead.
AT_ONCE = HANDLER_GRACE_AFTER_CLOSE / 2


class Lingering(App):
    """Handlers that would outlive a shutdown if nothing cancelled them."""

    def __init__(self) -> None:
        super().__init__(session_cookie_secure=False)
        self.ready = anyio.Event()
        self.events: list[tuple[str, float]] = []
        self.closed: list[ConnectionClosed] = []
        self.pushes = 0

    async def ws_sleep(self, ws: WebSocket) -> None:
        await ws.accept()
        self.ready.set()
        try:
            await anyio.sleep(DEADLINE)
        except anyio.get_cancelled_exc_class():
            self.events.append(("cancelled", anyio.current_time()))
            raise
        self.events.append(("slept on", anyio.current_time()))

    async def ws_push(self, ws: WebSocket) -> None:
        await ws.accept()
        self.ready.set()
        try:
            for _ in range(int(DEADLINE / 0.01)):
                await ws.send_text("tick")
                self.pushes += 1
                await anyio.sleep(0.01)
        except ConnectionClosed as exc:
            self.closed.append(exc)
            self.events.append(("push ended", anyio.current_time()))
            raise

    async def ws_closed_itself(self, ws: WebSocket) -> None:
        """Closed the connection, then went on with something long: the server still goes."""
        await ws.accept()
        await ws.close()
        self.ready.set()
        try:
            await anyio.sleep(DEADLINE)
        except anyio.get_cancelled_exc_class():
            self.events.append(("cancelled", anyio.current_time()))
            raise


async def shut_down_during(app: Lingering, path: str) -> tuple[float, float, list[Message]]:
    """Open ``path``, call ``begin_shutdown()`` once the handler runs, answer the close like a
    client; return when shutdown began, when the client got the close, and all it got."""
    scope = {"type": "websocket", "path": path, "headers": [], "query_string": b""}
    to_app, app_inbox = anyio.create_memory_object_stream[Message](math.inf)
    app_outbox, from_app = anyio.create_memory_object_stream[Message](math.inf)
    received: list[Message] = []
    closed_at = math.inf

    async def client() -> None:
        nonlocal closed_at
        async for message in from_app:
            received.append(message)
            if message["type"] == "websocket.close" and closed_at == math.inf:
                closed_at = anyio.current_time()
                await to_app.send({"type": "websocket.disconnect", "code": 1006})

    async def connection() -> None:
        with app_outbox:
            await app(scope, app_inbox.receive, app_outbox.send)

    with anyio.fail_after(DEADLINE):
        async with (
            lifespan(app),
            to_app,
            app_inbox,
            from_app,
            anyio.create_task_group() as group,
        ):
            group.start_soon(client)
            await to_app.send({"type": "websocket.connect"})
            group.start_soon(connection)
            await app.ready.wait()
            await anyio.sleep(0.15)  # long enough for the sweeper to give it a pump
            began = anyio.current_time()
            app.begin_shutdown()
    return began, closed_at, received


def no_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_sleeping_handler_gets_1001_then_is_cancelled_after_the_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Lingering()
    began, closed_at, received = await shut_down_during(app, "/sleep")
    assert received[-1] == GOING_AWAY
    assert closed_at - began < AT_ONCE  # at once
    assert [event for event, _ in app.events] == ["cancelled"]
    cancelled_after = app.events[0][1] - began
    assert HANDLER_GRACE_AFTER_CLOSE - 0.05 <= cancelled_after < HANDLER_GRACE_AFTER_CLOSE + 0.4
    assert no_errors(caplog) == []


async def test_a_push_loop_sees_connection_closed_1001_and_nothing_is_logged_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Lingering()
    began, closed_at, received = await shut_down_during(app, "/push")
    assert received[-1] == GOING_AWAY
    assert closed_at - began < AT_ONCE
    assert [(exc.code, exc.reason) for exc in app.closed] == [(1001, "Going away")]
    assert [event for event, _ in app.events] == ["push ended"]
    assert app.events[0][1] - began < AT_ONCE  # its next send, not the grace
    assert [m for m in received if m["type"] == "websocket.close"] == [GOING_AWAY]
    assert no_errors(caplog) == []


async def test_a_handler_that_closed_itself_is_cancelled_at_shutdown_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Lingering()
    began, _, received = await shut_down_during(app, "/closed_itself")
    assert [m for m in received if m["type"] == "websocket.close"] == [
        {"type": "websocket.close", "code": 1000, "reason": ""}
    ]  # its own close, and no 1001 after it
    assert [event for event, _ in app.events] == ["cancelled"]
    assert app.events[0][1] - began < HANDLER_GRACE_AFTER_CLOSE + 0.4
    assert no_errors(caplog) == []
