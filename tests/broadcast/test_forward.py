"""``Broadcast.forward``: a channel's messages sent to a WebSocket by the broadcast, both loops.

The WebSocket is usually a ``Sink``, a stand-in that records what ``send_text`` got and can
block (a client that stopped reading) or fail (a client that left, a bug). Each test that
takes ``kind`` runs on a memory broadcast that is entered (the shared delivery workers), on
one that is not (a task per forward) and on a real redis-server (``redis_server.py``). The
end-to-end test serves an app with hypercorn and talks to it with real WebSocket clients.

"No send happens after X" is checked with a witness: a second forward on the channel that
gets a later message, after which every task is let run until blocked; a send to the first
sink would have happened by then. Every wait is bounded.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import NamedTuple

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import pytest

import micropie.broadcast._forward
from micropie import App, ConnectionClosed
from micropie.broadcast import (
    DELIVERY_WORKERS,
    Broadcast,
    BroadcastError,
    Forward,
    SlowSubscriber,
)
from micropie.broadcast._forward import SENDS_BETWEEN_CHECKPOINTS, STALLED_AFTER, DeliveryPool
from micropie.testing import TestClient
from micropie.websocket import ConnectionNotOpen
from tests.support.broadcast_fixtures import FeedApp, redis_subscribers
from tests.support.redis_server import RedisServer, redis_server  # noqa: F401 - the fixture
from tests.support.servers import running_server
from tests.support.ws_clients import open_raw_websocket, ws_connect

pytestmark = pytest.mark.anyio


class Kind(NamedTuple):
    """How a test's broadcast runs: its URL, and whether it is entered (``async with``)."""

    url: str
    entered: bool


@pytest.fixture(params=["memory", "memory-not-entered", "redis"])
def kind(request: pytest.FixtureRequest) -> Iterator[Kind]:
    """Both backends with the delivery workers, and the memory backend without them."""
    if request.param == "redis":
        yield Kind(request.getfixturevalue("redis_server").url, entered=True)
    else:
        yield Kind("memory://", entered=request.param == "memory")


@asynccontextmanager
async def running(kind: Kind) -> AsyncIterator[Broadcast]:
    """A broadcast of ``kind``, entered for the block when ``kind.entered``."""
    broadcast = Broadcast(kind.url)
    if kind.entered:
        async with broadcast:
            yield broadcast
    else:
        yield broadcast


class Sink:
    """A stand-in for a WebSocket: records what ``send_text`` got; can block or fail.

    With ``gate``, each send waits for it (a client that stopped reading), ignoring
    cancellation until then if ``shield``. With ``delay``, each send takes that long (a slow
    network). With ``error``, each send raises it.
    ``overlapped`` becomes true if a send starts while another is in progress: a send yields
    before and after its work, so two sends to one sink at once would show.
    """

    def __init__(
        self,
        *,
        gate: anyio.Event | None = None,
        shield: bool = False,
        delay: float = 0.0,
        error: BaseException | None = None,
    ) -> None:
        self.gate = gate
        self.shield = shield
        self.delay = delay
        self.error = error
        self.received: list[str] = []
        self.calls = 0  # sends started
        self.active = 0  # sends in progress
        self.cancelled = 0  # sends that saw a cancellation
        self.overlapped = False
        self.sending = anyio.Event()  # set when the first send starts
        self._changed = anyio.Event()

    async def send_text(self, data: str) -> None:
        self.calls += 1
        self.overlapped |= self.active > 0
        self.active += 1
        self.sending.set()
        try:
            with anyio.CancelScope(shield=self.shield):
                await anyio.lowlevel.checkpoint()
                if self.gate is not None:
                    await self.gate.wait()
            if self.delay:
                await anyio.sleep(self.delay)
            if self.error is not None:
                raise self.error
            await anyio.lowlevel.checkpoint()
            self.received.append(data)
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        finally:
            self.active -= 1
            self._changed.set()

    async def wait_until(self, condition: Callable[[], bool], within: float = 5) -> None:
        """Wait (at most ``within`` seconds) until ``condition()`` holds after some send."""
        with anyio.fail_after(within):
            while not condition():
                self._changed = anyio.Event()
                await self._changed.wait()

    async def wait_for(self, count: int, within: float = 5) -> list[str]:
        """Wait until ``count`` messages were sent; return them all."""
        await self.wait_until(lambda: len(self.received) >= count, within)
        return self.received


