"""Fan-out inside one process: messages, subscriptions, and the channels that wake readers.

``_Hub`` holds the local channels; each ``_Channel`` holds its subscribers and delivers to
them without ever waiting, waking parked readers a window at a time. Every backend delivers
through the hub: the memory backend directly, the Redis backend from its reader task.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import anyio
import anyio.lowlevel

from micropie.broadcast._errors import BroadcastError, SlowSubscriber, SubscriptionClosed

#: What to do when a subscriber's queue is full (see the ``micropie.broadcast`` docstring).
Overflow = Literal["drop_oldest", "disconnect"]


@dataclass(frozen=True, slots=True)
class Message:
    """One published message: the channel it was published on and its text."""

    channel: str
    data: str


class Recipient(Protocol):
    """What a channel delivers to besides the subscriptions it wakes: a ``Forward``, whose
    messages the delivery workers send (see ``_forward``).

    A protocol, so that this module, below ``_forward``, imports nothing from it: the
    forward itself decides what a delivery does to its queue and its worker.
    """

    @property
    def channel(self) -> str:
        """The name of the channel it receives."""
        ...

    def offer(self, message: Message) -> int:
        """Queue ``message`` without waiting; return how many messages were dropped."""
        ...

    def close(self) -> None:
        """Nothing more will be delivered (the broadcast shuts down)."""
        ...


class _Member:
    """A subscriber's bounded queue of messages on one channel, and its overflow policy.

    What a ``Subscription`` (read by its own task) and a ``Forward`` (sent by the delivery
    workers) have in common: a delivery appends to ``_queue`` without ever waiting, and a
    full queue applies ``overflow`` (see the ``micropie.broadcast`` docstring). The slots
    declared here change only through the methods defined here (``_accepts``, ``_overflow``,
    ``_end``); a subclass reads them.
    """

    __slots__ = (
        "_channel",
        "_closed",
        "_overflowed",
        "_queue",
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

    @property
    def queued(self) -> int:
        """Messages delivered and not read (or sent) yet: never more than ``queue_size``."""
        return len(self._queue)

    def _accepts(self) -> bool:
        """A delivery may append to ``_queue``: it is open and not full."""
        return len(self._queue) < self.queue_size and not self._closed

    def _end(self, *, discard: bool) -> None:
        """Nothing more will be delivered; drop what is queued if ``discard``."""
        self._closed = True
        if discard:
            self._queue.clear()

    def _overflow(self, message: Message) -> int:
        """``message`` arrives and the queue is full (or closed); 1 if a message was dropped."""
        if self._closed:
            return 0
        if self.overflow == "disconnect":
            self._overflowed = True
            self._disconnect()
            return 0
        self._queue.popleft()
        self._queue.append(message)
        self.dropped += 1
        return 1

    def _disconnect(self) -> None:
        """The queue overflowed under ``overflow="disconnect"``: end this subscriber."""
        raise NotImplementedError

    def _slow_error(self) -> SlowSubscriber:
        return SlowSubscriber(
            f"subscriber to {self.channel!r} did not keep up: more than "
            f"{self.queue_size} messages were waiting"
        )


class Subscription(_Member):
    """A subscriber's bounded queue of messages on one channel; read it with ``async for``.

    Made by ``Broadcast.subscribe``; valid only inside that block.

    Not an anyio memory object stream, for two reasons found by measuring 1,000 subscribers
    (see the Performance section of docs/broadcast.md): a memory stream allocates an
    ``Event`` and a receiver record per waiting reader per message, which kept the garbage
    collector busy; and the wake-ups are better paced by the channel (``_Channel``) than all
    at once. Here a delivery is a ``deque.append``; a reader with nothing to read parks on
    an event of its own and the channel wakes it.

    Reading is one coroutine (``_next``), because every frame between the handler's
    ``async for`` and the event loop is entered and left twice per message on each reader,
    and is a fresh object that lives while the reader waits. The reader waits on an
    ``Event``, not on a reusable ``Semaphore``: on trio a semaphore that makes its caller
    wait raises and catches ``WouldBlock`` inside, and the exception, its two tracebacks
    and a frame stay alive for the whole wait (17 fresh objects per waiting reader, 14
    with the event; 20-25 % less CPU per wake-up on trio, measured).
    """

    __slots__ = ("_wakeup", "_woken")

    def __init__(self, channel: _Channel, queue_size: int, overflow: Overflow) -> None:
        super().__init__(channel, queue_size, overflow)
        self._wakeup: anyio.Event | None = None  # what the current (or last) wait waits on
        self._woken = False  # the channel set _wakeup for the current wait

    def _disconnect(self) -> None:
        self._close(discard=True)

    def _close(self, *, discard: bool = False) -> None:
        """No more messages: a reader gets what is queued (unless ``discard``), then the end
        (``SubscriptionClosed``, or ``SlowSubscriber`` after an overflow, which discards)."""
        self._end(discard=discard)
        self._channel.wake_closed(self)

    def _closed_error(self) -> BroadcastError:
        if self._overflowed:
            return self._slow_error()
        return SubscriptionClosed(f"subscription to {self.channel!r} is closed")

    def receive(self) -> Coroutine[Any, Any, Message]:
        """The next message, waiting for one (awaitable).

        Raises ``SlowSubscriber`` after an overflow with ``overflow="disconnect"``, and
        ``SubscriptionClosed`` once the broadcast shut down and the queue is empty. Like any
        anyio receive it is always a checkpoint: a subscriber that never runs dry still lets
        the other tasks run, and can be cancelled.
        """
        return self._next(iterating=False)

    def __aiter__(self) -> Subscription:
        return self

    def __anext__(self) -> Coroutine[Any, Any, Message]:
        """Like ``receive``, but the end of the broadcast ends the iteration quietly."""
        return self._next(iterating=True)

    async def _next(self, iterating: bool) -> Message:
        """``receive`` and ``__anext__`` in one frame (see the class docstring)."""
        queue = self._queue
        if queue:
            await anyio.lowlevel.checkpoint()
        while not queue:
            if self._closed:
                await anyio.lowlevel.checkpoint()
                if iterating and not self._overflowed:
                    raise StopAsyncIteration
                raise self._closed_error()
            # Park until the channel wakes this reader (a message or a close, usually).
            channel = self._channel
            wakeup = self._wakeup = channel.new_event()
            self._woken = False
            channel.parked.append(self)
            try:
                await wakeup.wait()  # the checkpoint
            finally:
                if self._woken:
                    channel.resumed()  # even if cancelled: pass the wake-up on
                else:  # cancelled while parked: not counted anywhere
                    with suppress(ValueError):
                        channel.parked.remove(self)
        return queue.popleft()


#: Readers of a channel woken and not yet running, at most (see ``_Channel``).
WAKE_WINDOW = 16


class _Channel:
    """The local subscribers of one channel, and the readers among them that are parked.

    Delivery appends the message to every subscriber's queue, then wakes the parked readers,
    but at most ``WAKE_WINDOW`` at a time: each reader woken wakes the next one when it
    resumes. Why not all at once: on trio each WebSocket send in hypercorn yields halfway, so
    1,000 readers woken together are 1,000 half-done sends alive at once, tens of thousands
    of objects that the garbage collector then promotes and walks again and again (full
    collections of 100+ ms, the whole p99). A window keeps a few dozen alive, costs nothing
    in throughput, and the last reader is woken no later.

    Why 16: the young objects alive at once are about ``WAKE_WINDOW`` half-done sends of
    20-25 objects each on hypercorn-trio. At 32 that is about the collector's threshold
    (700), so most messages set off a young collection, and each one walks every waiting
    reader's fresh wait (about 14,000 objects at 1,000 subscribers: 3-6 ms). At 16 the
    collections are rare, and the wake-ups cost the same per delivery (measured 8 to 128).

    A reader parks only when its queue is empty and a delivery reaches every subscriber, so
    the parked readers that have something to read are always a prefix of ``parked``.
    A woken reader that is cancelled still passes the wake-up on, so nobody is forgotten.
    The channel exists only while it has subscribers.
    """

    __slots__ = ("_running", "forwards", "name", "new_event", "parked", "subscribers")

    def __init__(self, name: str) -> None:
        self.name = name
        self.subscribers: dict[Subscription, None] = {}  # a set that keeps join order
        self.forwards: dict[Recipient, None] = {}  # sent by delivery workers (see _forward)
        self.parked: deque[Subscription] = deque()  # readers waiting, in arrival order
        self._running = 0  # readers woken that have not resumed yet
        self.new_event = _event_factory()

    def deliver(self, message: Message) -> int:
        """Queue ``message`` for every subscriber, never waiting; return how many messages
        were dropped to make room (see ``_Member._overflow``).

        The subscriptions' test is written out here rather than called (``_accepts``): this
        loop runs once per subscriber per message. A forward decides for itself (``offer``).
        """
        dropped = 0
        for subscription in self.subscribers:  # nothing here awaits: the dict cannot change
            queue = subscription._queue
            if len(queue) < subscription.queue_size and not subscription._closed:
                queue.append(message)
            else:
                dropped += subscription._overflow(message)
        for forward in self.forwards:
            dropped += forward.offer(message)
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
        reader._wakeup.set()


def _event_factory() -> Callable[[], anyio.Event]:
    """The running backend's ``anyio.Event`` class, to make one per wait cheaply.

    ``anyio.Event()`` looks the backend up on every call, and builds the backend's event
    twice (its ``__new__`` returns an event the class call then initialises again); the
    class it returns does neither (0.7 µs per wait on trio). A channel lives only while it
    has subscribers, inside one event loop, so it asks once. Outside an event loop anyio
    gives a lazy adapter, which works too.
    """
    return type(anyio.Event())


class _Hub:
    """The local channels, and delivery to their subscribers (never blocks)."""

    def __init__(self) -> None:
        self._channels: dict[str, _Channel] = {}
        self.dropped = 0

    def channel(self, name: str) -> _Channel:
        """The channel called ``name``, made for a first subscriber."""
        found = self._channels.get(name)
        if found is None:
            found = self._channels[name] = _Channel(name)
        return found

    def subscribe(self, channel: str, queue_size: int, overflow: Overflow) -> Subscription:
        found = self.channel(channel)
        subscription = Subscription(found, queue_size, overflow)
        found.subscribers[subscription] = None
        return subscription

    def add_forward(self, forward: Recipient) -> None:
        self.channel(forward.channel).forwards[forward] = None

    def remove(self, member: Subscription | Recipient) -> None:
        channel = self._channels.get(member.channel)
        if channel is None:
            return
        if isinstance(member, Subscription):
            if channel is not member._channel:
                return  # its channel ended, and another of that name began since
            channel.subscribers.pop(member, None)
        else:
            channel.forwards.pop(member, None)
        if not channel.subscribers and not channel.forwards:
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
                subscription._end(discard=False)
            for forward in channel.forwards:
                forward.close()
            channel.wake_ready()  # every parked reader is closed now: a prefix of all
