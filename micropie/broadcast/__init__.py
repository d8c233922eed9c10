"""Publish/subscribe on named channels, in one process or across workers and machines.

A chat room or a live dashboard served by several hypercorn workers must deliver a message
published on one worker to the clients of every worker. ``Broadcast`` does that for any
handler (WebSocket, SSE, HTTP), on asyncio and trio::

    broadcast = Broadcast(os.environ.get("BROADCAST_URL", "memory://"))
    app = MyApp(lifespan=broadcast.lifespan)

    class MyApp(App):
        async def ws_feed(self, ws, topic):
            await ws.accept()
            async with broadcast.forward(topic, ws):  # what is published goes to ws
                async for text in ws:  # meanwhile, read the client until it leaves
                    ...

        async def ws_titles(self, ws, topic):
            await ws.accept()
            async with broadcast.subscribe(topic) as messages:  # for any other use
                async for message in messages:
                    await ws.send_text(message.data.upper())

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

Forwarding to WebSockets
------------------------
``forward(channel, ws)`` sends what is published to ``ws`` while its block runs, from the
broadcast's delivery workers rather than a task per connection: the same queue, policy and
scope as a subscription, for about 40 % less server CPU per delivery (see ``_forward``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any

import anyio
import anyio.abc

from micropie.broadcast._backend import _Backend, _MemoryBackend
from micropie.broadcast._errors import (
    BroadcastError,
    BroadcastUnavailable,
    SlowSubscriber,
    SubscriptionClosed,
)
from micropie.broadcast._forward import (
    DELIVERY_WORKERS as DELIVERY_WORKERS,  # public: the pool's size
)
from micropie.broadcast._forward import DeliveryPool, Forward, TextSink
from micropie.broadcast._local import WAKE_WINDOW as WAKE_WINDOW  # public: the wake-up window size
from micropie.broadcast._local import Message, Overflow, Subscription, _Hub
from micropie.broadcast._redis import _RedisBackend
from micropie.core.concurrency import collapse_excgroups
from micropie.websocket import ConnectionNotOpen

__all__ = [
    "Broadcast",
    "BroadcastError",
    "BroadcastUnavailable",
    "Forward",
    "Message",
    "Overflow",
    "SlowSubscriber",
    "Subscription",
    "SubscriptionClosed",
]


#: Messages a subscriber may have waiting before the overflow policy applies.
DEFAULT_QUEUE_SIZE = 100
#: Seconds to wait for Redis at startup and for a Redis subscription in ``subscribe``.
DEFAULT_CONNECT_TIMEOUT = 5.0
#: Seconds a ``publish`` may take before it fails with ``BroadcastUnavailable``.
DEFAULT_PUBLISH_TIMEOUT = 2.0
#: Longest pause between two attempts to reconnect to Redis.
DEFAULT_RECONNECT_MAX_DELAY = 2.0
#: Seconds the backend gets to close its connections at shutdown before it is cancelled.
_STOP_TIMEOUT = 2.0


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
        self._pool: DeliveryPool | None = None  # the forwards' workers, while running

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
            self._pool = DeliveryPool(task_group, DELIVERY_WORKERS)
            stack.callback(setattr, self, "_pool", None)
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

    def _queue_policy(
        self, queue_size: int | None, overflow: Overflow | None
    ) -> tuple[int, Overflow]:
        """A subscriber's queue size and overflow policy: its own, else the broadcast's."""
        size = self.queue_size if queue_size is None else queue_size
        policy = self.overflow if overflow is None else overflow
        _check_queue(size, policy)
        return size, policy

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
        size, policy = self._queue_policy(queue_size, overflow)
        subscription = self._hub.subscribe(channel, size, policy)
        try:
            await self._backend.listen(channel)
            yield subscription
        finally:
            self._hub.remove(subscription)
            subscription._close(discard=True)  # reads after the block: SubscriptionClosed
            await self._backend.unlisten(channel)

    @asynccontextmanager
    async def forward(
        self,
        channel: str,
        ws: TextSink,
        *,
        queue_size: int | None = None,
        overflow: Overflow | None = None,
        start: bool = True,
    ) -> AsyncIterator[Forward]:
        """Send what is published on ``channel`` to ``ws`` while the block runs.

        The way to fan a channel out to WebSockets: each message is sent with
        ``await ws.send_text(message.data)`` by the broadcast's delivery workers, not by a task
        of the connection, which costs about 40 % less CPU per delivery (see ``_forward``).
        Messages reach ``ws`` in order, one send at a time; ``queue_size`` and ``overflow``
        bound what waits for a slow client, as for ``subscribe``. The block is free for the
        handler's own work, typically reading the client::

            await ws.accept()
            async with broadcast.forward(room, ws):
                async for text in ws:
                    await broadcast.publish(room, text)

        A send that finds the client gone (``ConnectionClosed``, ``ConnectionNotOpen`` after
        the handler closed it, ``OSError``, anyio's closed-stream errors) ends the forwarding
        quietly. Under ``overflow="disconnect"`` an overflow cancels the block, which raises
        ``SlowSubscriber``; a send that raises anything else (any ``BaseException`` but
        ``KeyboardInterrupt`` and ``SystemExit``) is logged and does the same with that
        exception, as a task of the handler's would: the workers and other forwards go on.
        Leaving the block stops the forwarding: a send in progress is cancelled and waited
        for, none starts later. The wait is bounded (a second) for the shared workers; a
        worker of the block's own (a memory broadcast that is not running) is a task of the
        block, which waits for it as a task group does.

        The forward's sends and the handler's own are not ordered between them. To send
        something first (a greeting), pass ``start=False``: the subscription is live when the
        block is entered, but what is published waits in the queue until ``forward.start()``::

            async with broadcast.forward(room, ws, start=False) as forward:
                await ws.send_json({"type": "welcome"})  # first, and nothing missed
                forward.start()

        ``ConnectionNotOpen`` (a ``RuntimeError``) when ``ws`` is a WebSocket that is not open;
        ``BroadcastUnavailable`` as for ``subscribe``.
        """
        size, policy = self._queue_policy(queue_size, overflow)
        if getattr(ws, "accepted", True) is False:
            raise ConnectionNotOpen("the WebSocket is not open: accept it before forwarding to it")
        if self._pool is not None:
            async with self._forwarding(channel, ws, size, policy, self._pool, start) as forward:
                yield forward
            return
        # A memory broadcast that is not running: a worker of the forward's own, a task of this
        # block. Its task group puts what the block raises in a group, which is unwrapped.
        with collapse_excgroups(levels=1):
            async with anyio.create_task_group() as own_worker:
                pool = DeliveryPool(own_worker, 1, watch_stalls=False)
                try:
                    async with self._forwarding(channel, ws, size, policy, pool, start) as forward:
                        yield forward
                finally:
                    own_worker.cancel_scope.cancel()

    @asynccontextmanager
    async def _forwarding(
        self,
        channel: str,
        ws: TextSink,
        size: int,
        policy: Overflow,
        pool: DeliveryPool,
        start: bool,
    ) -> AsyncIterator[Forward]:
        """The forward's life: in the hub, listened to, in its block; then left, in order."""
        forward = Forward(self._hub.channel(channel), ws, size, policy, pool, start=start)
        self._hub.add_forward(forward)
        async with AsyncExitStack() as stack:
            stack.push_async_callback(self._backend.unlisten, channel)
            stack.push_async_callback(forward.leave)
            stack.callback(self._hub.remove, forward)
            await self._backend.listen(channel)
            if forward._error is None:  # it can fail while Redis confirms the subscription
                with forward._block_scope():
                    yield forward
        if forward._error is not None:
            raise forward._error


def _check_queue(queue_size: int, overflow: str) -> None:
    if queue_size < 1:
        raise ValueError("queue_size must be at least 1")
    if overflow not in ("drop_oldest", "disconnect"):
        raise ValueError('overflow must be "drop_oldest" or "disconnect"')


# The public classes say they live here, where they are imported from (as in micropie.testing):
# reprs and tracebacks name ``micropie.broadcast.SlowSubscriber``, as before the split.
for _name in __all__:
    if isinstance(globals()[_name], type):
        globals()[_name].__module__ = __name__
del _name
