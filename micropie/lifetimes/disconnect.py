"""Binding a request's lifetime to its connection, cheaply.

Theory of operation
-------------------
Servers do not cancel an app when its client leaves: hypercorn only queues ``http.disconnect``
on ``receive()`` and turns later sends into no-ops. So someone must read ``receive()`` while the
handler runs, and cancel the handler when the client goes. The obvious way, a task group with a
watcher task per request, costs 50–95 µs per request (more than the rest of the framework), and
almost every request finishes long before a watcher could ever matter.

So the watcher is given late, by a *sweeper*:

1. Each request runs in a plain ``anyio.CancelScope`` (a few µs, no task) and registers itself
   in the sweeper's ``in_flight`` set. While it reads its body it is *reading*; once the body is
   in (or when it has none) it is *watchable*.
2. The sweeper, a task in the app's lifespan task group, wakes every ``SWEEP_INTERVAL`` seconds
   while requests are in flight. A watchable request it finds for the second time (so one that
   has run for at least one interval) gets a watcher task, started in the sweeper's task group.
3. The watcher awaits ``receive()``; on ``http.disconnect`` it marks the request as abandoned and
   cancels the request's scope. The handler sees a cancellation at its next checkpoint, its
   ``finally`` blocks run, and the request ends without a response.
4. When the request's scope closes, it unregisters, cancels its watcher and waits for it, so no
   task outlives the ASGI call.

A disconnect therefore cancels a handler within ``2 × SWEEP_INTERVAL`` plus one checkpoint, and
short requests never pay for a task. A reading request never gets a watcher, so the watcher and
the body reader never wait on ``receive()`` at the same time.

The sweeper also enforces the body timeout: a reading request records when its current
``receive()`` must have answered, and the sweeper (which then wakes no later than the earliest
such deadline) cancels it past that time. One timer for all requests instead of one per body
chunk: per-message cancel scopes or deadlines cost a loop timer each on asyncio.

Without lifespan (a server that does not run it, or a test driving ``app(scope, receive, send)``
directly) there is no sweeper: each request opens its own task group, starts its watcher as soon
as it is watchable and puts body deadlines on its own scope. Slower, with the same guarantee.
Cancellation from outside (server shutdown) always propagates; only the cancellation this module
caused is swallowed.
"""

from __future__ import annotations

import logging
import math
import time
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import anyio.lowlevel

from micropie.core.concurrency import collapse_excgroups
from micropie.core.types import Receive
from micropie.websocket._lifetime import going_away_soon
from micropie.websocket._pump import sweep

if TYPE_CHECKING:
    from micropie.websocket import WebSocket

__all__ = [
    "SWEEP_INTERVAL",
    "ConnectionScope",
    "DisconnectSweeper",
    "watch_for_disconnect",
]

logger = logging.getLogger("micropie")

#: Seconds between sweeps. A client that leaves cancels its handler within two of them.
SWEEP_INTERVAL = 0.05


async def watch_for_disconnect(receive: Receive, cancel_scope: anyio.CancelScope) -> bool:
    """Read ``receive()`` until the client leaves, then cancel ``cancel_scope``.

    Returns ``True`` when the client left (the caller may record why before the cancelled
    task runs again: cancellation is delivered at its next checkpoint). Other messages (a body
    nobody asked for) are dropped; a ``receive()`` that fails is treated as the client leaving.
    """
    while True:
        try:
            message = await receive()
        except Exception:
            logger.debug("receive() failed; treating it as a disconnect", exc_info=True)
            message = {"type": "http.disconnect"}
        if message["type"] in ("http.disconnect", "websocket.disconnect"):
            cancel_scope.cancel()
            return True
        await anyio.lowlevel.checkpoint()  # a receive() that never blocks must not starve the loop