def texts(count: int) -> list[str]:
    return [str(number) for number in range(count)]


async def publish_all(broadcast: Broadcast, channel: str, messages: list[str]) -> None:
    """Publish ``messages``; the publisher never waits for forwards, so this is quick."""
    with anyio.fail_after(2):
        for text in messages:
            await broadcast.publish(channel, text)


# --- delivery ----------------------------------------------------------------------------


async def test_every_forward_of_the_channel_gets_every_message_in_order(
    kind: Kind, channel: str
) -> None:
    first, second, other = Sink(), Sink(), Sink()
    async with running(kind) as broadcast:
        await broadcast.publish(channel, "before")  # nobody forwards yet: reaches nobody
        async with (
            broadcast.forward(channel, first) as forward,
            broadcast.forward(channel, second),
            broadcast.forward(channel + "-other", other),
        ):
            assert isinstance(forward, Forward)
            assert (forward.channel, forward.queue_size, forward.overflow) == (
                channel,
                broadcast.queue_size,
                "drop_oldest",
            )
            # The other channel's message goes first: sent to ``first`` by mistake, it
            # would come before "0" (one connection to Redis keeps the order).
            await broadcast.publish(channel + "-other", "elsewhere")
            await publish_all(broadcast, channel, texts(30))
            assert await first.wait_for(30) == texts(30)
            assert await second.wait_for(30) == texts(30)
            assert await other.wait_for(1) == ["elsewhere"]
            assert (forward.dropped, forward.queued) == (0, 0)
    assert not first.overlapped
    assert not second.overlapped
    assert not broadcast._hub.wanted(channel)


async def test_many_forwards_each_get_every_message_in_order(kind: Kind, channel: str) -> None:
    """More forwards than delivery workers: every worker serves several."""
    sinks = [Sink() for _ in range(3 * DELIVERY_WORKERS + 5)]
    async with running(kind) as broadcast, AsyncExitStack() as stack:
        for sink in sinks:
            await stack.enter_async_context(broadcast.forward(channel, sink))
        await publish_all(broadcast, channel, texts(20))
        for sink in sinks:
            assert await sink.wait_for(20) == texts(20)
    assert not any(sink.overlapped for sink in sinks)
    assert broadcast.dropped == 0


async def test_a_forward_made_with_start_false_sends_once_started(kind: Kind, channel: str) -> None:
    """The subscription is live from the start, but nothing is sent before ``start()``: the
    handler's own first message (a greeting) comes first, then what was published meanwhile
    (bounded by ``queue_size``, oldest dropped), then everything after."""
    sink = Sink()
    async with running(kind) as broadcast:
        async with broadcast.forward(channel, sink, queue_size=3, start=False) as forward:
            await publish_all(broadcast, channel, texts(5))
            await anyio.wait_all_tasks_blocked()
            assert (sink.calls, forward.queued, forward.dropped) == (0, 3, 2)
            await sink.send_text("greeting")  # the handler's own send
            forward.start()
            forward.start()  # idempotent
            assert await sink.wait_for(4) == ["greeting", "2", "3", "4"]
            await publish_all(broadcast, channel, ["5"])
            assert await sink.wait_for(5) == ["greeting", "2", "3", "4", "5"]
        async with broadcast.forward(channel, sink, start=False):
            await broadcast.publish(channel, "never sent")
        await anyio.wait_all_tasks_blocked()
    assert sink.received == ["greeting", "2", "3", "4", "5"]
    assert not sink.overlapped


class InstantSink:
    """A send that never yields, as hypercorn's asyncio ``send()`` while its buffer has room."""

    def __init__(self, log: list[str], first_sent: anyio.Event) -> None:
        self.log = log
        self.first_sent = first_sent

    async def send_text(self, data: str) -> None:
        self.log.append("send")
        self.first_sent.set()


