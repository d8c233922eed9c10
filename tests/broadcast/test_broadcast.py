"""micropie.broadcast: fan-out on the memory backend and on a real redis-server, both loops.

The Redis tests run against ``redis-server`` processes started by ``redis_server.py`` on
127.0.0.1; the restart tests kill one with SIGKILL mid-subscription. Every wait is bounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import httpx
import pytest

from micropie.broadcast import (
    WAKE_WINDOW,
    Broadcast,
    BroadcastUnavailable,
    Message,
    SlowSubscriber,
    Subscription,
    SubscriptionClosed,
)
from tests.support.broadcast_fixtures import FeedApp, redis_subscribers
from tests.support.redis_server import RedisServer, redis_server  # noqa: F401 - the fixture
from tests.support.servers import free_port, running_server

pytestmark = pytest.mark.anyio


async def receive(subscription: Subscription) -> Message:
    with anyio.fail_after(5):
        return await subscription.receive()


# --- delivery and scope ------------------------------------------------------------------


async def test_publish_reaches_every_subscriber_of_the_channel_only(url: str, channel: str) -> None:
    async with (
        Broadcast(url) as broadcast,
        broadcast.subscribe(channel) as first,
        broadcast.subscribe(channel) as second,
        broadcast.subscribe(channel + "-other") as other,
    ):
        await broadcast.publish(channel, "hello")
        await broadcast.publish(channel + "-other", "elsewhere")
        assert await receive(first) == Message(channel, "hello")
        assert await receive(second) == Message(channel, "hello")
        assert await receive(other) == Message(channel + "-other", "elsewhere")
        with anyio.move_on_after(0.2):
            unexpected = await first.receive()
            pytest.fail(f"first got {unexpected} from another channel")


async def test_messages_arrive_in_order(url: str, channel: str) -> None:
    async with Broadcast(url) as broadcast, broadcast.subscribe(channel) as subscription:
        for number in range(50):
            await broadcast.publish(channel, str(number))
        received = [(await receive(subscription)).data for _ in range(50)]
    assert received == [str(number) for number in range(50)]


async def test_two_broadcasts_on_one_redis_are_like_two_workers(
    redis_server: RedisServer,  # noqa: F811
    channel: str,
) -> None:
    async with (
        Broadcast(redis_server.url) as worker_a,
        Broadcast(redis_server.url) as worker_b,
        worker_b.subscribe(channel) as on_b,
        worker_a.subscribe(channel) as on_a,
    ):
        await worker_a.publish(channel, "from a")
        assert (await receive(on_b)).data == "from a"
        assert (await receive(on_a)).data == "from a"


async def test_a_subscription_ends_with_its_block(url: str, channel: str) -> None:
    async with Broadcast(url) as broadcast:
        async with broadcast.subscribe(channel) as subscription:
            pass
        await broadcast.publish(channel, "after")  # nobody listens: fine
        with pytest.raises(SubscriptionClosed):
            await receive(subscription)
        if url.startswith("redis"):
            assert await redis_subscribers(url, channel) == 0


async def test_a_cancelled_subscriber_is_removed_and_redis_unsubscribed(
    url: str, channel: str
) -> None:
    async with Broadcast(url) as broadcast:
        subscribed = anyio.Event()

        async def listen_forever() -> None:
            async with broadcast.subscribe(channel) as subscription:
                subscribed.set()
                async for _ in subscription:
                    pass

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(listen_forever)
            with anyio.fail_after(5):
                await subscribed.wait()
            if url.startswith("redis"):
                assert await redis_subscribers(url, channel) == 1
            task_group.cancel_scope.cancel()
        assert not broadcast._hub.wanted(channel)
        if url.startswith("redis"):
            assert await redis_subscribers(url, channel) == 0


async def test_leaving_the_broadcast_ends_iteration(url: str, channel: str) -> None:
    broadcast = Broadcast(url)
    subscribed, got_one, finished = anyio.Event(), anyio.Event(), anyio.Event()
    received: list[str] = []

    async def consume() -> None:
        async with broadcast.subscribe(channel) as subscription:
            subscribed.set()
            async for message in subscription:
                received.append(message.data)
                got_one.set()
        finished.set()  # the loop ended quietly: no exception

    async with anyio.create_task_group() as task_group:
        async with broadcast:
            task_group.start_soon(consume)
            with anyio.fail_after(5):
                await subscribed.wait()
                await broadcast.publish(channel, "last")
                await got_one.wait()
        with anyio.fail_after(5):
            await finished.wait()
    assert received == ["last"]


async def test_memory_backend_works_without_being_entered(channel: str) -> None:
    broadcast = Broadcast()
    async with broadcast.subscribe(channel) as subscription:
        await broadcast.publish(channel, "no setup")
        assert (await receive(subscription)).data == "no setup"


# --- many subscribers: woken a window at a time (see _Channel) ---------------------------

#: More readers than the wake-up window, so every one but the first few is woken by another.
MANY = 3 * WAKE_WINDOW + 5


async def test_every_one_of_many_subscribers_gets_every_message_in_order(
    url: str, channel: str
) -> None:
    received: dict[int, list[str]] = {number: [] for number in range(MANY)}
    all_in = anyio.Event()

    async def reader(number: int, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with broadcast.subscribe(channel) as subscription:
            task_status.started()
            async for message in subscription:
                received[number].append(message.data)
                if sum(len(got) for got in received.values()) == 3 * MANY:
                    all_in.set()

    async with Broadcast(url) as broadcast, anyio.create_task_group() as task_group:
        for number in range(MANY):
            await task_group.start(reader, number)
        await anyio.wait_all_tasks_blocked()  # every reader is parked
        for text in ["a", "b", "c"]:
            await broadcast.publish(channel, text)
        with anyio.fail_after(5):
            await all_in.wait()
        task_group.cancel_scope.cancel()
    assert all(got == ["a", "b", "c"] for got in received.values())


async def test_woken_readers_that_are_cancelled_pass_the_wake_up_on(channel: str) -> None:
    """The first window of readers is cancelled right after a delivery woke them: the others
    must still be woken (nobody waits for a wake-up that a cancelled reader swallowed). On
    asyncio a woken task may still take its message before the cancellation lands."""
    broadcast = Broadcast()
    scopes: list[anyio.CancelScope] = []
    got: list[int] = []
    all_in = anyio.Event()

    async def reader(number: int, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            async with broadcast.subscribe(channel) as subscription:
                task_status.started()
                await subscription.receive()
                got.append(number)
                if set(range(WAKE_WINDOW, MANY)) <= set(got):
                    all_in.set()

    async with anyio.create_task_group() as task_group:
        for number in range(MANY):
            await task_group.start(reader, number)
        await anyio.wait_all_tasks_blocked()
        broadcast._hub.deliver(channel, "now")  # wakes the first window, without yielding
        for scope in scopes[:WAKE_WINDOW]:
            scope.cancel()
        with anyio.fail_after(5):
            await all_in.wait()
    assert set(range(WAKE_WINDOW, MANY)) <= set(got)


async def test_a_reader_cancelled_while_parked_leaves_the_others_alone(channel: str) -> None:
    broadcast = Broadcast()
    scopes: list[anyio.CancelScope] = []
    got: list[int] = []

    async def reader(number: int, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            async with broadcast.subscribe(channel) as subscription:
                task_status.started()
                await subscription.receive()
                got.append(number)

    with anyio.fail_after(5):  # the odd readers must end by themselves
        async with anyio.create_task_group() as task_group:
            for number in range(MANY):
                await task_group.start(reader, number)
            await anyio.wait_all_tasks_blocked()
            for scope in scopes[::2]:
                scope.cancel()
            await anyio.wait_all_tasks_blocked()
            await broadcast.publish(channel, "to the odd ones")
    assert sorted(got) == list(range(1, MANY, 2))
    assert not broadcast._hub.wanted(channel)


async def test_a_reader_that_parks_again_and_again_wakes_each_time_and_at_the_end(
    channel: str,
) -> None:
    """Each wait parks on a fresh wake-up: one message at a time, published only once every
    reader is parked, reaches every reader; then closing the broadcast ends their loops."""
    broadcast = Broadcast()
    received: dict[int, list[str]] = {number: [] for number in range(MANY)}
    ended: list[int] = []

    async def reader(number: int, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with broadcast.subscribe(channel) as subscription:
            task_status.started()
            async for message in subscription:
                received[number].append(message.data)
        ended.append(number)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as task_group, broadcast:
            for number in range(MANY):
                await task_group.start(reader, number)
            for text in map(str, range(5)):
                await anyio.wait_all_tasks_blocked()  # every reader parked again
                await broadcast.publish(channel, text)
            await anyio.wait_all_tasks_blocked()
    assert all(got == ["0", "1", "2", "3", "4"] for got in received.values())
    assert sorted(ended) == list(range(MANY))


async def test_shutdown_ends_many_parked_readers(url: str, channel: str) -> None:
    broadcast = Broadcast(url)
    finished: list[int] = []

    async def reader(number: int, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with broadcast.subscribe(channel) as subscription:
            task_status.started()
            async for _ in subscription:
                pass
        finished.append(number)  # ended quietly

    with anyio.fail_after(10):
        async with anyio.create_task_group() as task_group, broadcast:
            for number in range(MANY):
                await task_group.start(reader, number)
            await anyio.wait_all_tasks_blocked()
    assert sorted(finished) == list(range(MANY))


# --- slow subscribers --------------------------------------------------------------------


async def test_a_subscriber_that_never_reads_stays_bounded_and_blocks_nobody(
    url: str, channel: str
) -> None:
    async with (
        Broadcast(url, queue_size=4) as broadcast,
        broadcast.subscribe(channel) as stuck,
        broadcast.subscribe(channel, queue_size=1000) as reader,
    ):
        with anyio.fail_after(5):  # the publisher never waits for the stuck subscriber
            for number in range(300):
                await broadcast.publish(channel, str(number))
        got = [(await receive(reader)).data for _ in range(300)]
        assert got == [str(number) for number in range(300)]
        assert stuck.queued == 4
        assert stuck.dropped == 296
        assert broadcast.dropped == 296
        assert [(await receive(stuck)).data for _ in range(4)] == ["296", "297", "298", "299"]


async def test_disconnect_policy_ends_a_slow_subscription(url: str, channel: str) -> None:
    async with Broadcast(url) as broadcast, broadcast.subscribe(channel) as witness:
        with pytest.raises(SlowSubscriber, match="did not keep up"):
            await overflow_then_read(broadcast, channel, witness)
        assert (await receive(witness)).data == "0"  # the others are unaffected
    assert not broadcast._hub.wanted(channel)


async def overflow_then_read(broadcast: Broadcast, channel: str, witness: Subscription) -> None:
    async with broadcast.subscribe(channel, queue_size=2, overflow="disconnect") as slow:
        for number in range(3):
            await broadcast.publish(channel, str(number))
        # Delivery to all subscribers of a channel happens at once, so once the witness has
        # the third message, the slow subscription has overflowed.
        witnessed = [(await receive(witness)).data for _ in range(3)]
        assert witnessed == ["0", "1", "2"]
        await broadcast.publish(channel, "0")  # for the assertion after the raise
        async for _ in slow:
            pytest.fail("the queue of an overflowed subscription is dropped")


# --- Redis going away --------------------------------------------------------------------


async def test_startup_fails_clearly_when_redis_is_unreachable() -> None:
    broadcast = Broadcast(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.5)
    with anyio.fail_after(5), pytest.raises(BroadcastUnavailable, match="cannot connect"):
        async with broadcast:
            pass


async def test_redis_restart_mid_subscription_regains_delivery(channel: str) -> None:
    with RedisServer.start() as redis:
        async with (
            Broadcast(redis.url, connect_timeout=1, publish_timeout=1) as broadcast,
            broadcast.subscribe(channel) as subscription,
        ):
            await broadcast.publish(channel, "before")
            assert (await receive(subscription)).data == "before"

            redis.kill()
            with anyio.fail_after(3), pytest.raises(BroadcastUnavailable, match="cannot publish"):
                await broadcast.publish(channel, "while down")
            with anyio.fail_after(3), pytest.raises(BroadcastUnavailable, match="subscribe"):
                async with broadcast.subscribe(channel + "-late"):
                    pass

            redis.restart()
            # Delivery comes back within the reconnect backoff (at most ~2 s): publish until
            # the old subscription hears it.
            with anyio.fail_after(10):
                while True:
                    try:
                        await broadcast.publish(channel, "after")
                    except BroadcastUnavailable:
                        pass
                    with anyio.move_on_after(0.2):
                        assert (await subscription.receive()).data == "after"
                        break
            async with broadcast.subscribe(channel + "-late") as late:
                await broadcast.publish(channel + "-late", "works")
                assert (await receive(late)).data == "works"


# --- in an app ---------------------------------------------------------------------------


@asynccontextmanager
async def feed_client(url: str, backend: str) -> AsyncIterator[object]:
    url = url.replace("http://", "ws://", 1)
    if backend == "trio":
        import trio_websocket

        async with trio_websocket.open_websocket_url(url, disconnect_timeout=2) as connection:
            yield connection.get_message
    else:
        import websockets

        async with websockets.connect(url) as connection:
            yield connection.recv


async def test_lifespan_owns_the_broadcast_and_websocket_clients_get_messages(
    url: str, channel: str, anyio_backend: str
) -> None:
    broadcast = Broadcast(url)
    app = FeedApp(broadcast)
    async with running_server(app) as base, httpx.AsyncClient(base_url=base) as http:
        assert app.state["broadcast"] is broadcast
        async with (
            feed_client(f"{base}/feed/{channel}", anyio_backend) as first,
            feed_client(f"{base}/feed/{channel}", anyio_backend) as second,
        ):
            with anyio.fail_after(5):
                assert await first() == "subscribed"  # type: ignore[operator]
                assert await second() == "subscribed"  # type: ignore[operator]
            response = await http.post("/post", data={"topic": channel, "text": "hi all"})
            assert response.text == "sent"
            with anyio.fail_after(5):
                assert await first() == "hi all"  # type: ignore[operator]
                assert await second() == "hi all"  # type: ignore[operator]
    if url.startswith("redis"):  # shutdown closed the connections
        assert broadcast._backend._client is None  # type: ignore[attr-defined]


# --- arguments ---------------------------------------------------------------------------


async def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported broadcast URL"):
        Broadcast("kafka://somewhere")
    with pytest.raises(ValueError, match="queue_size"):
        Broadcast(queue_size=0)
    with pytest.raises(ValueError, match="overflow"):
        Broadcast(overflow="block")  # type: ignore[arg-type]
    broadcast = Broadcast()
    with pytest.raises(TypeError, match="str"):
        await broadcast.publish("x", b"bytes")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="not running"):
        await Broadcast("redis://127.0.0.1:1/0").publish("x", "y")
