"""Binding a request's lifetime to its connection, cheaply.

Theory of operation
-------------------
Servers do not cancel an app when its client leaves: hypercorn only queues ``http.disconnect``
on ``receive()`` and turns later sends into no-ops. So someone must read ``receive()`` while the
handler runs, and cancel the handler when the client goes. The obvious way, a task group with a
watcher task per request, costs more per request than the rest of the framework
(``benchmarks/README.md``), and almost every request finishes long before a watcher could ever
matter.

So the watcher is given late, by the app's sweeper (``sweeper``):

1. Each request runs in a ``ConnectionScope``: a plain ``anyio.CancelScope`` (no task) that
   registers itself with the sweeper. While it reads its body it is *reading*; once the body is
   in (or when it has none) it is *watchable*.
2. The sweeper sweeps it every round (``SWEEP_INTERVAL`` seconds). A watchable request swept in
   a second round (so one that has run for at least one interval) starts its watcher task, in
   the sweeper's task group.
3. The watcher awaits ``receive()``; on ``http.disconnect`` it marks the request as abandoned and
   cancels the request's scope. The handler sees a cancellation at its next checkpoint, its
   ``finally`` blocks run, and the request ends without a response.
4. When the request's scope closes, it unregisters, cancels its watcher and waits for it, so no
   task outlives the ASGI call.

A disconnect therefore cancels a handler within ``2 × SWEEP_INTERVAL`` plus one checkpoint, and
short requests never pay for a task. A reading request never gets a watcher, so the watcher and
the body reader never wait on ``receive()`` at the same time.

The sweeper also enforces the body timeout: a reading request records when its current
``receive()`` must have answered (on the sweeper's clock) and asks the sweeper to wake by then;
swept past that time, it cancels itself. One timer for all requests instead of one per body
chunk: per-message cancel scopes or deadlines cost a loop timer each on asyncio.

A handler may ask for less (``policy``): a ``@shielded`` one (every one, with
``App(cancel_on_disconnect=False)``) calls ``keep_running()``, and then the watcher only
records that the client left. A handler that asks (``is_disconnected()``,
``wait_for_disconnect()``) gets its watcher at once rather than at the next round, so it learns
as soon as the server tells; while the body is still being read (a multipart upload), the
reader is the one that sees the client leave (``client_gone``), and the watcher waits. Once the
block has ended nothing reads ``receive()`` for it any more: a stream has its own watcher.

Without lifespan (a server that does not run it, or a test driving ``app(scope, receive, send)``
directly) there is no sweeper: each request opens its own task group, starts its watcher as soon
as it is watchable and puts body deadlines on its own scope (anyio's clock). Slower, with the
same guarantee. Cancellation from outside (server shutdown) always propagates; only the
cancellation this module caused is swallowed.
"""

from __future__ import annotations

import logging
import math
from contextlib import AbstractContextManager
from types import TracebackType

import anyio
import anyio.abc
import anyio.lowlevel

from micropie.core.concurrency import collapse_excgroups
from micropie.core.types import Message, Receive
from micropie.lifetimes.cancel_scopes import CancelScopeLike, deadline_scope, set_deadline
from micropie.lifetimes.sweeper import SWEEP_INTERVAL, DisconnectSweeper, clock

__all__ = [
    "SWEEP_INTERVAL",
    "ConnectionScope",
    "DisconnectSweeper",
    "watch_for_disconnect",
]

logger = logging.getLogger("micropie")


async def until_disconnect(receive: Receive) -> None:
    """Read ``receive()`` until the client leaves.

    Other messages (a body nobody asked for) are dropped; a ``receive()`` that fails is
    treated as the client leaving.
    """
    while True:
        try:
            message = await receive()
        except Exception:
            logger.debug("receive() failed; treating it as a disconnect", exc_info=True)
            return
        if message["type"] in ("http.disconnect", "websocket.disconnect"):
            return
        await anyio.lowlevel.checkpoint()  # a receive() that never blocks must not starve the loop


