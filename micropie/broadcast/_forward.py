"""Forwarding a channel to WebSockets: ``Forward`` and the delivery workers that send for it.

A subscriber task per WebSocket (``subscribe`` + ``async for`` + ``send_text``) wakes 1,000
tasks for every message at 1,000 subscribers, and each wake-up resumes and suspends that task's
whole chain of coroutines (the server's, the app's, the handler's, the wait's) three times per
delivery, each chain cold in the CPU's caches. ``Broadcast.forward`` sends from a few
*delivery workers* instead: a worker takes a forward that has messages waiting, sends it one
(its own chain stays warm, and sixteen of them run in one pass of the event loop), and goes on
to the next. Measured on hypercorn's trio worker with 1,000 subscribers: 26-33 µs of server CPU
per delivery against 47-53 µs with a task per subscriber (docs/broadcast.md, Performance).

What a task per subscriber gives for free is kept:

* **Backpressure per subscriber.** A forward is never in two workers at once, so a WebSocket
  gets one send at a time, in publish order; its queue is bounded (``queue_size``) with the
  same overflow policy as a subscription. A client that stops reading holds one worker in its
  send, and its queue overflows: nobody else waits for it. When sends have been stuck for
  ``STALLED_AFTER`` seconds, the pool starts more workers, so that ``DELIVERY_WORKERS`` are
  always free to serve the others, however many clients stall.
* **Nothing outlives the block.** Leaving ``forward`` removes it from the channel, cancels a
  send a worker is making to it and waits for that (bounded), so no send reaches the
  WebSocket from the broadcast afterwards. A forward whose queue overflows under
  ``overflow="disconnect"``, or whose send fails unexpectedly, cancels its block, which then
  raises that error: a failure is never silent, as in a task group.

The workers live in the broadcast's task group, so the pool exists while the broadcast is
entered (``async with broadcast`` or its lifespan). A memory broadcast used without being
entered gives each forward a pool of one worker of its own, in the block, instead.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
import anyio.abc
import anyio.lowlevel

from micropie.broadcast._errors import BroadcastError
from micropie.broadcast._local import Message, Overflow, _Channel, _Member
from micropie.websocket import ConnectionClosed, ConnectionNotOpen

logger = logging.getLogger("micropie")

#: Delivery workers shared by the forwards of a running broadcast: the sends in progress at
#: once. Sixteen, like ``WAKE_WINDOW`` and for the same reason: on hypercorn's trio worker each
#: send in progress is 20-25 objects, and a few hundred young objects keep the garbage collector
#: quiet; more workers do not deliver faster on one core.
DELIVERY_WORKERS = 16
#: Seconds one send may take before its worker counts as stalled (a client that stopped
#: reading) and the pool starts another worker in its place.
STALLED_AFTER = 0.25
#: Seconds leaving a ``forward`` block waits for the send in progress to it to end.
LEAVE_TIMEOUT = 1.0
#: Sends a worker makes before it lets the event loop run, at least. A server's ``send()`` need
#: not yield (hypercorn's asyncio worker only writes to its transport): without this, one worker
#: woken by a message for 1,000 forwards would send all 1,000 before anything else ran.
SENDS_BETWEEN_CHECKPOINTS = 16

#: What a failed send means when it is one of these: the client is gone, or the handler
#: closed the connection. The forward ends quietly; the handler learns it from the connection.
_GONE = (
    ConnectionClosed,
    ConnectionNotOpen,
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)


class TextSink(Protocol):
    """Where a forward sends: micropie's ``WebSocket``, or anything with ``send_text``."""

    def send_text(self, data: str) -> Awaitable[None]: ...


