"""Publish/subscribe on named channels, in one process or across workers and machines.

A chat room or a live dashboard served by several hypercorn workers must deliver a message
published on one worker to the clients of every worker. ``Broadcast`` does that for any
handler (WebSocket, SSE, HTTP), on asyncio and trio::

    broadcast = Broadcast(os.environ.get("BROADCAST_URL", "memory://"))
    app = MyApp(lifespan=broadcast.lifespan)

    class MyApp(App):
        async def ws_feed(self, ws, topic):
            await ws.accept()
            async with broadcast.subscribe(topic) as messages:
                async for message in messages:
                    await ws.send_text(message.data)

        async def post(self, topic, text):
            await broadcast.publish(topic, text)
            return "sent"

Backends, chosen by URL
-----------------------
* ``memory://`` (the default): subscribers in this process only. Nothing to install or run;
  with several workers each worker is its own island.
* ``redis://host:port/db`` (also ``rediss://``, ``unix://``): Redis pub/sub through coredis,
  which is anyio-based and so runs on trio too. Each process keeps *one* subscriber connection
  and subscribes to a channel in Redis while at least one local subscriber wants it; what
  arrives is fanned out locally. Publishing uses a second pooled connection.

Lifetime
--------
``async with broadcast:`` (or ``lifespan=broadcast.lifespan``, which the app enters at startup
and leaves at shutdown) opens the Redis connections and starts one background task, the
*reader*. Leaving it cancels the reader, closes the connections and ends every subscription:
an ``async for`` over one stops, ``receive()`` raises ``SubscriptionClosed``. The memory
backend works without being entered (there is nothing to open), so a single-process app needs
no setup at all.

Startup waits up to ``connect_timeout`` seconds for Redis and fails with
``BroadcastUnavailable`` if it cannot be reached, so a misconfigured deployment does not start.
Later, when Redis goes away (a restart, a failover), the reader reconnects with exponential
backoff (from 0.1 s up to ``reconnect_max_delay``, with jitter) and subscribes again to every
channel that has local subscribers; the subscriptions themselves stay open and simply receive
nothing while Redis is away (messages published meanwhile are lost: Redis pub/sub does not
store them). ``publish`` while Redis is unreachable raises ``BroadcastUnavailable`` within
``publish_timeout`` seconds; entering ``subscribe`` waits at most ``connect_timeout`` seconds
for the Redis subscription and raises ``BroadcastUnavailable`` after that. Nothing waits on
Redis without a bound.

Subscriptions
-------------
``subscribe(channel)`` is an async context manager yielding a ``Subscription``, an async
iterator of ``Message``. When the block is entered the subscription is live: anything
published afterwards reaches it. When the block is left (normally, by an error or by
cancellation, e.g. because the WebSocket client left) the subscription is removed, so it can
never outlive its scope.

Each subscription has a bounded queue (``queue_size`` messages). Publishing never waits for a
subscriber; when a subscriber's queue is full, ``overflow`` decides:

* ``"drop_oldest"`` (the default): the oldest queued message is dropped to make room and
  counted in ``Subscription.dropped`` (and ``Broadcast.dropped``). Right for chats and
  dashboards, where the newest state matters most.
* ``"disconnect"``: the subscription is ended; its next read raises ``SlowSubscriber`` (which
  leaving the ``subscribe`` block lets propagate). Right when a gap is worse than a
  reconnect: a WebSocket handler that lets it propagate closes its connection with 1011.

So a subscriber that never reads holds at most ``queue_size`` messages and slows nobody down.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol

import anyio
import anyio.abc
import anyio.lowlevel

from .concurrency import collapse_excgroups

if TYPE_CHECKING:
    import coredis

__all__ = [
    "Broadcast",
    "BroadcastError",
    "BroadcastUnavailable",
    "Message",
    "Overflow",
    "SlowSubscriber",
    "Subscription",
    "SubscriptionClosed",
]

logger = logging.getLogger("micropie")

#: What to do when a subscriber's queue is full (see the module docstring).
Overflow = Literal["drop_oldest", "disconnect"]

#: Messages a subscriber may have waiting before the overflow policy applies.
DEFAULT_QUEUE_SIZE = 100
#: Seconds to wait for Redis at startup and for a Redis subscription in ``subscribe``.
DEFAULT_CONNECT_TIMEOUT = 5.0
#: Seconds a ``publish`` may take before it fails with ``BroadcastUnavailable``.
DEFAULT_PUBLISH_TIMEOUT = 2.0
#: Longest pause between two attempts to reconnect to Redis.
DEFAULT_RECONNECT_MAX_DELAY = 2.0
_RECONNECT_FIRST_DELAY = 0.1
#: Seconds allowed for telling Redis that a channel is no longer wanted (shielded).
_UNSUBSCRIBE_TIMEOUT = 1.0
#: Seconds the backend gets to close its connections at shutdown before it is cancelled.
_STOP_TIMEOUT = 2.0


class BroadcastError(Exception):
    """Base class of the errors this module raises."""


class BroadcastUnavailable(BroadcastError):
    """The broker (Redis) cannot be reached: the message was not published, or the
    subscription could not be made. Retrying later may work; the reader reconnects on its own."""


class SlowSubscriber(BroadcastError):
    """The subscription was ended because its queue overflowed (``overflow="disconnect"``)."""


class SubscriptionClosed(BroadcastError):
    """``receive()`` on a subscription whose broadcast has shut down (or whose block was left)."""


@dataclass(frozen=True, slots=True)
class Message:
    """One published message: the channel it was published on and its text."""

    channel: str
    data: str


class Subscription:
    """A subscriber's bounded queue of messages on one channel; read it with ``async for``.

    Made by ``Broadcast.subscribe``; valid only inside that block.

    Not an anyio memory object stream, for two reasons found by measuring 1,000 subscribers
    (see the Performance section of docs/broadcast.md): a memory stream allocates an
    ``Event`` and a receiver record per waiting reader per message, which kept the garbage
    collector busy; and the wake-ups are better paced by the channel (``_Channel``) than all
    at once. Here a delivery is a ``deque.append``; a reader with nothing to read parks on
    its own semaphore, made once and reused, and the channel wakes it.
    """

    __slots__ = (
        "_channel",
        "_closed",
        "_overflowed",
        "_queue",
        "_wakeup",
        "_woken",
        "channel",
        "dropped",
        "overflow",
        "queue_size",
    )

    def __init__(self, channel: _Channel, queue_size: int, overflow: Overflow) -> None:
        self.channel = channel.name
        self.queue_size = queue_size
        self.overflow: Overflow = overflow
        #: Messages dropped because this subscriber did not keep up (``"drop_oldest"``).
        self.dropped = 0
        self._channel = channel
        self._queue: deque[Message] = deque()
        self._closed = False  # nothing more will be delivered
        self._overflowed = False
        self._wakeup: anyio.Semaphore | None = None  # made by the first wait
        self._woken = False  # the channel released _wakeup for the current wait

    @property
    def queued(self) -> int:
        """Messages delivered and not read yet (never more than ``queue_size``)."""
        return len(self._queue)

    def _overflow(self, message: Message) -> int:
        """``message`` arrives and the queue is full (or closed); 1 if a message was dropped."""
        if self._closed:
            return 0
        if self.overflow == "disconnect":
            self._overflowed = True
            self._close(discard=True)
            return 0
        self._queue.popleft()
        self._queue.append(message)
        self.dropped += 1
        return 1

    def _close(self, *, discard: bool = False) -> None:
        """No more messages: a reader gets what is queued (unless ``discard``), then the end
        (``SubscriptionClosed``, or ``SlowSubscriber`` after an overflow, which discards)."""
        self._closed = True
        if discard:
            self._queue.clear()
        self._channel.wake_closed(self)

    def _closed_error(self) -> BroadcastError:
        if self._overflowed:
            return SlowSubscriber(
                f"subscriber to {self.channel!r} did not keep up: more than "
                f"{self.queue_size} messages were waiting"
            )
        return SubscriptionClosed(f"subscription to {self.channel!r} is closed")

    async def receive(self) -> Message:
        """The next message, waiting for one.

        Raises ``SlowSubscriber`` after an overflow with ``overflow="disconnect"``, and
        ``SubscriptionClosed`` once the broadcast shut down and the queue is empty. Like any
        anyio receive it is always a checkpoint: a subscriber that never runs dry still lets
        the other tasks run, and can be cancelled.
        """
        queue = self._queue
        if queue:
            await anyio.lowlevel.checkpoint()
        while not queue:
            if self._closed:
                await anyio.lowlevel.checkpoint()
                raise self._closed_error()
            await self._wait()  # the checkpoint
        return queue.popleft()

    async def _wait(self) -> None:
        """Park until the channel wakes this reader (a message or a close, usually)."""
        channel = self._channel
        wakeup = self._wakeup
        if wakeup is None:
            wakeup = self._wakeup = anyio.Semaphore(0)
        self._woken = False
        channel.parked.append(self)
        try:
            await wakeup.acquire()
        finally:
            if self._woken:
                channel.resumed()  # even if cancelled: pass the wake-up on
            else:  # cancelled while parked, or a stale release: not counted anywhere
                with suppress(ValueError):
                    channel.parked.remove(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        """Like ``receive``, but the end of the broadcast ends the iteration quietly."""
        try:
            return await self.receive()
        except SubscriptionClosed:
            raise StopAsyncIteration from None


#: Readers of a channel woken and not yet running, at most (see ``_Channel``).
WAKE_WINDOW = 32


class _Channel:
    """The local subscribers of one channel, and the readers among them that are parked.

    Delivery appends the message to every subscriber's queue, then wakes the parked readers,
    but at most ``WAKE_WINDOW`` at a time: each reader woken wakes the next one when it
    resumes. Why not all at once: on trio each WebSocket send in hypercorn yields halfway, so
    1,000 readers woken together are 1,000 half-done sends alive at once, tens of thousands
    of objects that the garbage collector then promotes and walks again and again (full
    collections of 100+ ms, the whole p99). A window keeps a few dozen alive, costs nothing
    in throughput, and the last reader is woken no later.

    A reader parks only when its queue is empty and a delivery reaches every subscriber, so
    the parked readers that have something to read are always a prefix of ``parked``.
    A woken reader that is cancelled still passes the wake-up on, so nobody is forgotten.
    The channel exists only while it has subscribers.
    """

    __slots__ = ("_running", "name", "parked", "subscribers")

    def __init__(self, name: str) -> None:
        self.name = name
        self.subscribers: dict[Subscription, None] = {}  # a set that keeps join order
        self.parked: deque[Subscription] = deque()  # readers waiting, in arrival order
        self._running = 0  # readers woken that have not resumed yet

    def deliver(self, message: Message) -> int:
        """Queue ``message`` for every subscriber, never waiting; return how many messages
        were dropped to make room (see ``Subscription._overflow``)."""
        dropped = 0
        for subscription in self.subscribers:  # nothing here awaits: the dict cannot change
            queue = subscription._queue
            if len(queue) < subscription.queue_size and not subscription._closed:
                queue.append(message)
            else:
                dropped += subscription._overflow(message)
        self.wake_ready()
        return dropped

    def wake_ready(self) -> None:
        """Wake parked readers that have something to read, up to the window."""
        parked = self.parked
        while self._running < WAKE_WINDOW and parked:
            reader = parked[0]
            if not reader._queue and not reader._closed:
                return  # parked after the last delivery: nothing for it, nor behind it
            parked.popleft()
            self._release(reader)

    def resumed(self) -> None:
        """A woken reader runs again: its place in the window goes to the next one."""
        self._running -= 1
        self.wake_ready()

    def wake_closed(self, reader: Subscription) -> None:
        """``reader``'s subscription was closed: wake it if it is parked (wherever it is)."""
        try:
            self.parked.remove(reader)
        except ValueError:
            return  # running, or woken already
        self._release(reader)

    def _release(self, reader: Subscription) -> None:
        assert reader._wakeup is not None  # a parked reader made it
        reader._woken = True
        self._running += 1
        reader._wakeup.release()