async def test_workers_let_other_tasks_run_during_a_burst(channel: str) -> None:
    """One message to many forwards whose sends never yield: a task that became ready at the
    first send runs long before the last one. Every worker yields after
    ``SENDS_BETWEEN_CHECKPOINTS`` sends; the task runs within two rounds of all the workers
    (on trio, tasks made ready during a pass of the scheduler run in the next, in any order)."""
    log: list[str] = []
    first_sent = anyio.Event()
    bound = 2 * DELIVERY_WORKERS * SENDS_BETWEEN_CHECKPOINTS
    count = 2 * bound

    async def other_task() -> None:
        await first_sent.wait()
        log.append("other")

    async with Broadcast() as broadcast, AsyncExitStack() as stack:
        for _ in range(count):
            sink = InstantSink(log, first_sent)
            await stack.enter_async_context(broadcast.forward(channel, sink))
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(other_task)
            await anyio.wait_all_tasks_blocked()
            await broadcast.publish(channel, "burst")
        with anyio.fail_after(5):
            while log.count("send") < count:
                await anyio.lowlevel.checkpoint()
    assert log.index("other") <= bound, f"other ran after {log.index('other')} sends"


# --- leaving the block -------------------------------------------------------------------


async def test_nothing_is_sent_after_the_block_is_left(kind: Kind, channel: str) -> None:
    sink, witness = Sink(), Sink()
    async with running(kind) as broadcast, broadcast.forward(channel, witness):
        async with broadcast.forward(channel, sink):
            await broadcast.publish(channel, "inside")
            assert await sink.wait_for(1) == ["inside"]
        await publish_all(broadcast, channel, ["after", "and after"])
        assert await witness.wait_for(3) == ["inside", "after", "and after"]
        await anyio.wait_all_tasks_blocked()
        assert sink.calls == 1


async def test_a_send_in_flight_is_cancelled_before_the_block_is_left(
    kind: Kind, channel: str
) -> None:
    sink, witness = Sink(gate=anyio.Event()), Sink()
    async with running(kind) as broadcast, broadcast.forward(channel, witness):
        with anyio.fail_after(5):
            async with broadcast.forward(channel, sink):
                await broadcast.publish(channel, "stuck")
                await sink.sending.wait()
        assert (sink.active, sink.cancelled) == (0, 1)
        await publish_all(broadcast, channel, ["after"])
        assert await witness.wait_for(2) == ["stuck", "after"]
        await anyio.wait_all_tasks_blocked()
        assert sink.calls == 1