class Forward(_Member):
    """A WebSocket (or any ``TextSink``) that a channel is forwarded to.

    Made by ``Broadcast.forward``; it lives as long as that block. ``queued`` and ``dropped``
    say how well the client keeps up; ``start()`` begins sending for one made with
    ``start=False``.
    """

    __slots__ = ("_error", "_held", "_left", "_pool", "_scheduled", "_scope", "_send", "_sender")

    def __init__(
        self,
        channel: _Channel,
        sink: TextSink,
        queue_size: int,
        overflow: Overflow,
        pool: DeliveryPool,
        *,
        start: bool = True,
    ) -> None:
        super().__init__(channel, queue_size, overflow)
        self._send: Callable[[str], Awaitable[None]] = sink.send_text
        self._pool = pool
        self._held = not start  # messages wait until ``start()``
        # In the pool's ready queue or being sent to; a held forward counts as scheduled, so
        # that a delivery only queues its message (the channel schedules no one twice).
        self._scheduled = self._held
        self._sender: _Worker | None = None  # the worker sending to it right now
        self._left: anyio.Event | None = None  # set when that send has ended (see leave)
        self._scope: anyio.CancelScope | None = None  # the block's, cancelled on failure
        self._error: BaseException | None = None  # what leaving the block raises

    def offer(self, message: Message) -> int:
        """Queue ``message`` for sending, never waiting, and put the forward in the pool's
        ready queue unless it is there (or being sent to, or held); return how many messages
        were dropped to make room (0 or 1). The channel calls it for each message published:
        an application publishes instead."""
        queue = self._queue
        if len(queue) < self.queue_size and not self._closed:  # _accepts, inlined: hot path
            queue.append(message)
            if not self._scheduled:  # not waiting for a worker, nor being sent to
                self._scheduled = True
                self._pool.schedule(self)
            return 0
        return self._overflow(message)

    def close(self) -> None:
        """Nothing more is sent to it (what is queued is dropped). The broadcast calls it
        when it shuts down; leaving the ``forward`` block does the same and more."""
        self._end(discard=True)

    def start(self) -> None:
        """Begin sending, for a forward made with ``start=False``: what was published since
        the block was entered (at most ``queue_size`` messages) goes first. Idempotent."""
        if not self._held:
            return
        self._held = False
        self._scheduled = False
        if self._queue and not self._closed:
            self._scheduled = True
            self._pool.schedule(self)

    def _disconnect(self) -> None:
        self._fail(self._slow_error())

    def _fail(self, error: BaseException) -> None:
        """End the forward and cancel its block, which raises ``error`` when left."""
        self.close()
        if self._error is None:
            self._error = error
        if self._scope is not None:
            self._scope.cancel()

    async def leave(self) -> None:
        """Close it and wait (bounded, shielded) for a send in progress to it to end."""
        self.close()
        worker = self._sender
        if worker is None:
            return
        self._left = left = anyio.Event()
        worker.cancel_send()
        with anyio.move_on_after(LEAVE_TIMEOUT, shield=True):
            await left.wait()
        if self._sender is not None:
            logger.debug("A send to a forward of %r outlived its block", self.channel)

    def _block_scope(self) -> anyio.CancelScope:
        """The scope of the ``forward`` block, which a failure cancels (see ``_fail``)."""
        self._scope = anyio.CancelScope()
        return self._scope

    def _send_ended(self) -> None:
        self._sender = None
        if self._left is not None:
            self._left.set()


class _Worker:
    """One delivery worker's state, for the pool and for a forward that leaves."""

    __slots__ = ("scope", "sending", "sends", "wakeup")

    def __init__(self) -> None:
        self.scope: anyio.CancelScope | None = None  # renewed after a cancelled send
        self.sending: Forward | None = None
        self.sends = 0  # sends finished, so the pool can tell a stalled worker
        self.wakeup: anyio.Event | None = None  # set to give an idle worker work

    def cancel_send(self) -> None:
        if self.scope is not None:
            self.scope.cancel()