class ConnectionScope:
    """``async with`` block whose body is cancelled when the client disconnects.

    After the block, ``client_left`` tells whether that happened (then send nothing) and
    ``timed_out`` whether the body stalled (then answer 408). With ``reading=True`` the block
    starts by reading the body: call ``expect_body_within(seconds)`` before each ``receive()``
    and ``start_watching()`` once the body is in. A multipart request reads its body while the
    user code runs: its ``form`` reads on demand (see ``multipart``).
    """

    __slots__ = (
        "_receive",
        "_sweeper",
        "_task_group",
        "body_deadline",
        "cancel_scope",
        "client_left",
        "reading",
        "seen",
        "stalled",
        "watcher_done",
        "watcher_scope",
    )

    def __init__(
        self, receive: Receive, sweeper: DisconnectSweeper, *, reading: bool = False
    ) -> None:
        self._receive = receive
        self._sweeper = sweeper
        self._task_group: anyio.abc.TaskGroup | None = None
        self.cancel_scope = anyio.CancelScope()
        self.client_left = False
        self.stalled = False
        self.reading = reading
        self.body_deadline: float | None = None
        self.seen = False
        self.watcher_scope: anyio.CancelScope | None = None
        self.watcher_done: anyio.Event | None = None

    @property
    def timed_out(self) -> bool:
        """Whether the body stalled past its deadline (rather than the client leaving)."""
        if self._task_group is not None:  # no sweeper: the deadline was on our own scope
            return self.cancel_scope.cancelled_caught and not self.client_left
        return self.stalled

    async def __aenter__(self) -> ConnectionScope:
        if self._sweeper.running:
            self._sweeper.register(self)
        else:
            self._task_group = anyio.create_task_group()
            await self._task_group.__aenter__()
            if not self.reading:
                self._task_group.start_soon(self.watch)
        self.cancel_scope.__enter__()
        return self

    def expect_body_within(self, seconds: float | None) -> None:
        """The next body message must arrive within ``seconds`` (``None``: no limit)."""
        if self._task_group is not None:
            deadline = math.inf if seconds is None else anyio.current_time() + seconds
            self.cancel_scope.deadline = deadline
        elif seconds is None:
            self.body_deadline = None
        else:
            self.body_deadline = time.monotonic() + seconds
            self._sweeper.deadline_set(self.body_deadline)

    def start_watching(self) -> None:
        """The body is in: from now on the client leaving cancels the block."""
        self.reading = False
        self.body_deadline = None
        if self._task_group is not None:
            self.cancel_scope.deadline = math.inf
            self._task_group.start_soon(self.watch)

    def client_gone(self, grace: float) -> None:
        """The reader saw the client leave mid-body: send nothing, cancel the block soon.

        The block is cancelled ``grace`` seconds from now unless it ends first, so code that
        was reading gets to see the failure and clean up, and code that ignores it cannot keep
        running. A deadline on the scope, so no task is needed.
        """
        self.client_left = True
        self.body_deadline = None
        deadline = anyio.current_time() + grace
        if deadline < self.cancel_scope.deadline:
            self.cancel_scope.deadline = deadline

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        suppressed = self.cancel_scope.__exit__(exc_type, exc, tb)
        if suppressed:
            exc_type = exc = tb = None
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()
            with collapse_excgroups():
                return bool(await self._task_group.__aexit__(exc_type, exc, tb)) or suppressed
        self._sweeper.unregister(self)
        if self.watcher_scope is not None and self.watcher_done is not None:
            self.watcher_scope.cancel()
            with anyio.CancelScope(shield=True):
                await self.watcher_done.wait()
        return suppressed

    async def watch(self) -> None:
        """The watcher task: cancel the request when its client leaves."""
        if await watch_for_disconnect(self._receive, self.cancel_scope):
            self.client_left = True


