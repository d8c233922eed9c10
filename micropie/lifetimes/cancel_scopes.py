"""The cancel scope each connection runs in, made at the running backend's own price.

Why this module exists
----------------------
Every request and every WebSocket handler runs in a cancel scope of its own (that is how a
client that leaves cancels its handler), so making and entering one is on the path of every
request. ``anyio.CancelScope()`` is the portable way, and it pays for being portable each time:
its ``__new__`` looks up the running backend and dispatches to the backend's class, and Python
then runs that class's ``__init__`` a second time; on trio the result is an anyio object
wrapping a ``trio.CancelScope`` (and the second ``__init__`` builds a second one). The costs
are in ``benchmarks/README.md`` ("Where micropie's time goes per request").

So the backend is looked up once, when the app's sweeper starts in the event loop that will
serve the connections (``scope_maker_for_running_backend``), and the scope class is chosen then:

* **trio**: ``trio.CancelScope`` itself. anyio's scopes, shields and task groups on trio are
  thin wrappers over trio's own, so whatever a handler opens inside nests in trio's scope
  tree exactly as it would inside an anyio scope: a shield keeps out this scope's
  cancellation, a task group inside is cancelled with it, an outer cancellation reaches it.
* **asyncio**: anyio's own asyncio scope, the very class ``anyio.CancelScope()`` returns there,
  constructed directly (its own ``__new__`` does not dispatch again). Cancellation on asyncio
  must go through anyio's scope bookkeeping for anyio shields inside the handler to keep
  working, so there is no native shortcut to take.
* **anything else**, or whenever one of these assumptions does not hold for the installed
  anyio or trio: ``anyio.CancelScope``, anyio's public API.

This is the only module in micropie that may import ``trio`` or ``asyncio`` (an import-linter
contract in ``pyproject.toml`` says so), and it does so lazily, inside the functions that
choose. The one other backend-native need, the hypercorn glue's (it acts on the server's own
tasks: cancelling asyncio app calls, telling whose turn a trio lock is), is served from here
too (``native_current_task``).

Deadlines
---------
On asyncio a cancel scope's deadline is a loop timer, and a loop timer keeps the context it
was scheduled in until its time comes, even once cancelled. Set inside a request, that context
holds the request (``current_request``) with its body and parsed JSON: a body deadline of 5 s
per body message, or a handler's time limit, kept every request alive for that long after its
response. ``set_deadline`` and ``deadline_scope`` schedule the timer from an empty context
instead; what the deadline does (cancel the scope's tasks) needs no context variable. On trio
a deadline is no timer, and the empty context costs nothing there.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Protocol

import anyio

__all__ = [
    "CancelScopeLike",
    "ScopeMaker",
    "deadline_scope",
    "native_current_task",
    "scope_maker_for_running_backend",
    "set_deadline",
]


class CancelScopeLike(Protocol):
    """What the framework uses of a cancel scope: anyio's and trio's both have it."""

    @property
    def deadline(self) -> float: ...

    @deadline.setter
    def deadline(self, value: float) -> None: ...

    @property
    def cancel_called(self) -> bool: ...

    @property
    def cancelled_caught(self) -> bool: ...

    def cancel(self) -> None: ...

    def __enter__(self) -> CancelScopeLike: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...


#: Makes a new, unentered cancel scope with no deadline and no shield.
ScopeMaker = Callable[[], CancelScopeLike]


def scope_maker_for_running_backend() -> ScopeMaker:
    """The cheapest correct way to make a cancel scope in the running event loop (see the
    module docstring); ``anyio.CancelScope`` when in doubt."""
    portable = anyio.CancelScope()
    backend_class = type(portable)
    if backend_class.__module__ == "anyio._backends._trio":
        return _trio_scope_maker() or anyio.CancelScope
    if backend_class.__module__ == "anyio._backends._asyncio":
        return _direct_scope_maker(backend_class) or anyio.CancelScope
    return anyio.CancelScope


def _trio_scope_maker() -> ScopeMaker | None:
    """``trio.CancelScope``, when the running loop is trio's: every anyio scope there is built
    on one, so using it directly changes nothing but the price."""
    try:
        import trio
    except ImportError:  # pragma: no cover - anyio's trio backend imports trio itself
        return None
    try:
        trio.lowlevel.current_task()
    except RuntimeError:  # pragma: no cover - anyio says trio, trio says no: trust neither
        return None
    return trio.CancelScope


def _direct_scope_maker(backend_class: type[anyio.CancelScope]) -> ScopeMaker | None:
    """The backend's scope class itself, if constructing it directly makes what
    ``anyio.CancelScope()`` makes (it has a ``__new__`` of its own that does not dispatch)."""
    if "__new__" not in vars(backend_class):
        return None
    try:
        made = backend_class()
    except Exception:
        return None
    if type(made) is not backend_class or made.deadline != math.inf:
        return None
    return backend_class


def set_deadline(scope: CancelScopeLike, deadline: float) -> None:
    """``scope.deadline = deadline``, with its timer scheduled outside the caller's context
    (see "Deadlines" in the module docstring)."""
    contextvars.Context().run(_assign_deadline, scope, deadline)


def _assign_deadline(scope: CancelScopeLike, deadline: float) -> None:
    scope.deadline = deadline


@contextmanager
def deadline_scope(deadline: float) -> Iterator[anyio.CancelScope]:
    """``with anyio.CancelScope(deadline=deadline)``, its timer scheduled outside the caller's
    context (a scope's timer starts when it is entered, so the deadline is set just after)."""
    with anyio.CancelScope() as scope:
        if deadline != math.inf:
            set_deadline(scope, deadline)
        yield scope


def native_current_task(backend: str) -> Callable[[], Any]:
    """The function that returns the calling task as ``backend`` itself knows it
    (``asyncio.current_task`` or ``trio.lowlevel.current_task``), looked up once by the caller:
    for code that must act on a server's own tasks, which anyio's API does not expose."""
    if backend == "trio":
        import trio

        return trio.lowlevel.current_task
    import asyncio

    return asyncio.current_task
