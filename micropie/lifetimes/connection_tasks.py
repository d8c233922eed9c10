"""Tasks that live exactly as long as one connection, without a task group per connection.

A WebSocket connection sometimes needs tasks beside its handler: the receive pump of a handler
that stopped reading, the 1001 close at server shutdown, and the user's ``ws.start_soon``
tasks. Most connections need none of them, and a task group per connection costs memory and
time even when no task is ever started: enough to miss the memory target per idle connection
of ``benchmarks/websocket.py`` (figures in ``benchmarks/README.md``).

So the tasks run in a task group that outlives every connection (the app's, from its lifespan)
and the connection keeps them on a short leash, as a task group of its own would:

* each task runs in its own cancel scope, held here;
* ``close()`` (the connection is over) refuses new tasks, cancels the running ones and waits
  until every one of them has finished, shielded, so none outlives the connection;
* a task that raises does not reach the host group (that would take the whole app down): its
  exception is kept in ``errors`` and ``on_error`` is called, so the connection can cancel its
  handler and report the failure as its own, like a task group would.

A cancellation of the host group itself (app shutdown) ends the tasks too, and ``close()``
still returns once they are gone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

__all__ = ["ConnectionTasks"]


class ConnectionTasks:
    """Tasks of one connection, hosted in a longer-lived task group (see the module doc)."""

    __slots__ = ("_all_done", "_host", "_on_error", "_scopes", "errors")

    def __init__(self, host: anyio.abc.TaskGroup, on_error: Callable[[], None]) -> None:
        self._host: anyio.abc.TaskGroup | None = host
        self._on_error = on_error
        self._scopes: set[anyio.CancelScope] = set()
        self._all_done: anyio.Event | None = None
        #: Exceptions raised by the tasks, in the order they happened.
        self.errors: list[Exception] = []

    def start_soon(self, function: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start ``function(*args)``; ``RuntimeError`` once the connection is over."""
        if self._host is None:
            raise RuntimeError("The connection is over: no new tasks can start")
        scope = anyio.CancelScope()
        self._host.start_soon(self._run, scope, function, args)
        self._scopes.add(scope)  # after start_soon: a host that refused it leaves no trace

    async def _run(
        self, scope: anyio.CancelScope, function: Callable[..., Awaitable[Any]], args: Any
    ) -> None:
        try:
            with scope:
                await function(*args)
        except Exception as error:
            self.errors.append(error)
            self._on_error()
        finally:
            self._scopes.discard(scope)
            if not self._scopes and self._all_done is not None:
                self._all_done.set()

    async def close(self) -> None:
        """Refuse new tasks, cancel the running ones and wait until all have finished."""
        self._host = None
        if not self._scopes:
            return
        self._all_done = anyio.Event()
        for scope in self._scopes:
            scope.cancel()
        with anyio.CancelScope(shield=True):
            await self._all_done.wait()