class DisconnectSweeper:
    """Watches over in-flight requests (see the module doc): watchers late, body deadlines."""

    def __init__(self, interval: float = SWEEP_INTERVAL) -> None:
        self._interval = interval
        self._in_flight: set[ConnectionScope] = set()
        self._websockets: set[WebSocket] = set()
        self.stopping = False
        self._task_group: anyio.abc.TaskGroup | None = None
        self._wakeup: anyio.Event | None = None  # made in run(): apps are built outside loops
        self._idle = True
        self._next_wake = math.inf

    @property
    def running(self) -> bool:
        return self._task_group is not None

    @property
    def task_group(self) -> anyio.abc.TaskGroup | None:
        """The sweeper's task group while it runs: it also hosts WebSocket connections' tasks
        (``connection_tasks``), which outlive no connection but would cost each one a task
        group of its own."""
        return self._task_group

    def register(self, connection: ConnectionScope) -> None:
        self._in_flight.add(connection)
        if self._idle and self._wakeup is not None:
            self._idle = False
            self._wakeup.set()

    def unregister(self, connection: ConnectionScope) -> None:
        self._in_flight.discard(connection)

    def register_websocket(self, websocket: WebSocket) -> None:
        """Watch an open WebSocket: a pump if its handler stops reading, 1001 at shutdown."""
        self._websockets.add(websocket)
        if self.stopping:
            going_away_soon(websocket)
        elif self._idle and self._wakeup is not None:
            self._idle = False
            self._wakeup.set()

    def unregister_websocket(self, websocket: WebSocket) -> None:
        self._websockets.discard(websocket)

    def close_websockets(self) -> None:
        """Graceful shutdown: every open WebSocket closes with 1001 (and later ones at once)."""
        self.stopping = True
        for websocket in self._websockets:
            going_away_soon(websocket)

    def deadline_set(self, deadline: float) -> None:
        """A body deadline was set: sweep by then if the next sweep would come too late."""
        if deadline < self._next_wake and self._wakeup is not None:
            self._next_wake = deadline
            self._wakeup.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Sweep until cancelled (by the app's lifespan task group at shutdown)."""
        self._wakeup = anyio.Event()
        self._idle = True
        self.stopping = False
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                task_status.started()
                await self._sweep_forever(task_group, self._wakeup)
        finally:
            self._task_group = None
            self._wakeup = None

    async def _sweep_forever(self, task_group: anyio.abc.TaskGroup, wakeup: anyio.Event) -> None:
        next_round = time.monotonic() + self._interval
        while True:
            if not self._in_flight and not self._websockets:
                self._idle = True
                self._next_wake = math.inf
                await wakeup.wait()
                wakeup = self._wakeup = anyio.Event()
                next_round = time.monotonic() + self._interval
            self._next_wake = min(next_round, self._earliest_body_deadline())
            with anyio.move_on_after(max(self._next_wake - time.monotonic(), 0.0)):
                await wakeup.wait()
            wakeup = self._wakeup = anyio.Event()
            now = time.monotonic()
            self._expire_stalled_bodies(now)
            if now >= next_round:
                self._give_watchers(task_group)
                next_round = now + self._interval

    def _earliest_body_deadline(self) -> float:
        deadlines = [c.body_deadline for c in self._in_flight if c.body_deadline is not None]
        return min(deadlines, default=math.inf)

    def _expire_stalled_bodies(self, now: float) -> None:
        for connection in self._in_flight:
            deadline = connection.body_deadline
            if connection.reading and deadline is not None and now >= deadline:
                connection.body_deadline = None
                connection.stalled = True
                connection.cancel_scope.cancel()

    def _give_watchers(self, task_group: anyio.abc.TaskGroup) -> None:
        for websocket in self._websockets:
            sweep(websocket)
        for connection in self._in_flight:
            if connection.reading:
                continue
            if not connection.seen:
                connection.seen = True
            elif connection.watcher_scope is None:
                connection.watcher_scope = anyio.CancelScope()
                connection.watcher_done = anyio.Event()
                task_group.start_soon(self._watch, connection)

    @staticmethod
    async def _watch(connection: ConnectionScope) -> None:
        assert connection.watcher_scope is not None
        assert connection.watcher_done is not None
        try:
            with connection.watcher_scope:
                await connection.watch()
        finally:
            connection.watcher_done.set()
