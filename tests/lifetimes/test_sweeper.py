"""The sweeper on its own: it calls what registers (``Swept``) every round and by the deadlines
asked for, tells it when the server goes away, and sleeps while nothing is registered.

HTTP requests and WebSockets are swept things too; their behaviour is tested in
test_disconnect.py and tests/websocket/.
"""

from __future__ import annotations

import math

import anyio
import anyio.abc
import pytest

from micropie.lifetimes.sweeper import DisconnectSweeper, clock

pytestmark = pytest.mark.anyio


class Recorder:
    """A swept thing that records each call and asks for the deadline it is given."""

    def __init__(self, deadline: float = math.inf) -> None:
        self.deadline = deadline
        self.calls: list[tuple[float, bool]] = []
        self.called = anyio.Event()
        self.gone = 0

    def sweep(self, now: float, new_round: bool, task_group: anyio.abc.TaskGroup) -> float:
        self.calls.append((now, new_round))
        self.called.set()
        if now >= self.deadline:
            self.deadline = math.inf
        return self.deadline

    def going_away(self) -> None:
        self.gone += 1

    async def next_call(self) -> tuple[float, bool]:
        self.called = anyio.Event()
        with anyio.fail_after(2):
            await self.called.wait()
        return self.calls[-1]


async def test_a_registered_thing_is_swept_every_round_until_it_unregisters() -> None:
    sweeper = DisconnectSweeper(interval=0.01)
    swept = Recorder()
    async with anyio.create_task_group() as task_group:
        await task_group.start(sweeper.run)
        sweeper.register(swept)  # wakes the idle sweeper
        rounds = [await swept.next_call() for _ in range(3)]
        assert all(new_round for _, new_round in rounds)
        assert rounds[0][0] < rounds[1][0] < rounds[2][0]
        sweeper.unregister(swept)
        count = len(swept.calls)
        await anyio.sleep(0.05)  # five intervals in which nothing may call it
        assert len(swept.calls) == count
        assert sweeper.registered == 0
        task_group.cancel_scope.cancel()
    assert not sweeper.running


async def test_a_deadline_before_the_next_round_is_kept() -> None:
    """A body deadline earlier than the next round wakes the sweeper by then (not a round)."""
    sweeper = DisconnectSweeper(interval=30)
    swept = Recorder()
    async with anyio.create_task_group() as task_group:
        await task_group.start(sweeper.run)
        sweeper.register(swept)
        asked = clock() + 0.05
        swept.deadline = asked
        sweeper.wake_by(asked)
        calls = [await swept.next_call()]
        while calls[-1][0] < asked:  # woken by wake_by first, then by the deadline returned
            assert len(calls) < 5
            calls.append(await swept.next_call())
        assert not any(new_round for _, new_round in calls)
        assert calls[-1][0] - asked < 1.0
        task_group.cancel_scope.cancel()


async def test_shutdown_tells_everything_registered_now_and_later() -> None:
    sweeper = DisconnectSweeper()
    before, after = Recorder(), Recorder()
    async with anyio.create_task_group() as task_group:
        await task_group.start(sweeper.run)
        sweeper.register(before)
        sweeper.begin_shutdown()
        assert before.gone == 1
        sweeper.register(after)
        assert after.gone == 1
        assert before.gone == 1
        task_group.cancel_scope.cancel()


async def test_tasks_started_by_a_swept_thing_run_in_the_sweepers_group() -> None:
    sweeper = DisconnectSweeper(interval=0.01)
    ran = anyio.Event()

    class Starter(Recorder):
        def sweep(self, now: float, new_round: bool, task_group: anyio.abc.TaskGroup) -> float:
            if not self.calls:
                task_group.start_soon(_set, ran)
            return super().sweep(now, new_round, task_group)

    async with anyio.create_task_group() as task_group:
        await task_group.start(sweeper.run)
        assert sweeper.task_group is not None
        sweeper.register(Starter())
        with anyio.fail_after(2):
            await ran.wait()
        task_group.cancel_scope.cancel()
    assert sweeper.task_group is None


async def _set(event: anyio.Event) -> None:
    event.set()
