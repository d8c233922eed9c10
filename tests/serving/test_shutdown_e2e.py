"""Graceful shutdown of a real server process: SIGTERM with connections open.

The server is ``python -m micropie`` in a subprocess, on the test's backend (hypercorn's asyncio
or trio worker); the clients are real (trio-websocket on trio, websockets on asyncio).
"""

from __future__ import annotations

import signal
import time
from functools import partial

import anyio
import httpx
import pytest

from tests.support.servers import CliServer
from tests.support.ws_clients import Closed, ws_connect

pytestmark = pytest.mark.anyio

CONNECTIONS = 100
#: hypercorn's default graceful_timeout: the process must be gone within it plus 2 s.
GRACE = 3.0


async def test_sigterm_closes_every_websocket_with_1001_and_exits_on_time(
    anyio_backend: str,
) -> None:
    codes: list[int | None] = []
    all_ready = anyio.Event()
    ready = 0

    with CliServer.start("tests.support.apps.shutdown_app:app", backend=anyio_backend) as server:
        url = server.url

        async def hold() -> None:
            nonlocal ready
            async with ws_connect(f"{url}/hold", anyio_backend) as ws:
                assert await ws.recv() == "ready"
                ready += 1
                if ready == CONNECTIONS:
                    all_ready.set()
                with pytest.raises(Closed) as closed:
                    await ws.recv()
                codes.append(closed.value.code)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as task_group:
                for _ in range(CONNECTIONS):
                    task_group.start_soon(hold)
                await all_ready.wait()
                started = time.monotonic()
                status = await anyio.to_thread.run_sync(server.stop, signal.SIGTERM)
                elapsed = time.monotonic() - started

    assert codes == [1001] * CONNECTIONS
    assert status == 0
    assert elapsed < GRACE + 2


async def test_sigterm_ends_an_event_stream_cleanly(anyio_backend: str) -> None:
    with CliServer.start("tests.support.apps.shutdown_app:app", backend=anyio_backend) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            with anyio.fail_after(20):
                async with client.stream("GET", "/ticks") as response:
                    chunks = response.aiter_bytes()
                    assert b"tick" in await chunks.__anext__()
                    async with anyio.create_task_group() as task_group:
                        task_group.start_soon(
                            partial(anyio.to_thread.run_sync, server.stop, signal.SIGTERM)
                        )
                        received = [chunk async for chunk in chunks]  # ends cleanly
    assert all(chunk.startswith(b"data: tick") for chunk in received if chunk)


async def test_a_failing_shutdown_handler_still_lets_the_process_exit(anyio_backend: str) -> None:
    """The failure is logged and reported by the exit status (alike on both workers)."""
    with CliServer.start(
        "tests.support.apps.failing_shutdown_app:app", backend=anyio_backend
    ) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.get("/")).text == "up"
        with anyio.fail_after(GRACE + 2):
            status = await anyio.to_thread.run_sync(server.stop, signal.SIGTERM)
    assert status == 1
    assert "Application shutdown failed" in server.output
    assert "flush to disk failed" in server.output
