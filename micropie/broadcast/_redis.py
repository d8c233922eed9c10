"""The Redis backend: pub/sub through coredis, one subscriber connection per process.

The reader task keeps that connection open, reconnects with backoff when Redis goes away and
subscribes again to every channel the hub still wants; ``publish`` uses a pooled connection.
Every wait on Redis is bounded (see the ``micropie.broadcast`` docstring, Lifetime).
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from micropie.broadcast._errors import BroadcastUnavailable
from micropie.broadcast._local import _Hub
from micropie.core.concurrency import collapse_excgroups

if TYPE_CHECKING:
    import coredis

logger = logging.getLogger("micropie")

_RECONNECT_FIRST_DELAY = 0.1
#: Seconds allowed for telling Redis that a channel is no longer wanted (shielded).
_UNSUBSCRIBE_TIMEOUT = 1.0


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

        from micropie.sessions.redis import redis_client

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
