"""The cancel scope each connection runs in (``lifetimes.cancel_scopes``): the backend's own
class, chosen once per sweeper run, and just as good as ``anyio.CancelScope`` for what user
code opens inside it: shields keep its cancellation out, task groups inside are cancelled with
it, and a cancellation from outside still reaches through it.

The request-level versions of these guarantees (a handler with a shield, a task group in a
handler, server cancellation) run in ``test_cancellation.py`` and ``test_cancellation_e2e.py``.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from micropie.lifetimes.cancel_scopes import (
    ScopeMaker,
    _direct_scope_maker,
    native_current_task,
    scope_maker_for_running_backend,
)
from micropie.lifetimes.sweeper import DisconnectSweeper

pytestmark = pytest.mark.anyio


async def test_the_backends_own_scope_class_is_chosen(anyio_backend: str) -> None:
    make_scope = scope_maker_for_running_backend()
    if anyio_backend == "trio":
        import trio

        assert make_scope is trio.CancelScope
    else:
        assert make_scope is type(anyio.CancelScope())
        assert make_scope is not anyio.CancelScope
    scope = make_scope()
    assert scope.deadline == math.inf
    assert not scope.cancel_called


async def test_the_native_current_task_is_the_backends_own(anyio_backend: str) -> None:
    current_task = native_current_task(anyio_backend)
    if anyio_backend == "trio":
        import trio

        assert current_task() is trio.lowlevel.current_task()
    else:
        import asyncio

        assert current_task() is asyncio.current_task()


def test_a_class_that_would_dispatch_again_falls_back_to_anyio() -> None:
    """``anyio.CancelScope`` itself dispatches in ``__new__``: not a class to make directly."""
    assert _direct_scope_maker(anyio.CancelScope) is None


def test_a_class_without_a_new_of_its_own_falls_back_to_anyio() -> None:
    class Subclass(anyio.CancelScope):
        pass

    assert _direct_scope_maker(Subclass) is None


async def test_the_sweeper_uses_the_chosen_class_only_while_it_runs() -> None:
    sweeper = DisconnectSweeper()
    assert sweeper.make_scope is anyio.CancelScope
    async with anyio.create_task_group() as task_group:
        await task_group.start(sweeper.run)
        assert sweeper.make_scope is scope_maker_for_running_backend()
        task_group.cancel_scope.cancel()
    assert sweeper.make_scope is anyio.CancelScope


@pytest.fixture
def make_scope(anyio_backend: str) -> ScopeMaker:
    """Chosen inside the test's event loop, by the test (fixtures run outside it on trio)."""
    del anyio_backend
    return _made_in_loop


def _made_in_loop() -> Any:
    return scope_maker_for_running_backend()()


async def test_a_shield_inside_keeps_its_cancellation_out(make_scope: ScopeMaker) -> None:
    shielded_started = anyio.Event()
    may_finish = anyio.Event()
    finished: list[str] = []
    scope = make_scope()

    async def guarded() -> None:
        with scope:
            with anyio.CancelScope(shield=True):
                shielded_started.set()
                await may_finish.wait()
                finished.append("shielded block")
            await anyio.lowlevel.checkpoint()
            finished.append("after the shield")  # pragma: no cover - cancelled before this

    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(guarded)
            await shielded_started.wait()
            scope.cancel()
            await anyio.lowlevel.checkpoint()
            may_finish.set()
    assert finished == ["shielded block"]
    assert scope.cancelled_caught


async def test_a_task_group_inside_is_cancelled_with_it(make_scope: ScopeMaker) -> None:
    children_waiting = 0
    all_waiting = anyio.Event()
    cancelled: list[int] = []
    scope = make_scope()

    async def child(number: int) -> None:
        nonlocal children_waiting
        children_waiting += 1
        if children_waiting == 3:
            all_waiting.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.append(number)
            raise

    async def handler() -> None:
        with scope:
            async with anyio.create_task_group() as inner:
                for number in range(3):
                    inner.start_soon(child, number)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(handler)
            await all_waiting.wait()
            scope.cancel()
    assert sorted(cancelled) == [0, 1, 2]
    assert scope.cancelled_caught


async def test_a_cancellation_from_outside_reaches_through_it(make_scope: ScopeMaker) -> None:
    inside = anyio.Event()
    scope = make_scope()
    with anyio.fail_after(5):
        with anyio.CancelScope() as outer:

            async def work() -> None:
                with scope:
                    inside.set()
                    await anyio.sleep_forever()

            async with anyio.create_task_group() as task_group:
                task_group.start_soon(work)
                await inside.wait()
                outer.cancel()
    assert outer.cancelled_caught
    assert not scope.cancelled_caught


async def test_a_deadline_set_after_entering_cancels_on_time(make_scope: ScopeMaker) -> None:
    scope = make_scope()
    with anyio.fail_after(5):
        with scope:
            scope.deadline = anyio.current_time() + 0.01
            await anyio.sleep_forever()
    assert scope.cancelled_caught