class _Hub:
    """The local channels, and delivery to their subscribers (never blocks)."""

    def __init__(self) -> None:
        self._channels: dict[str, _Channel] = {}
        self.dropped = 0

    def subscribe(self, channel: str, queue_size: int, overflow: Overflow) -> Subscription:
        found = self._channels.get(channel)
        if found is None:
            found = self._channels[channel] = _Channel(channel)
        subscription = Subscription(found, queue_size, overflow)
        found.subscribers[subscription] = None
        return subscription

    def remove(self, subscription: Subscription) -> None:
        channel = self._channels.get(subscription.channel)
        if channel is not None and channel is subscription._channel:
            channel.subscribers.pop(subscription, None)
            if not channel.subscribers:
                del self._channels[channel.name]

    def wanted(self, channel: str) -> bool:
        return channel in self._channels

    def channels(self) -> list[str]:
        return list(self._channels)

    def deliver(self, channel: str, data: str) -> None:
        found = self._channels.get(channel)
        if found is not None:
            self.dropped += found.deliver(Message(channel, data))

    def close_all(self) -> None:
        for channel in self._channels.values():
            for subscription in channel.subscribers:
                subscription._closed = True
            channel.wake_ready()  # every parked reader is closed now: a prefix of all


class _Backend(Protocol):
    """How a ``Broadcast`` reaches the other subscribers (see the two implementations)."""

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None: ...

    def stop(self) -> None: ...

    async def publish(self, channel: str, data: str) -> None: ...

    async def listen(self, channel: str) -> None: ...

    async def unlisten(self, channel: str) -> None: ...


