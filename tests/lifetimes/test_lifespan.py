"""The app's lifetime: lifespan handlers and context manager, state, background tasks."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from micropie import App
from tests.support.drive import Client, http_scope, lifespan

pytestmark = pytest.mark.anyio


async def lifespan_messages(app: App, *messages: str) -> list[dict[str, Any]]:
    """Feed lifespan messages to the app and return what it answered."""
    replies: list[dict[str, Any]] = []
    pending = [{"type": kind} for kind in messages]

    async def receive() -> dict[str, Any]:
        return pending.pop(0)

    async def send(message: dict[str, Any]) -> None:
        replies.append(message)

    with anyio.fail_after(5):
        await app({"type": "lifespan"}, receive, send)
    return replies


async def test_handlers_and_context_manager_run_in_order() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def resources(app: App) -> AsyncIterator[dict[str, Any]]:
        events.append("enter")
        yield {"db": "connection"}
        events.append("exit")

    app = App(lifespan=resources)
    app.startup_handlers.append(lambda: events.append("startup"))  # sync handlers work too

    async def shutdown() -> None:
        events.append("shutdown")

    app.shutdown_handlers.append(shutdown)
    replies = await lifespan_messages(app, "lifespan.startup", "lifespan.shutdown")
    assert replies == [
        {"type": "lifespan.startup.complete"},
        {"type": "lifespan.shutdown.complete"},
    ]
    assert events == ["startup", "enter", "exit", "shutdown"]
    assert app.state == {"db": "connection"}


async def test_lifespan_state_reaches_requests() -> None:
    @asynccontextmanager
    async def resources(app: App) -> AsyncIterator[dict[str, Any]]:
        yield {"greeting": "hello"}

    class Greeter(App):
        async def index(self) -> str:
            return str(self.request.state["greeting"])

    app = Greeter(lifespan=resources)
    state: dict[str, Any] = {}
    client = Client()
    async with lifespan(app, state=state):
        scope = http_scope("/")
        scope["state"] = dict(state)  # what a server does for every request
        with anyio.fail_after(5):
            await app(scope, client.receive, client.send)
    assert client.sent[1]["body"] == b"hello"


async def test_a_failing_startup_is_reported_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    app = App()

    async def broken() -> None:
        raise RuntimeError("database unreachable")

    app.startup_handlers.append(broken)
    with caplog.at_level(logging.ERROR, logger="micropie"):
        replies = await lifespan_messages(app, "lifespan.startup")
    assert replies == [{"type": "lifespan.startup.failed", "message": "database unreachable"}]
    assert "Application startup failed" in caplog.text


async def test_background_tasks_live_as_long_as_the_app() -> None:
    ticks = 0
    cancelled = anyio.Event()
    running = anyio.Event()

    async def ticker() -> None:
        nonlocal ticks
        try:
            while True:
                ticks += 1
                running.set()
                await anyio.sleep(0.01)
        finally:
            cancelled.set()

    app = App()
    async with lifespan(app):
        app.start_soon(ticker)
        with anyio.fail_after(5):
            await running.wait()
        assert not cancelled.is_set()
    assert cancelled.is_set()  # the app's shutdown cancelled it
    with pytest.raises(RuntimeError, match="not running"):
        app.start_soon(ticker)


async def test_a_failing_background_task_is_logged_and_the_app_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failed = anyio.Event()

    async def broken() -> None:
        failed.set()
        raise RuntimeError("boom")

    class Hello(App):
        async def index(self) -> str:
            return "still here"

    app = Hello()
    client = Client()
    with caplog.at_level(logging.ERROR, logger="micropie"):
        async with lifespan(app):
            app.start_soon(broken)
            with anyio.fail_after(5):
                await failed.wait()
                await app(http_scope("/"), client.receive, client.send)
    assert client.sent[1]["body"] == b"still here"
    assert "Background task" in caplog.text
    assert "boom" in caplog.text


async def test_start_waits_for_the_task_to_be_ready() -> None:
    async def server(*, task_status: anyio.abc.TaskStatus[int]) -> None:
        task_status.started(8080)
        await anyio.sleep_forever()

    async def broken(*, task_status: anyio.abc.TaskStatus[int]) -> None:
        raise ValueError("bad configuration")

    app = App()
    async with lifespan(app):
        with anyio.fail_after(5):
            assert await app.start(server) == 8080
            with pytest.raises(ValueError, match="bad configuration"):
                await app.start(broken)


async def test_the_shutdown_answer_comes_after_the_apps_tasks_have_ended() -> None:
    """A server may cancel the lifespan call as soon as it has the shutdown answer (hypercorn's
    asyncio worker does): by then the app's background tasks must be over and the call must
    return, not end in a cancellation (a ``CancelledError`` traceback at every stop)."""
    app = App()
    tasks_ended: list[str] = []

    async def background() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.lowlevel.checkpoint()  # winding down takes a trip to the loop
            tasks_ended.append("background")

    app.startup_handlers.append(lambda: app.start_soon(background))
    to_app, from_server = anyio.create_memory_object_stream[dict[str, Any]](4)
    started = anyio.Event()
    seen_at_answer: list[list[str]] = []
    call_returned = False

    with to_app, from_server, anyio.fail_after(5), anyio.CancelScope() as server:

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                started.set()
            elif message["type"] == "lifespan.shutdown.complete":
                seen_at_answer.append(list(tasks_ended))
                server.cancel()  # the server has its answer: it stops waiting for the call

        async def call() -> None:
            nonlocal call_returned
            await app({"type": "lifespan", "state": {}}, from_server.receive, send)
            call_returned = True

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(call)
            await to_app.send({"type": "lifespan.startup"})
            await started.wait()
            await to_app.send({"type": "lifespan.shutdown"})
            await anyio.sleep_forever()
    assert seen_at_answer == [["background"]]
    assert call_returned