async def test_leaving_is_bounded_even_when_a_send_ignores_cancellation(
    url: str, channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the shared workers, a send that shields itself from cancellation holds the exit
    ``LEAVE_TIMEOUT`` seconds (about one; a tenth here), no more; once it ends, nothing more
    is sent."""
    monkeypatch.setattr(micropie.broadcast._forward, "LEAVE_TIMEOUT", 0.1)
    gate = anyio.Event()
    sink, witness = Sink(gate=gate, shield=True), Sink()

    async def release_later() -> None:
        await anyio.sleep(1)  # not synchronisation: turns a hang into a failure
        gate.set()

    async with (
        Broadcast(url) as broadcast,
        broadcast.forward(channel, witness),
        anyio.create_task_group() as watchdog,
    ):
        watchdog.start_soon(release_later)
        async with broadcast.forward(channel, sink):
            await broadcast.publish(channel, "stuck")
            with anyio.fail_after(5):
                await sink.sending.wait()
        stuck_at_exit = sink.active == 1 and not gate.is_set()
        gate.set()
        watchdog.cancel_scope.cancel()
        await sink.wait_until(lambda: sink.active == 0)
        await publish_all(broadcast, channel, ["after"])
        assert await witness.wait_for(2) == ["stuck", "after"]
        await anyio.wait_all_tasks_blocked()
        assert sink.calls == 1
    assert stuck_at_exit, "leaving waited for the send to end (or it never started)"


async def test_without_the_workers_leaving_waits_for_the_send_in_progress(
    channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A memory broadcast that is not running sends from a task of the block, which the
    block waits for like a task group, even when the send ignores cancellation: once the
    block is left, no send is in progress."""
    monkeypatch.setattr(micropie.broadcast._forward, "LEAVE_TIMEOUT", 0.1)
    gate = anyio.Event()
    sink = Sink(gate=gate, shield=True)
    broadcast = Broadcast()

    async def release_once_all_are_blocked() -> None:
        await sink.sending.wait()
        await anyio.wait_all_tasks_blocked()  # the test is leaving the block by now
        gate.set()

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(release_once_all_are_blocked)
        async with broadcast.forward(channel, sink):
            await broadcast.publish(channel, "stuck")
            with anyio.fail_after(5):
                await sink.sending.wait()
        assert gate.is_set()
        assert sink.active == 0
    await broadcast.publish(channel, "after")
    await anyio.wait_all_tasks_blocked()
    assert sink.calls == 1
    assert not broadcast._hub.wanted(channel)


# --- slow sinks --------------------------------------------------------------------------


async def test_stuck_sinks_stay_bounded_and_hold_up_nobody(kind: Kind, channel: str) -> None:
    """More sinks that never finish a send than there are delivery workers: the pool grows
    (a send stalled for ``STALLED_AFTER`` seconds adds a worker), so a good sink still gets
    every message within a couple of seconds, and the stuck ones hold ``queue_size`` each."""
    stuck = [Sink(gate=anyio.Event()) for _ in range(DELIVERY_WORKERS + 4)]
    good = Sink()
    bound = 2 + STALLED_AFTER * len(stuck)  # even if workers were added one at a time
    async with running(kind) as broadcast:
        async with AsyncExitStack() as stack:
            forwards = [
                await stack.enter_async_context(broadcast.forward(channel, sink, queue_size=4))
                for sink in stuck
            ]
            good_forward = await stack.enter_async_context(
                broadcast.forward(channel, good, queue_size=100)
            )
            await publish_all(broadcast, channel, ["0"])
            assert await good.wait_for(1, within=bound) == ["0"]
            await publish_all(broadcast, channel, texts(10)[1:])
            assert await good.wait_for(10, within=2) == texts(10)

            await anyio.wait_all_tasks_blocked()
            for sink, forward in zip(stuck, forwards, strict=True):
                assert forward.queued <= 4
                assert sink.calls <= 1
                assert forward.queued + forward.dropped + sink.calls == 10
            assert good_forward.dropped == 0
            assert broadcast.dropped == sum(forward.dropped for forward in forwards) > 0
            leaving_at = anyio.current_time()
        assert anyio.current_time() - leaving_at < 1.5  # every stuck send was cancelled
        assert all(sink.active == 0 for sink in stuck)
        assert not broadcast._hub.wanted(channel)


async def test_disconnect_policy_ends_a_slow_forward(kind: Kind, channel: str) -> None:
    slow, witness = Sink(gate=anyio.Event()), Sink()
    body_ended: list[bool] = []
    async with running(kind) as broadcast, broadcast.forward(channel, witness):
        with anyio.fail_after(5), pytest.raises(SlowSubscriber):
            await overflow_and_wait(broadcast, channel, slow, body_ended)
        assert body_ended == []
        assert slow.active == 0
        await publish_all(broadcast, channel, ["after"])
        assert await witness.wait_for(5) == [*texts(4), "after"]  # unaffected
        await anyio.wait_all_tasks_blocked()
        assert slow.calls <= 1
    assert not broadcast._hub.wanted(channel)


async def overflow_and_wait(
    broadcast: Broadcast, channel: str, slow: Sink, body_ended: list[bool]
) -> None:
    async with broadcast.forward(channel, slow, queue_size=2, overflow="disconnect") as forward:
        assert (forward.queue_size, forward.overflow) == (2, "disconnect")
        # One in flight (or queued) and two queued at most: the fourth overflows.
        await publish_all(broadcast, channel, texts(4))
        await anyio.Event().wait()  # cancelled when the forward ends
        body_ended.append(True)


# --- sends that fail ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_error",
    [
        lambda: ConnectionClosed(1006),
        lambda: ConnectionNotOpen("WebSocket connection not accepted"),
        lambda: anyio.ClosedResourceError(),
    ],
    ids=["ConnectionClosed", "ConnectionNotOpen", "ClosedResourceError"],
)
async def test_a_client_that_left_ends_its_forward_quietly(
    kind: Kind,
    channel: str,
    make_error: Callable[[], Exception],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="micropie")
    gone, witness = Sink(error=make_error()), Sink()
    proceed = anyio.Event()
    body_ended = False

    async def proceed_once_all_are_blocked() -> None:
        await anyio.wait_all_tasks_blocked()
        proceed.set()

    async with (
        running(kind) as broadcast,
        broadcast.forward(channel, witness),
        anyio.create_task_group() as task_group,
    ):
        with anyio.fail_after(5):
            async with broadcast.forward(channel, gone):
                await broadcast.publish(channel, "1")
                await gone.wait_until(lambda: gone.calls == 1 and gone.active == 0)
                await publish_all(broadcast, channel, ["2", "3"])
                assert await witness.wait_for(3) == ["1", "2", "3"]
                await anyio.wait_all_tasks_blocked()
                assert gone.calls == 1  # not called again
                task_group.start_soon(proceed_once_all_are_blocked)
                await proceed.wait()  # the body was not cancelled
                body_ended = True
    assert body_ended
    assert gone.calls == 1
    assert [record for record in caplog.records if record.levelno >= logging.ERROR] == []


