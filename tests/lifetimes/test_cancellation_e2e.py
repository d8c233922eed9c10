"""Cancellation users control, end to end: hypercorn (the asyncio worker on asyncio, the trio
worker on trio) and a client that drops its TCP connection mid-request.

The app records what its handlers did; a second request reads the record back, so a side
effect is checked the way a user would see it.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import pytest

from micropie import shielded, time_limit
from tests.support.apps.cancellation import EARLY, LATE, NOTICED_WITHIN, PROMPTLY, Work
from tests.support.servers import running_server

pytestmark = pytest.mark.anyio


class Orders(Work):
    """``Work`` and the routes the end-to-end tests add: handlers that wait for the drop."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.noticed = anyio.Event()
        self.saw_drop = anyio.Event()
        self.noticed_at = 0.0
        self.started_at = 0.0
        self.written = anyio.Event()
        self.after_block = False
        self.child_cancelled = anyio.Event()

    async def _after_the_drop(self, name: str) -> str:
        """Wait until the client has gone (so the test knows it was seen), then work on."""
        self.started.set()
        await self.request.wait_for_disconnect()
        self.saw_drop.set()
        return await self._work(name)

    @shielded
    async def kept_after_drop(self) -> str:
        return await self._after_the_drop("kept_after_drop")

    async def later(self) -> str:  # for App(cancel_on_disconnect=False)
        return await self._after_the_drop("later")

    async def record(self) -> str:
        return ",".join(self.done)

    @shielded
    async def wait(self) -> str:
        self.started.set()
        await self.request.wait_for_disconnect()
        self.noticed_at = anyio.current_time()
        self.noticed.set()
        return "left"

    @shielded
    async def poll(self) -> str:
        self.started.set()
        with anyio.fail_after(5):
            while not await self.request.is_disconnected():  # noqa: ASYNC110 - what is tested
                await anyio.sleep(0.01)
        self.noticed_at = anyio.current_time()
        self.noticed.set()
        return "left"

    async def write(self) -> str:
        try:
            with anyio.CancelScope(shield=True):
                self.started.set()
                await self.request.wait_for_disconnect()  # the client drops mid-write...
                self.saw_drop.set()
                await self.release.wait()  # ...and the write goes on
                self.written.set()
            await anyio.lowlevel.checkpoint()
            self.after_block = True
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise
        return "written"

    async def grouped(self) -> str:
        """A handler with a task group of its own, its child running."""
        try:
            async with anyio.create_task_group() as task_group:
                await task_group.start(self._child)
                self.started.set()
                await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise
        return "unreachable"  # pragma: no cover

    async def _child(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            self.child_cancelled.set()

    @time_limit(0.3)
    async def limited(self) -> str:
        self.started_at = anyio.current_time()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise
        return "unreachable"  # pragma: no cover


async def request_then_drop(url: str, path: str, started: anyio.Event) -> float:
    """Send ``GET path``, wait until the handler runs, drop the connection; return when."""
    port = int(url.rsplit(":", 1)[1])
    stream = await anyio.connect_tcp("127.0.0.1", port)
    await stream.send(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    with anyio.fail_after(5):
        await started.wait()
    dropped_at = anyio.current_time()
    await stream.aclose()
    return dropped_at


@pytest.mark.parametrize("path", ["/plain", "/grouped"], ids=["plain", "task-group-inside"])
async def test_a_handler_is_cancelled_when_its_client_drops_the_connection(path: str) -> None:
    """With a task group of its own (``/grouped``), its child is cancelled with it."""
    app = Orders()
    async with running_server(app) as url:
        await request_then_drop(url, path, app.started)
        with anyio.fail_after(PROMPTLY):
            await app.cancelled.wait()
        assert app.child_cancelled.is_set() == (path == "/grouped")
        app.release.set()
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/record")).text == ""


@pytest.mark.parametrize(
    ("settings", "path"),
    [({}, "/kept_after_drop"), ({"cancel_on_disconnect": False}, "/later")],
    ids=["shielded", "cancel_on_disconnect-False"],
)
async def test_a_handler_that_keeps_running_finishes_after_the_client_dropped(
    settings: dict[str, Any], path: str
) -> None:
    app = Orders(**settings)
    async with running_server(app) as url:
        await request_then_drop(url, path, app.started)
        with anyio.fail_after(PROMPTLY):
            await app.saw_drop.wait()  # the server told the app: the handler kept running
        app.release.set()
        with anyio.fail_after(5):
            await app.finished.wait()
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/record")).text == path.strip("/")
    assert not app.cancelled.is_set()


@pytest.mark.parametrize("path", ["/wait", "/poll"])
async def test_a_handler_learns_within_100_ms_that_its_client_dropped(path: str) -> None:
    app = Orders()
    async with running_server(app) as url:
        dropped_at = await request_then_drop(url, path, app.started)
        with anyio.fail_after(PROMPTLY):
            await app.noticed.wait()
    assert app.noticed_at - dropped_at < NOTICED_WITHIN + LATE


async def test_a_shield_completes_its_write_and_the_handler_stops_right_after() -> None:
    app = Orders()
    async with running_server(app) as url:
        await request_then_drop(url, "/write", app.started)
        with anyio.fail_after(PROMPTLY):
            await app.saw_drop.wait()  # the request is cancelled now; the shield holds
        app.release.set()
        with anyio.fail_after(PROMPTLY):
            await app.cancelled.wait()
    assert app.written.is_set()
    assert not app.after_block


async def test_shutdown_ends_a_shielded_handler_when_graceful_timeout_runs_out() -> None:
    app = Orders()
    with anyio.fail_after(10):
        async with running_server(app, graceful_timeout=0.3) as url:
            port = int(url.rsplit(":", 1)[1])
            stream = await anyio.connect_tcp("127.0.0.1", port)
            await stream.send(b"GET /kept HTTP/1.1\r\nHost: test\r\n\r\n")
            await app.started.wait()
            stopping_at = anyio.current_time()
        stopped_at = anyio.current_time()
        await stream.aclose()
    assert app.cancelled.is_set()
    assert app.done == []
    assert stopped_at - stopping_at < 0.3 + PROMPTLY


async def test_time_limit_answers_503_on_time() -> None:
    app = Orders()
    async with running_server(app) as url, httpx.AsyncClient(base_url=url) as client:
        with anyio.fail_after(5):
            response = await client.get("/limited")
        answered_at = anyio.current_time()
    assert response.status_code == 503
    assert response.text == "503 Service Unavailable: Request timed out"
    assert 0.3 - EARLY <= answered_at - app.started_at < 0.3 + LATE
    assert app.cancelled.is_set()
