"""One task that looks after every open connection, so that no connection needs a task of its own.

Theory of operation
-------------------
Most connections never need a task beside their handler: a request that finishes quickly never
needs a watcher for its client leaving, a WebSocket handler that keeps reading never needs a
pump. Giving each one a task (or a timer) anyway would cost more than the rest of the framework
(``benchmarks/README.md``). So the app's lifespan runs one *sweeper*, and a connection that may
need help registers itself with it as something it sweeps (``Swept``):

* While anything is registered the sweeper wakes every ``SWEEP_INTERVAL`` seconds (a *round*)
  and calls each registered thing's ``sweep(now, new_round, task_group)``. The thing decides for
  itself what to do (an HTTP request that has outlived a round gets its disconnect watcher, a
  WebSocket handler that read nothing since the last round gets its pump) and returns when it
  needs to be swept again at the latest (a body deadline), or ``math.inf``.
* A deadline earlier than the next wake (``wake_by``) wakes the sweeper sooner: then ``sweep``
  is called with ``new_round`` false, and only deadlines are checked.
* The tasks a swept thing starts run in the sweeper's task group (``task_group``), which
  outlives every connection; each connection still waits for its own tasks before it ends.
* Graceful shutdown (``begin_shutdown``) calls ``going_away()`` on everything registered, and on
  everything that registers afterwards.

The sweeper changes no state but its own: each swept thing changes itself in its own methods.
It knows nothing of HTTP or WebSockets; ``disconnect.ConnectionScope`` (an HTTP request) and the
WebSocket connection implement ``Swept``. With nothing registered it sleeps until something is.

Its clock is ``time.monotonic``: ``now`` and the deadlines given to ``wake_by`` and returned by
``sweep`` are on it (a plain call, where the event loop's clock costs a lookup of the running
backend). Cancel scope deadlines, a different mechanism, stay on anyio's clock.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import anyio
import anyio.abc

from micropie.lifetimes.cancel_scopes import ScopeMaker, scope_maker_for_running_backend

__all__ = ["SWEEP_INTERVAL", "DisconnectSweeper", "Swept", "clock"]

#: Seconds between rounds. A client that leaves cancels its handler within two of them.
SWEEP_INTERVAL = 0.05

#: The sweeper's clock (see the module docstring).
clock = time.monotonic


class Swept(Protocol):
    """Something the sweeper looks after: it changes its own state, the sweeper only calls."""

    def sweep(self, now: float, new_round: bool, task_group: anyio.abc.TaskGroup) -> float:
        """Called every round (``new_round``) and whenever a deadline passes; start tasks in
        ``task_group``. Returns when to be called again at the latest (``math.inf``: at the
        next round)."""
        ...

    def going_away(self) -> None:
        """The server is shutting down gracefully."""
        ...


class DisconnectSweeper:
    """Sweeps registered connections every round while any are open (see the module doc)."""

    def __init__(self, interval: float = SWEEP_INTERVAL) -> None:
        self._interval = interval
        self._swept: set[Swept] = set()
        self._stopping = False
        self._task_group: anyio.abc.TaskGroup | None = None
        self._wakeup: anyio.Event | None = None  # made in run(): apps are built outside loops
        self._idle = True
        self._next_wake = math.inf
        #: Makes the cancel scope a connection runs in: chosen for the event loop the sweeper
        #: runs in (``cancel_scopes``), anyio's own while it does not run.
        self.make_scope: ScopeMaker = anyio.CancelScope

    @property
    def running(self) -> bool:
        return self._task_group is not None

    @property
    def task_group(self) -> anyio.abc.TaskGroup | None:
        """The sweeper's task group while it runs: it also hosts tasks of the connections it
        sweeps (``connection_tasks``), which outlive none of them but would cost each one a
        task group of its own."""
        return self._task_group

    @property
    def registered(self) -> int:
        """How many connections are registered now."""
        return len(self._swept)

    def register(self, swept: Swept) -> None:
        """Sweep ``swept`` from now until ``unregister``; during shutdown it goes away at once."""
        self._swept.add(swept)
        if self._stopping:
            swept.going_away()
        elif self._idle and self._wakeup is not None:
            self._idle = False
            self._wakeup.set()

    def unregister(self, swept: Swept) -> None:
        self._swept.discard(swept)

    def wake_by(self, deadline: float) -> None:
        """Something registered needs a sweep by ``deadline`` (on ``clock``): wake sooner if the
        next wake would come too late."""
        if deadline < self._next_wake and self._wakeup is not None:
            self._next_wake = deadline
            self._wakeup.set()

    def begin_shutdown(self) -> None:
        """Graceful shutdown: everything registered, now or later, is told it is going away."""
        self._stopping = True
        for swept in list(self._swept):  # going_away() may unregister
            swept.going_away()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Sweep until cancelled (by the app's lifespan task group at shutdown)."""
        self._wakeup = anyio.Event()
        self._idle = True
        self._stopping = False
        self.make_scope = scope_maker_for_running_backend()
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                task_status.started()
                await self._sweep_forever(task_group, self._wakeup)
        finally:
            self._task_group = None
            self._wakeup = None
            self.make_scope = anyio.CancelScope

    async def _sweep_forever(self, task_group: anyio.abc.TaskGroup, wakeup: anyio.Event) -> None:
        next_round = clock() + self._interval
        self._next_wake = next_round
        while True:
            if not self._swept:
                self._idle = True
                self._next_wake = math.inf
                await wakeup.wait()
                wakeup = self._wakeup = anyio.Event()
                next_round = clock() + self._interval
                self._next_wake = min(self._next_wake, next_round)  # wake_by may have lowered it
            with anyio.move_on_after(max(self._next_wake - clock(), 0.0)):
                await wakeup.wait()
            wakeup = self._wakeup = anyio.Event()
            now = clock()
            new_round = now >= next_round
            if new_round:
                next_round = now + self._interval
            next_wake = next_round
            for swept in self._swept:
                deadline = swept.sweep(now, new_round, task_group)
                if deadline < next_wake:
                    next_wake = deadline
            self._next_wake = next_wake
