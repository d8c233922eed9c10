"""``ConnectionTasks``: a connection's tasks, hosted in a longer-lived task group.

The WebSocket tests exercise it through ``ws.start_soon``; these pin down its own contract:
tasks never outlive ``close()``, a failing task reaches neither the host group nor the other
tasks, and nothing can start once the connection is over.
"""

from __future__ import annotations

import anyio
import pytest

from micropie.lifetimes.connection_tasks import ConnectionTasks

pytestmark = pytest.mark.anyio


async def test_close_cancels_and_awaits_every_task() -> None:
    ended: list[int] = []
    running = anyio.Event()
    started = 0

    async def forever(number: int) -> None:
        nonlocal started
        try:
            started += 1
            if started == 3:
                running.set()
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.lowlevel.checkpoint()  # cleanup that itself awaits
            ended.append(number)

    async with anyio.create_task_group() as host:
        tasks = ConnectionTasks(host, lambda: None)
        for number in range(3):
            tasks.start_soon(forever, number)
        await running.wait()
        await tasks.close()
        assert sorted(ended) == [0, 1, 2]  # all done when close() returns
        assert not host.cancel_scope.cancel_called  # the host lives on


async def test_a_failing_task_is_recorded_and_reported_not_raised_in_the_host() -> None:
    failures = 0
    failed = anyio.Event()

    def on_error() -> None:
        nonlocal failures
        failures += 1
        failed.set()

    async def broken() -> None:
        raise LookupError("detail")

    sibling_cancelled = False

    async def sibling() -> None:
        nonlocal sibling_cancelled
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            sibling_cancelled = True
            raise

    async with anyio.create_task_group() as host:
        tasks = ConnectionTasks(host, on_error)
        tasks.start_soon(sibling)
        tasks.start_soon(broken)
        with anyio.fail_after(5):
            await failed.wait()
        assert not sibling_cancelled  # the connection decides (it cancels its handler)
        await tasks.close()
    assert [type(error) for error in tasks.errors] == [LookupError]
    assert failures == 1
    assert sibling_cancelled


async def test_nothing_starts_after_close() -> None:
    async with anyio.create_task_group() as host:
        tasks = ConnectionTasks(host, lambda: None)
        await tasks.close()
        with pytest.raises(RuntimeError, match="connection is over"):
            tasks.start_soon(anyio.sleep_forever)


async def test_close_returns_when_the_host_group_was_cancelled_first() -> None:
    """App shutdown cancels the host group: the tasks end with it, and close() still returns."""
    async with anyio.create_task_group() as host:
        tasks = ConnectionTasks(host, lambda: None)
        tasks.start_soon(anyio.sleep_forever)
        await anyio.lowlevel.checkpoint()
        host.cancel_scope.cancel()
        with anyio.CancelScope(shield=True), anyio.fail_after(5):
            await tasks.close()