class _MemoryBackend:
    """This process only: publishing is local delivery."""

    def __init__(self, hub: _Hub) -> None:
        self._hub = hub

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()

    def stop(self) -> None:
        pass

    async def publish(self, channel: str, data: str) -> None:
        self._hub.deliver(channel, data)
        await anyio.lowlevel.checkpoint()

    async def listen(self, channel: str) -> None:
        pass

    async def unlisten(self, channel: str) -> None:
        pass


def _connection_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean "Redis is unreachable" (coredis wraps most in ConnectionError)."""
    from coredis.exceptions import ConnectionError as RedisConnectionError

    # coredis lets anyio's stream errors through when its connection was closed under it.
    return (
        RedisConnectionError,
        TimeoutError,
        OSError,
        anyio.ClosedResourceError,
        anyio.BrokenResourceError,
    )


def _is_connection_error(error: BaseException) -> bool:
    """Whether ``error`` (or every exception in a group) is a lost or refused connection."""
    errors = _connection_errors()
    if isinstance(error, BaseExceptionGroup):
        _, rest = error.split(errors)
        return rest is None
    return isinstance(error, errors)


class _RedisBackend:
    """Redis pub/sub: one subscriber connection per process, kept alive by the reader task.

    ``_subscribed`` is the set of channels the current Redis connection is subscribed to;
    ``_lock`` serialises changes to it, so that concurrent ``listen``/``unlisten`` calls and a
    reconnect agree with the hub. ``_connected`` is set while a connection is up and replaced
    by a fresh event when it goes down; ``_lost`` is set when the current connection (or
    attempt) has been given up.
    """

    def __init__(
        self,
        url: str,
        hub: _Hub,
        *,
        connect_timeout: float,
        publish_timeout: float,
        reconnect_max_delay: float,
    ) -> None:
        self._url = url
        self._hub = hub
        self._connect_timeout = connect_timeout
        self._publish_timeout = publish_timeout
        self._reconnect_max_delay = reconnect_max_delay
        self._client: coredis.Redis[str] | None = None
        self._pubsub: coredis.patterns.pubsub.PubSub[str] | None = None
        self._subscribed: set[str] = set()
        self._lock = anyio.Lock()
        self._connected = anyio.Event()
        self._lost = anyio.Event()
        self._stopping = anyio.Event()

    def _make_client(self) -> coredis.Redis[str]:
        from coredis.retry import ConstantRetryPolicy

        from .backends.redis import redis_client

        errors = _connection_errors()
        return redis_client(
            self._url,
            connect_timeout=self._connect_timeout,
            stream_timeout=self._publish_timeout,
            # One quick retry: the first command after a Redis restart meets a dead pooled
            # connection; more retries would only delay the error publish() must raise.
            retry_policy=ConstantRetryPolicy(errors, retries=1, delay=0.05),
        )

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Own the client and keep one pub/sub connection open until cancelled.

        Reports ``started`` after the first connection; raises ``BroadcastUnavailable`` if none
        could be made within ``connect_timeout``.
        """
        client = self._make_client()
        # Fresh primitives for each run: an app may be served on asyncio, then on trio.
        self._lock, self._connected, self._lost = anyio.Lock(), anyio.Event(), anyio.Event()
        self._stopping = anyio.Event()
        with collapse_excgroups():  # the client's task group would wrap BroadcastUnavailable
            async with client:
                self._client = client
                try:
                    await self._keep_reading(client, task_status)
                finally:
                    self._client = None

    async def _keep_reading(
        self, client: coredis.Redis[str], task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        started = False
        give_up_at = anyio.current_time() + self._connect_timeout
        delay = _RECONNECT_FIRST_DELAY
        while not self._stopping.is_set():
            was_connected = False
            try:
                async with client.pubsub(
                    retry_policy=None,  # reconnecting is our job: we resubscribe and report
                    ignore_subscribe_messages=True,
                    subscription_timeout=self._connect_timeout,
                ) as pubsub:
                    await self._resubscribe(pubsub)
                    if not started:
                        task_status.started()
                        started = True
                    else:
                        logger.info("Broadcast: reconnected to Redis at %s", self._url)
                    delay = _RECONNECT_FIRST_DELAY
                    was_connected = True
                    await self._read_until_stopped(pubsub)
                return  # left the pubsub block normally: it unsubscribed cleanly
            except Exception as error:
                if not _is_connection_error(error):
                    logger.exception("Broadcast: Redis reader failed; reconnecting")
                elif was_connected:
                    logger.warning("Broadcast: lost Redis at %s (%s)", self._url, _first(error))
                else:
                    logger.debug("Broadcast: Redis at %s unreachable: %s", self._url, error)
                if not started and anyio.current_time() + delay > give_up_at:
                    raise BroadcastUnavailable(
                        f"cannot connect to Redis at {self._url}: {_first(error)}"
                    ) from error
            finally:
                self._disconnected()
            with anyio.move_on_after(delay * random.uniform(0.5, 1.0)):
                await self._stopping.wait()
            delay = min(delay * 2, self._reconnect_max_delay)

    async def _resubscribe(self, pubsub: coredis.patterns.pubsub.PubSub[str]) -> None:
        """A fresh connection: subscribe to every channel with local subscribers, go live."""
        async with self._lock:
            channels = self._hub.channels()
            if channels:
                await pubsub.subscribe(*channels)
            self._subscribed = set(channels)
            self._pubsub = pubsub
            self._lost = anyio.Event()
            self._connected.set()

    async def _read_until_stopped(self, pubsub: coredis.patterns.pubsub.PubSub[str]) -> None:
        """Read until ``stop()``; raises when the connection is lost.

        Returning (rather than being cancelled from outside) lets coredis unsubscribe while its
        connection still works: cancelled from outside, its cleanup meets a closed connection.
        """
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(self._read, pubsub)
            await self._stopping.wait()
            task_group.cancel_scope.cancel()

    def stop(self) -> None:
        """Ask the reader to unsubscribe and close its connection (``run`` then returns)."""
        self._stopping.set()

    async def _read(self, pubsub: coredis.patterns.pubsub.PubSub[str]) -> None:
        """Fan each message out locally, forever; raises when the connection is lost."""
        while True:
            message = await pubsub.get_message()
            if message is not None and message["type"] == "message":
                self._hub.deliver(str(message["channel"]), str(message["data"]))

    def _disconnected(self) -> None:
        self._pubsub = None
        self._subscribed = set()
        self._lost.set()
        if self._connected.is_set():
            self._connected = anyio.Event()

    async def publish(self, channel: str, data: str) -> None:
        client = self._client
        if client is None:
            raise RuntimeError("the broadcast is not running: use 'async with broadcast:'")
        try:
            with anyio.fail_after(self._publish_timeout):
                await client.publish(channel, data)
        except _connection_errors() as error:
            raise BroadcastUnavailable(
                f"cannot publish to Redis at {self._url}: {_first(error) or 'timed out'}"
            ) from error

    async def listen(self, channel: str) -> None:
        """Make sure Redis sends us ``channel`` (the hub already lists it), bounded in time.

        If the connection breaks meanwhile, the reconnect subscribes to it (it is in the hub),
        so waiting for the next connection is enough.
        """
        if self._client is None:
            raise RuntimeError("the broadcast is not running: use 'async with broadcast:'")
        try:
            with anyio.fail_after(self._connect_timeout):
                while (lost := await self._try_listen(channel)) is not None:
                    await lost.wait()  # the reconnect will subscribe to it
        except TimeoutError:
            raise BroadcastUnavailable(
                f"cannot subscribe to {channel!r}: Redis at {self._url} is unreachable"
            ) from None

    async def _try_listen(self, channel: str) -> anyio.Event | None:
        """Subscribe on the current connection; ``None`` on success, else the event that is
        set when that connection has been given up."""
        await self._connected.wait()
        async with self._lock:
            if channel in self._subscribed:
                return None
            lost, pubsub = self._lost, self._pubsub
            if pubsub is None:
                return lost
            try:
                await pubsub.subscribe(channel)
            except _connection_errors():
                return lost
            self._subscribed.add(channel)
            return None

    async def unlisten(self, channel: str) -> None:
        """Tell Redis we no longer want ``channel`` if no local subscriber does (shielded)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(_UNSUBSCRIBE_TIMEOUT):
            async with self._lock:
                if self._hub.wanted(channel) or channel not in self._subscribed:
                    return
                self._subscribed.discard(channel)
                if self._pubsub is not None:
                    try:
                        await self._pubsub.unsubscribe(channel)
                    except _connection_errors():
                        pass  # the connection is going; the next one will not subscribe


def _first(error: BaseException) -> str:
    """A one-line description of ``error``, looking inside exception groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return str(error)


class Broadcast:
    """Publish/subscribe on named channels; the backend is chosen by ``url``.

    ``queue_size`` and ``overflow`` are the defaults for ``subscribe`` (see the module
    docstring for the slow-subscriber policy). ``connect_timeout`` bounds startup and
    ``subscribe``; ``publish_timeout`` bounds ``publish``; ``reconnect_max_delay`` is the
    longest pause between reconnection attempts, so delivery resumes at most about that long
    after Redis is back.
    """

    def __init__(
        self,
        url: str = "memory://",
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        overflow: Overflow = "drop_oldest",
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
        reconnect_max_delay: float = DEFAULT_RECONNECT_MAX_DELAY,
    ) -> None:
        _check_queue(queue_size, overflow)
        for name, value in [
            ("connect_timeout", connect_timeout),
            ("publish_timeout", publish_timeout),
            ("reconnect_max_delay", reconnect_max_delay),
        ]:
            if value <= 0:
                raise ValueError(f"{name} must be positive")
        self.url = url
        self.queue_size = queue_size
        self.overflow: Overflow = overflow
        self._hub = _Hub()
        self._backend: _Backend
        scheme = url.partition("://")[0].lower()
        if scheme == "memory":
            self._backend = _MemoryBackend(self._hub)
        elif scheme in {"redis", "rediss", "unix"}:
            self._backend = _RedisBackend(
                url,
                self._hub,
                connect_timeout=connect_timeout,
                publish_timeout=publish_timeout,
                reconnect_max_delay=reconnect_max_delay,
            )
        else:
            raise ValueError(
                f"unsupported broadcast URL {url!r}: use memory:// or redis://host:port/db"
            )
        self._stack: AsyncExitStack | None = None

    @property
    def dropped(self) -> int:
        """Messages dropped so far, over all subscribers, because they did not keep up."""
        return self._hub.dropped

    async def __aenter__(self) -> Broadcast:
        """Open the backend; ``BroadcastUnavailable`` if Redis is unreachable for too long."""
        if self._stack is not None:
            raise RuntimeError("this broadcast is already running")
        with collapse_excgroups():
            await self._start()
        return self

    async def _start(self) -> None:
        async with AsyncExitStack() as stack:
            task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(task_group.cancel_scope.cancel)  # the last resort, see _stop
            stopped = anyio.Event()
            stack.push_async_callback(self._stop, stopped)
            stack.callback(self._hub.close_all)
            await task_group.start(self._run_backend, stopped)
            self._stack = stack.pop_all()

    async def _run_backend(
        self, stopped: anyio.Event, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        try:
            await self._backend.run(task_status=task_status)
        finally:
            stopped.set()

    async def _stop(self, stopped: anyio.Event) -> None:
        """Let the backend close its connections; cancel it if that takes too long."""
        self._backend.stop()
        with anyio.move_on_after(_STOP_TIMEOUT, shield=True):
            await stopped.wait()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """End every subscription, stop the reader, close the connections."""
        stack, self._stack = self._stack, None
        if stack is not None:
            with collapse_excgroups():
                await stack.__aexit__(exc_type, exc, traceback)

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[Mapping[str, Any]]:
        """``App(lifespan=broadcast.lifespan)``: run for as long as the app; yields
        ``{"broadcast": self}`` (so ``app.state["broadcast"]``). To combine it with a lifespan
        of your own, enter ``async with broadcast:`` in yours instead."""
        async with self:
            yield {"broadcast": self}

    async def publish(self, channel: str, data: str) -> None:
        """Send ``data`` to every current subscriber of ``channel``, on every worker.

        Never waits for subscribers. Raises ``BroadcastUnavailable`` when Redis cannot be
        reached within ``publish_timeout``, ``RuntimeError`` for a Redis broadcast that was not
        started, ``TypeError`` if ``data`` is not ``str``.
        """
        if not isinstance(data, str):
            raise TypeError(f"broadcast messages are str, not {type(data).__name__}")
        await self._backend.publish(channel, data)

    @asynccontextmanager
    async def subscribe(
        self,
        channel: str,
        *,
        queue_size: int | None = None,
        overflow: Overflow | None = None,
    ) -> AsyncIterator[Subscription]:
        """Receive what is published on ``channel`` while the block runs.

        The subscription is live when the block is entered. Raises ``BroadcastUnavailable``
        when Redis cannot confirm the subscription within ``connect_timeout``.
        """
        size = self.queue_size if queue_size is None else queue_size
        policy = self.overflow if overflow is None else overflow
        _check_queue(size, policy)
        subscription = self._hub.subscribe(channel, size, policy)
        try:
            await self._backend.listen(channel)
            yield subscription
        finally:
            self._hub.remove(subscription)
            subscription._close(discard=True)  # reads after the block: SubscriptionClosed
            await self._backend.unlisten(channel)


def _check_queue(queue_size: int, overflow: str) -> None:
    if queue_size < 1:
        raise ValueError("queue_size must be at least 1")
    if overflow not in ("drop_oldest", "disconnect"):
        raise ValueError('overflow must be "drop_oldest" or "disconnect"')