class Abort(BaseException):
    """Not an ``Exception``: what a sink's bug may raise all the same."""


@pytest.mark.parametrize(
    "make_error",
    [
        lambda: ValueError("broken sink"),
        lambda: RuntimeError("broken sink"),  # not every RuntimeError means "closed"
        lambda: Abort("broken sink"),
    ],
    ids=["ValueError", "RuntimeError", "BaseException"],
)
async def test_a_send_that_fails_otherwise_ends_the_block_with_its_error(
    kind: Kind,
    channel: str,
    make_error: Callable[[], BaseException],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only that forward's block fails (as a task of its own would): the shared workers, the
    broadcast and the other forwards carry on."""
    caplog.set_level(logging.DEBUG, logger="micropie")
    error = make_error()
    broken, witness = Sink(error=error), Sink()
    body_ended: list[bool] = []
    async with running(kind) as broadcast, broadcast.forward(channel, witness):
        with anyio.fail_after(5), pytest.raises(type(error), match="broken sink"):
            await publish_and_wait(broadcast, channel, broken, body_ended)
        assert body_ended == []
        errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
        assert [record.name for record in errors] == ["micropie"]
        await publish_all(broadcast, channel, ["2"])
        assert await witness.wait_for(2) == ["1", "2"]
        await anyio.wait_all_tasks_blocked()
        assert broken.calls == 1


async def publish_and_wait(
    broadcast: Broadcast, channel: str, sink: Sink, body_ended: list[bool]
) -> None:
    async with broadcast.forward(channel, sink):
        await broadcast.publish(channel, "1")
        await anyio.Event().wait()  # cancelled when the forward ends
        body_ended.append(True)


@pytest.mark.parametrize(
    "make_error",
    [
        lambda: KeyError("from the body"),
        lambda: ConnectionClosed(1006),
        lambda: ExceptionGroup("the body's own group", [KeyError("inside")]),
    ],
    ids=["KeyError", "ConnectionClosed", "ExceptionGroup"],
)
async def test_an_error_in_the_block_comes_out_as_itself(
    kind: Kind, channel: str, make_error: Callable[[], Exception]
) -> None:
    """Not wrapped in an ``ExceptionGroup``, nor unwrapped from one: a handler's ``except``
    (and micropie's own handling of ``ConnectionClosed``) must see what it raised."""
    sink, error = Sink(), make_error()
    async with running(kind) as broadcast:
        with pytest.raises(type(error)) as raised:
            await raise_in_block(broadcast, channel, sink, error)
        if isinstance(error, ExceptionGroup):  # trio's nursery hands back an equal copy
            assert (raised.value.message, raised.value.exceptions) == (
                error.message,
                error.exceptions,
            )
        else:
            assert raised.value is error
        assert not broadcast._hub.wanted(channel)


async def raise_in_block(broadcast: Broadcast, channel: str, sink: Sink, error: Exception) -> None:
    async with broadcast.forward(channel, sink):
        await broadcast.publish(channel, "1")
        await sink.wait_for(1)
        raise error


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_cancellation_from_inside_a_send_fails_only_its_forward(
    channel: str, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncio only, because only asyncio has it: a send that awaits a future someone else
    cancels (what asyncio stream libraries do when a connection is torn down) ends with a
    ``CancelledError`` that is not the worker's. That forward's block fails with a
    ``BroadcastError``; the workers and the other forwards go on. (On trio a ``Cancelled``
    always belongs to a scope of the task that sees it: a sink cannot raise a foreign one.)"""
    import asyncio

    class TornDown(Sink):
        async def send_text(self, data: str) -> None:
            future = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(future.cancel)
            self.calls += 1
            await future

    caplog.set_level(logging.DEBUG, logger="micropie")
    body_ended: list[bool] = []
    for entered in (True, False):
        torn, witness = TornDown(), Sink()
        async with (
            running(Kind("memory://", entered)) as broadcast,
            broadcast.forward(channel, witness),
        ):
            with anyio.fail_after(5), pytest.raises(BroadcastError, match="was cancelled"):
                await publish_and_wait(broadcast, channel, torn, body_ended)
            await publish_all(broadcast, channel, ["2"])
            assert await witness.wait_for(2) == ["1", "2"]
            if entered:
                assert broadcast._pool is not None
                assert len(broadcast._pool._workers) >= DELIVERY_WORKERS
    assert body_ended == []


async def test_a_failure_while_redis_confirms_the_subscription_is_raised_on_entry(
    redis_server: RedisServer,  # noqa: F811
    channel: str,
) -> None:
    """The forward gets messages from the moment it is in the hub, before Redis confirmed
    its subscription (``listen``, which can wait for another subscriber's round trip). A send
    that fails in that window fails the ``async with`` itself, instead of a block that would
    run on with a dead forward."""
    broadcast = Broadcast(redis_server.url)
    broken = Sink(error=ValueError("broken sink"))
    async with (
        broadcast,
        broadcast.forward(channel, Sink()),  # the channel is subscribed already
        anyio.create_task_group() as task_group,
    ):
        failed = anyio.Event()

        async def enter() -> None:
            with pytest.raises(ValueError, match="broken sink"):
                async with broadcast.forward(channel, broken):
                    pytest.fail("the block ran with a failed forward")
            failed.set()

        async with broadcast._backend._lock:  # type: ignore[attr-defined]  # another listen
            task_group.start_soon(enter)
            await anyio.wait_all_tasks_blocked()  # it waits for the lock we hold
            await broadcast.publish(channel, "1")
            await broken.wait_until(lambda: broken.calls == 1 and broken.active == 0)
            assert not failed.is_set()
        with anyio.fail_after(5):
            await failed.wait()


async def test_slow_but_healthy_sends_do_not_grow_the_pool(
    channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sends well under ``STALLED_AFTER`` are not stalls, however the stall watcher's looks
    fall: only a send in progress at two looks in a row is. (A worker idle at one look and
    sending at the next used to count, which started extra workers again and again.) Bursts
    with pauses between them, out of step with the looks, give the looks every phase."""
    started: list[object] = []
    start_worker = DeliveryPool._start_worker

    def counting_start(pool: DeliveryPool) -> None:
        started.append(pool)
        start_worker(pool)

    monkeypatch.setattr(DeliveryPool, "_start_worker", counting_start)
    slow_sinks = [Sink(delay=STALLED_AFTER * 0.4) for _ in range(DELIVERY_WORKERS)]
    async with Broadcast() as broadcast, AsyncExitStack() as stack:
        for sink in slow_sinks:
            await stack.enter_async_context(broadcast.forward(channel, sink))
        for number in range(8):
            await broadcast.publish(channel, str(number))
            with anyio.fail_after(5):
                for sink in slow_sinks:
                    await sink.wait_for(number + 1)
            await anyio.sleep(STALLED_AFTER * 0.8)  # not synchronisation: the pause between
    assert len(started) == DELIVERY_WORKERS  # the pool's own; none for a stall


# --- cancellation and shutdown -----------------------------------------------------------


async def test_a_cancelled_forward_is_removed_and_redis_unsubscribed(
    kind: Kind, channel: str
) -> None:
    sink = Sink(gate=anyio.Event())

    async def forward_forever(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with broadcast.forward(channel, sink):
            task_status.started()
            await anyio.sleep_forever()

    async with running(kind) as broadcast:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as task_group:
                await task_group.start(forward_forever)
                if kind.url.startswith("redis"):
                    assert await redis_subscribers(kind.url, channel) == 1
                await broadcast.publish(channel, "stuck")
                await sink.sending.wait()
                task_group.cancel_scope.cancel()
                cancelled_at = anyio.current_time()
        assert anyio.current_time() - cancelled_at < 1.5  # the send in flight is cancelled
        assert (sink.active, sink.cancelled) == (0, 1)
        assert not broadcast._hub.wanted(channel)
        if kind.url.startswith("redis"):
            assert await redis_subscribers(kind.url, channel) == 0


async def test_shutdown_stops_forwards_and_leaves_their_blocks_alone(
    url: str, channel: str
) -> None:
    broadcast = Broadcast(url)
    good, stuck = Sink(), Sink(gate=anyio.Event())
    leave = anyio.Event()
    steps: list[str] = []

    async def forwarder(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with broadcast.forward(channel, good), broadcast.forward(channel, stuck):
            task_status.started()
            await leave.wait()
            steps.append("body ended")
        steps.append("left")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            async with broadcast:
                await task_group.start(forwarder)
                await broadcast.publish(channel, "before")
                assert await good.wait_for(1) == ["before"]
                await stuck.sending.wait()
                shutdown_at = anyio.current_time()
            assert anyio.current_time() - shutdown_at < 1.5  # not held by the stuck send
            assert stuck.active == 0  # not served any more
            await anyio.wait_all_tasks_blocked()
            assert steps == []  # the block was not cancelled
            leave.set()
    assert steps == ["body ended", "left"]
    assert good.received == ["before"]
    assert not broadcast._hub.wanted(channel)


# --- what can be forwarded to ------------------------------------------------------------


class FakeWebSocket(Sink):
    """A sink with micropie's ``accepted`` flag."""

    def __init__(self, accepted: bool) -> None:
        super().__init__()
        self.accepted = accepted


async def test_a_websocket_must_be_accepted_first(kind: Kind, channel: str) -> None:
    async with running(kind) as broadcast:
        with pytest.raises(RuntimeError):
            async with broadcast.forward(channel, FakeWebSocket(accepted=False)):
                pytest.fail("entered with a WebSocket that was not accepted")
        assert not broadcast._hub.wanted(channel)
        accepted = FakeWebSocket(accepted=True)
        async with broadcast.forward(channel, accepted):
            await broadcast.publish(channel, "fine")
            assert await accepted.wait_for(1) == ["fine"]


class RefusingApp(App):
    """Tries to forward before ``accept`` (refused), then does it right."""

    def __init__(self, broadcast: Broadcast) -> None:
        super().__init__(session_cookie_secure=False)
        self.broadcast = broadcast

    async def ws_feed(self, ws, topic):  # type: ignore[no-untyped-def]
        try:
            async with self.broadcast.forward(topic, ws):
                refused = "no"
        except RuntimeError:
            refused = "yes"
        await ws.accept()
        await ws.send_text(f"refused: {refused}")
        async with self.broadcast.forward(topic, ws):
            await ws.send_text("subscribed")
            async for _ in ws:
                pass


async def test_a_real_websocket_not_accepted_yet_is_refused(channel: str) -> None:
    broadcast = Broadcast()
    async with (
        TestClient(RefusingApp(broadcast)) as client,
        client.websocket_connect(f"/feed/{channel}") as session,
    ):
        with anyio.fail_after(5):
            assert await session.receive_text() == "refused: yes"
            assert await session.receive_text() == "subscribed"
            await broadcast.publish(channel, "hello")
            assert await session.receive_text() == "hello"


# --- in an app, served by hypercorn ------------------------------------------------------


async def test_websocket_clients_get_forwarded_messages(
    url: str, channel: str, anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="micropie")
    broadcast = Broadcast(url)
    async with (
        running_server(FeedApp(broadcast)) as base,
        httpx.AsyncClient(base_url=base) as http,
        ws_connect(f"{base}/forwarded/{channel}", anyio_backend) as staying,
    ):
        async with ws_connect(f"{base}/forwarded/{channel}", anyio_backend) as leaving:
            with anyio.fail_after(5):
                assert await staying.recv() == "subscribed"
                assert await leaving.recv() == "subscribed"
            response = await http.post("/post", data={"topic": channel, "text": "hi all"})
            assert response.text == "sent"
            with anyio.fail_after(5):
                assert await staying.recv() == "hi all"
                assert await leaving.recv() == "hi all"
        for text in ["one left", "still here"]:
            response = await http.post("/post", data={"topic": channel, "text": text})
            assert response.text == "sent"
        with anyio.fail_after(5):
            assert await staying.recv() == "one left"
            assert await staying.recv() == "still here"
    assert not broadcast._hub.wanted(channel)
    # The forward to the client that left ended quietly.
    assert [record for record in caplog.records if record.levelno >= logging.ERROR] == []


#: Messages published to a real client that never reads, and their size: 12.5 MiB in all, far
#: more than the kernel's socket buffers and hypercorn's write buffer hold, so sends to it block.
FLOOD_MESSAGES, FLOOD_SIZE = 200, 64 * 1024


async def test_a_real_client_that_never_reads_holds_up_nobody(
    channel: str, anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """hypercorn, both workers: a raw-socket client that stops reading after the handshake.

    Its sends block inside hypercorn (on trio in a shielded ``send_all``), its queue stays at
    ``queue_size`` and drops the rest; a real client on the same channel gets every message, in
    order, as soon as it is published; when the stuck client resets the connection, its handler
    ends and the server shuts down promptly, with nothing logged as an error.
    """
    caplog.set_level(logging.DEBUG, logger="micropie")
    broadcast = Broadcast(queue_size=4)
    app = FeedApp(broadcast)
    texts_sent = [f"{number:04d}" + "x" * (FLOOD_SIZE - 4) for number in range(FLOOD_MESSAGES)]
    with anyio.fail_after(30):  # the whole test, shutdown included
        async with running_server(app) as base:
            port = int(base.rsplit(":", 1)[1])
            stuck = await open_raw_websocket(port, f"/forwarded/{channel}")
            try:
                async with ws_connect(f"{base}/forwarded/{channel}", anyio_backend) as reader:
                    assert await reader.recv() == "subscribed"
                    await wait_for_forwards(broadcast, channel, 2)
                    for text in texts_sent:  # one at a time: the reader's queue never fills
                        await broadcast.publish(channel, text)  # never waits for a client
                        assert (await reader.recv())[:4] == text[:4]
                (stuck_forward,) = forwards_of(broadcast, channel)
                assert stuck_forward.queued <= 4
                assert stuck_forward.dropped > FLOOD_MESSAGES // 2  # it got a small part
                assert broadcast.dropped == stuck_forward.dropped
            finally:
                raw = stuck.extra(anyio.abc.SocketAttribute.raw_socket)
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                await stuck.aclose()  # a reset: the blocked send fails
            await wait_for_forwards(broadcast, channel, 0)
    assert [record for record in caplog.records if record.levelno >= logging.ERROR] == []


def forwards_of(broadcast: Broadcast, channel: str) -> list[Forward]:
    found = broadcast._hub._channels.get(channel)
    return list(found.forwards) if found is not None else []


async def wait_for_forwards(broadcast: Broadcast, channel: str, count: int) -> None:
    """Poll, bounded: the handlers enter and leave their blocks in the server's tasks, and
    nothing tells the test when (a checkpoint per try, never more than 5 s)."""
    with anyio.fail_after(5):
        while len(forwards_of(broadcast, channel)) != count:  # noqa: ASYNC110 - see above
            await anyio.sleep(0.01)


# --- arguments ---------------------------------------------------------------------------


async def test_a_redis_broadcast_that_is_not_running_refuses_clearly(
    redis_server: RedisServer,  # noqa: F811
    channel: str,
) -> None:
    broadcast = Broadcast(redis_server.url)
    with pytest.raises(RuntimeError, match="not running"):
        async with broadcast.forward(channel, Sink()):
            pytest.fail("entered")
    assert not broadcast._hub.wanted(channel)


async def test_bad_arguments_are_refused(channel: str) -> None:
    broadcast = Broadcast()
    with pytest.raises(ValueError, match="queue_size"):
        async with broadcast.forward(channel, Sink(), queue_size=0):
            pytest.fail("entered")
    with pytest.raises(ValueError, match="overflow"):
        async with broadcast.forward(channel, Sink(), overflow="block"):  # type: ignore[arg-type]
            pytest.fail("entered")
    assert not broadcast._hub.wanted(channel)