async def watch_for_disconnect(receive: Receive, cancel_scope: anyio.CancelScope) -> None:
    """Read ``receive()`` until the client leaves, then cancel ``cancel_scope``."""
    await until_disconnect(receive)
    cancel_scope.cancel()


async def _no_receive() -> Message:
    raise RuntimeError("the request's ASGI call has ended")


class ConnectionScope:
    """``async with`` block whose body is cancelled when the client disconnects.

    After the block, ``client_left`` tells whether that happened (then send nothing) and
    ``timed_out`` whether the body stalled (then answer 408). With ``reading=True`` the block
    starts by reading the body: call ``expect_body_within(seconds)`` before each ``receive()``
    and ``start_watching()`` once the body is in. Registered with the sweeper, it is one of the
    things it sweeps (``sweeper.Swept``): every change of its state happens in its own methods.

    With ``keep_running=True`` (or after ``keep_running()``) the client leaving is recorded
    but cancels nothing: the block runs to its end (``@shielded``, ``cancel_on_disconnect``).
    ``is_disconnected()`` and ``wait_for_disconnect()`` let the code in the block ask.
    """

    __slots__ = (
        "_body_deadline",
        "_closed",
        "_keep_running",
        "_left",
        "_receive",
        "_seen",
        "_stalled",
        "_sweeper",
        "_task_group",
        "_watcher_done",
        "_watcher_scope",
        "cancel_scope",
        "client_left",
        "deadline",
        "reading",
    )

    def __init__(
        self,
        receive: Receive,
        sweeper: DisconnectSweeper,
        *,
        reading: bool = False,
        keep_running: bool = False,
    ) -> None:
        self._receive = receive
        self._sweeper = sweeper
        self._task_group: anyio.abc.TaskGroup | None = None  # without a sweeper: our own
        self.cancel_scope: CancelScopeLike = sweeper.make_scope()
        self.client_left = False
        self.reading = reading
        self._stalled = False
        self._body_deadline: float | None = None  # on the sweeper's clock
        self._seen = False  # swept in a round already
        self._watcher_scope: anyio.CancelScope | None = None
        self._watcher_done: anyio.Event | None = None
        self._keep_running = keep_running
        self._left: anyio.Event | None = None  # made by the first wait_for_disconnect()
        self.deadline = math.inf  # the handler's time limit, on anyio's clock
        self._closed = False  # the block has ended: nothing may read receive() for it any more

    @property
    def timed_out(self) -> bool:
        """Whether the body stalled past its deadline (rather than the client leaving)."""
        if self._task_group is not None:  # no sweeper: the deadline was on our own scope
            return self.cancel_scope.cancelled_caught and not self.client_left
        return self._stalled

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
            set_deadline(self.cancel_scope, deadline)
        elif seconds is None:
            self._body_deadline = None
        else:
            self._body_deadline = deadline = clock() + seconds
            self._sweeper.wake_by(deadline)

    def start_watching(self) -> None:
        """The body is in: from now on the client leaving cancels the block."""
        self.reading = False
        self._body_deadline = None
        if self._task_group is not None:
            self.cancel_scope.deadline = math.inf
            self._task_group.start_soon(self.watch)

    def client_gone(self, grace: float) -> None:
        """The reader saw the client leave mid-body: send nothing, cancel the block soon.

        The block is cancelled ``grace`` seconds from now unless it ends first, so code that
        was reading gets to see the failure and clean up, and code that ignores it cannot keep
        running. A deadline on the scope, so no task is needed.
        """
        self._client_left()
        self._body_deadline = None
        deadline = anyio.current_time() + grace
        if deadline < self.cancel_scope.deadline:
            set_deadline(self.cancel_scope, deadline)

    def sweep(self, now: float, new_round: bool, task_group: anyio.abc.TaskGroup) -> float:
        """The sweeper's call (``sweeper.Swept``): a reading request past its body deadline
        cancels itself; a watchable one swept in a second round starts its watcher."""
        if not self.reading:
            if new_round:
                self._watch_from_second_round(task_group)
            return math.inf
        deadline = self._body_deadline
        if deadline is None:
            return math.inf
        if now < deadline:
            return deadline
        self._body_deadline = None
        self._stalled = True
        self.cancel_scope.cancel()
        return math.inf

    def _watch_from_second_round(self, task_group: anyio.abc.TaskGroup) -> None:
        if not self._seen:
            self._seen = True
        else:
            self._start_watcher(task_group)

    def _start_watcher(self, task_group: anyio.abc.TaskGroup) -> None:
        if self._watcher_scope is None:
            self._seen = True
            self._watcher_scope = anyio.CancelScope()
            self._watcher_done = anyio.Event()
            task_group.start_soon(self._watched, self._watcher_scope, self._watcher_done)

    def keep_running(self) -> None:
        """From now on the client leaving cancels nothing (a ``@shielded`` handler was found).

        A disconnect already seen has already cancelled the block: the handler was not yet
        running then, and never starts.
        """
        self._keep_running = True

    def time_limit(self, seconds: float) -> AbstractContextManager[anyio.CancelScope]:
        """A cancel scope for the handler, ending ``seconds`` from now; ``deadline`` keeps the
        time, by which a streamed response must also have been sent."""
        self.deadline = anyio.current_time() + seconds
        return deadline_scope(self.deadline)

    def _watch_now(self) -> None:
        """Someone asks whether the client left: watch from now on, not from the next sweep.

        While the body is being read, its reader sees a disconnect (``client_gone``) and no
        watcher may read ``receive()`` beside it. Without a sweeper the watcher already runs.
        """
        if self.reading or self.client_left or self._closed or self._task_group is not None:
            return
        task_group = self._sweeper.task_group
        if task_group is not None:
            self._start_watcher(task_group)

    async def is_disconnected(self) -> bool:
        """Whether the client has left (as far as anyone reading from it has seen, now)."""
        self._watch_now()
        await anyio.lowlevel.checkpoint()  # lets the watcher take a message already waiting
        return self.client_left

    async def wait_for_disconnect(self) -> None:
        """Return when the client has left."""
        self._watch_now()
        if self.client_left:
            await anyio.lowlevel.checkpoint()
            return
        if self._left is None:
            self._left = anyio.Event()
        await self._left.wait()

    def _client_left(self) -> None:
        self.client_left = True
        if self._left is not None:
            self._left.set()

    def going_away(self) -> None:
        """Graceful shutdown leaves a request in flight alone: the server bounds its time."""

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._closed = True
        try:
            suppressed = self.cancel_scope.__exit__(exc_type, exc, tb)
            if suppressed:
                exc_type = exc = tb = None
            if self._task_group is not None:
                self._task_group.cancel_scope.cancel()
                with collapse_excgroups():
                    return bool(await self._task_group.__aexit__(exc_type, exc, tb)) or suppressed
            self._sweeper.unregister(self)
            if self._watcher_scope is not None and self._watcher_done is not None:
                self._watcher_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await self._watcher_done.wait()
            return suppressed
        finally:
            self._receive = _no_receive  # the request may outlive the call: keep none of it

    async def watch(self) -> None:
        """The watcher task: cancel the request when its client leaves (unless it keeps
        running); either way, record that it left."""
        await until_disconnect(self._receive)
        if not self._keep_running:
            self.cancel_scope.cancel()
        self._client_left()

    async def _watched(self, scope: anyio.CancelScope, done: anyio.Event) -> None:
        """The watcher, as the sweeper's task group runs it: in ``scope``, which ``__aexit__``
        cancels, and setting ``done`` when over, which ``__aexit__`` waits for."""
        try:
            with scope:
                await self.watch()
        finally:
            done.set()