class DeliveryPool:
    """Workers that send the messages of forwards that have some waiting, one at a time each.

    ``schedule`` puts a forward in the ready queue (the channel does, when a message reaches
    a forward that was not in it) and wakes an idle worker. A worker sends one message per
    turn, then puts the forward back at the end of the queue if more wait: forwards are served
    round robin, so a forward with many messages waiting does not starve the others. Every
    ``SENDS_BETWEEN_CHECKPOINTS`` sends a worker lets the event loop run, so a burst to many
    clients never holds it for long even when the server's sends do not yield.
    """

    def __init__(
        self, task_group: anyio.abc.TaskGroup, size: int, *, watch_stalls: bool = True
    ) -> None:
        self.ready: deque[Forward] = deque()
        self._size = size
        self._task_group = task_group
        self._workers: set[_Worker] = set()
        self._idle: list[_Worker] = []
        self._stalled = 0  # workers stuck in one send, as of the last look (_watch_stalls)
        for _ in range(size):
            self._start_worker()
        if watch_stalls:
            task_group.start_soon(self._watch_stalls)

    def schedule(self, forward: Forward) -> None:
        self.ready.append(forward)
        if self._idle:
            worker = self._idle.pop()
            assert worker.wakeup is not None
            worker.wakeup.set()

    def _start_worker(self) -> None:
        worker = _Worker()
        self._workers.add(worker)
        self._task_group.start_soon(self._serve, worker)

    async def _serve(self, worker: _Worker) -> None:
        """Run one worker until the pool stops or it is not needed any more."""
        try:
            needed = True
            while needed:
                with anyio.CancelScope() as worker.scope:
                    needed = await self._work(worker)
                # A forward that left cancelled the send to it, which is over now: say so,
                # and carry on with a fresh scope.
                self._send_ended(worker)
        finally:
            self._send_ended(worker)
            self._workers.discard(worker)
            if worker in self._idle:
                self._idle.remove(worker)

    @staticmethod
    def _send_ended(worker: _Worker) -> None:
        """The worker's send ended (or was cancelled, or the worker stops): the forward is
        free again, and a block leaving meanwhile may go on."""
        forward, worker.sending = worker.sending, None
        if forward is not None:
            worker.sends += 1  # a send ended: not the same one at the next stall check
            forward._scheduled = False
            forward._send_ended()

    async def _work(self, worker: _Worker) -> bool:
        """Send until there is nothing to do; ``False`` when this worker is not needed any
        more, ``True`` when its scope was cancelled just as a send ended (renew it)."""
        ready = self.ready
        scope = worker.scope
        assert scope is not None
        sends_in_a_row = 0
        while True:
            while ready:
                if sends_in_a_row == SENDS_BETWEEN_CHECKPOINTS:
                    sends_in_a_row = 0
                    await anyio.lowlevel.checkpoint()
                    continue  # the forwards may have changed meanwhile
                sends_in_a_row += 1
                forward = ready.popleft()
                queue = forward._queue
                if not queue:  # closed since it was scheduled
                    forward._scheduled = False
                    continue
                message = queue.popleft()
                worker.sending = forward
                forward._sender = worker
                try:
                    await forward._send(message.data)
                except _GONE:
                    logger.debug("Forwarding %r ended: the client is gone", forward.channel)
                    forward.close()
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as error:
                    # A cancellation is the worker's own (a forward that left, or the pool
                    # shutting down) or came from inside the send (asyncio lets a library
                    # cancel a future it awaits): only the second is the forward's failure.
                    if isinstance(error, anyio.get_cancelled_exc_class()):
                        if scope.cancel_called:
                            raise
                        await anyio.lowlevel.checkpoint_if_cancelled()  # raises if ours
                    _send_failed(forward, error)
                self._send_ended(worker)
                if queue:  # more waiting: back in line, behind the others
                    forward._scheduled = True
                    ready.append(forward)
                if scope.cancel_called:  # the send ended before the cancellation arrived
                    return True
            if len(self._workers) - self._stalled > self._size:
                return False
            worker.wakeup = anyio.Event()
            self._idle.append(worker)
            await worker.wakeup.wait()
            sends_in_a_row = 0

    async def _watch_stalls(self) -> None:
        """Every ``STALLED_AFTER`` seconds: count the workers still in the send they were in
        at the last look (so for ``STALLED_AFTER`` at least), and start workers so that
        ``size`` are not stuck."""
        sending_at_last_look: dict[_Worker, int] = {}  # a worker sending then: its sends
        while True:
            await anyio.sleep(STALLED_AFTER)
            self._stalled = sum(
                1
                for worker in self._workers
                if worker.sending is not None
                and sending_at_last_look.get(worker) == worker.sends  # the same send
            )
            sending_at_last_look = {
                worker: worker.sends for worker in self._workers if worker.sending is not None
            }
            for _ in range(self._size - (len(self._workers) - self._stalled)):
                self._start_worker()


def _send_failed(forward: Forward, error: BaseException) -> None:
    """A send raised something else than "the client is gone": a bug, or a cancellation from
    inside the send. The forward's block is cancelled and raises it (a cancellation as a
    ``BroadcastError``: it is not the handler's own), unless the block was left already."""
    if forward._left is not None:
        logger.debug("A send to a forward of %r failed after it was left", forward.channel)
        forward.close()
        return
    if isinstance(error, anyio.get_cancelled_exc_class()):
        cancelled = error
        error = BroadcastError(f"a send to a forward of {forward.channel!r} was cancelled")
        error.__cause__ = cancelled
    logger.error("Forwarding %r failed", forward.channel, exc_info=error)
    forward._fail(error)
