"""The app's own lifetime: lifespan events and the task group that outlives every request.

The ASGI lifespan call runs for as long as the server serves the app. It opens the app's task
group, which holds the disconnect sweeper (see ``disconnect``) and the background tasks started
with ``app.start_soon``/``app.start``; then runs ``startup_handlers`` in order and enters the
Starlette-style ``lifespan=`` context manager (what it yields lands in ``app.state`` and, where
the server supports lifespan state, in every request's ``request.state``), reports, waits for
shutdown, leaves the context manager, runs ``shutdown_handlers``, and cancels whatever
background work is left.

A background task that fails is logged and does not take the app down. A startup handler that
fails is logged and reported as ``lifespan.startup.failed`` with its message, so the server
refuses to start.

This module sits below the ``App`` (see docs/architecture.md): it sees the app only through
``LifespanHost`` (the handlers, ``lifespan=`` and ``state``) and is handed the sweeper to run.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any, Protocol

import anyio
import anyio.abc

from micropie.core.types import Message, Receive, Scope, Send

__all__ = ["AppLifetime", "LifespanHost", "Service"]

logger = logging.getLogger("micropie")


async def _call(handler: Callable[[], Any]) -> None:
    """Run a lifespan handler, sync or async (MicroPie 0.32 failed on sync ones)."""
    result = handler()
    if inspect.isawaitable(result):
        await result


class LifespanHost(Protocol):
    """What the lifetime reads from its app (an ``App``): its handlers, ``lifespan`` and
    ``state``. Read-only here; the app's own attributes are lists, a callable and a dict."""

    @property
    def startup_handlers(self) -> Sequence[Callable[[], Any]]: ...

    @property
    def shutdown_handlers(self) -> Sequence[Callable[[], Any]]: ...

    @property
    def lifespan(
        self,
    ) -> Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any] | None]] | None: ...

    @property
    def state(self) -> dict[str, Any]: ...


class Service(Protocol):
    """A task that runs for the app's whole lifetime, started before the first startup handler
    (the disconnect sweeper): ``run`` reports ``started()`` and runs until cancelled."""

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = ...) -> None: ...


class AppLifetime:
    """Owns the lifespan protocol and the app-wide task group for one ``App``.

    ``sweeper`` (the app's disconnect sweeper) runs in that task group from before startup until
    after shutdown.
    """

    def __init__(self, app: LifespanHost, sweeper: Service) -> None:
        self._app = app
        self._sweeper = sweeper
        self._task_group: anyio.abc.TaskGroup | None = None
        self.started = False
        #: Set when the server begins its graceful shutdown (``App.begin_shutdown``): open
        #: WebSockets close with 1001 and streams end. ``None`` while lifespan is not running.
        self.stopping: anyio.Event | None = None

    async def run(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the lifespan protocol until shutdown (the ASGI ``lifespan`` call).

        The last answer (``shutdown.complete``, or a ``failed``) is sent only once the app's
        task group, sweeper and background tasks included, has ended: a server may cancel the
        lifespan call as soon as it has that answer (hypercorn does, on its asyncio worker),
        and a call still winding its tasks down would end in a ``CancelledError`` traceback.
        """
        self.stopping = anyio.Event()
        async with anyio.create_task_group() as task_group, AsyncExitStack() as context:
            self._task_group = task_group
            try:
                await task_group.start(self._sweeper.run)
                last_answer = await self._converse(scope, receive, send, context)
            finally:
                self._task_group = None
                self.stopping.set()  # connections still open see the app go
                self.stopping = None
                task_group.cancel_scope.cancel()
        await send(last_answer)

    async def _converse(
        self, scope: Scope, receive: Receive, send: Send, context: AsyncExitStack
    ) -> Message:
        """Answer ``lifespan.startup``; return the answer to ``lifespan.shutdown`` (or to a
        failed startup), for ``run`` to send once everything has ended."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._start(scope, context)
                except Exception as error:
                    logger.exception("Application startup failed")
                    return {"type": "lifespan.startup.failed", "message": str(error)}
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self._stop(context)
                except Exception as error:
                    logger.exception("Application shutdown failed")
                    return {"type": "lifespan.shutdown.failed", "message": str(error)}
                return {"type": "lifespan.shutdown.complete"}

    async def _start(self, scope: Scope, context: AsyncExitStack) -> None:
        """``startup_handlers`` in order, then the ``lifespan=`` context manager, if any."""
        if self.started:
            return
        for handler in self._app.startup_handlers:
            await _call(handler)
        if self._app.lifespan is not None:
            state = await context.enter_async_context(self._app.lifespan(self._app))
            if state:
                self._app.state.update(state)
                if isinstance(scope.get("state"), dict):
                    scope["state"].update(state)  # the server copies it into every request
        self.started = True

    async def _stop(self, context: AsyncExitStack) -> None:
        """Leave the ``lifespan=`` context manager, then run ``shutdown_handlers`` in order."""
        if not self.started:
            return
        self.started = False
        await context.aclose()
        for handler in self._app.shutdown_handlers:
            await _call(handler)

    def begin_shutdown(self) -> None:
        """Tell streams the app is going (``stopping``); a no-op while lifespan is not running."""
        if self.stopping is not None:
            self.stopping.set()

    def _running_group(self) -> anyio.abc.TaskGroup:
        if self._task_group is None:
            raise RuntimeError(
                "the app is not running: background tasks need the ASGI lifespan "
                "(serve the app with hypercorn or app.serve(), or use micropie.testing.TestClient "
                "as 'async with')"
            )
        return self._task_group

    def start_soon(self, function: Callable[..., Awaitable[Any]], *args: Any) -> None:
        self._running_group().start_soon(_logged, function, args, name=_name_of(function))

    async def start(self, function: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return await self._running_group().start(_logged_with_status, function, args)


def _name_of(function: Callable[..., Any]) -> str:
    return getattr(function, "__qualname__", repr(function))


async def _logged(function: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
    try:
        await function(*args)
    except Exception:
        logger.exception("Background task %s failed", _name_of(function))


class _ReportingStatus:
    """Forwards ``started()`` and remembers that it happened."""

    def __init__(self, inner: anyio.abc.TaskStatus[Any]) -> None:
        self._inner = inner
        self.started_called = False

    def started(self, value: Any = None) -> None:
        self.started_called = True
        self._inner.started(value)


async def _logged_with_status(
    function: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    *,
    task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """A failure before ``started()`` reaches the caller of ``start``; after it, the log."""
    status = _ReportingStatus(task_status)
    try:
        await function(*args, task_status=status)
    except Exception:
        if not status.started_called:
            raise
        logger.exception("Background task %s failed", _name_of(function))
