"""Driving one call of the app as a task the client owns, and the task group it runs in.

Shared by every kind of connection (HTTP, WebSocket, lifespan).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskGroup

from micropie.core.concurrency import collapse_excgroups
from micropie.core.types import ASGIApp, Receive, Scope, Send
from micropie.testing._errors import AppOutlivedClientError

logger = logging.getLogger("micropie")


@asynccontextmanager
async def _open_task_group() -> AsyncIterator[TaskGroup]:
    """An anyio task group whose single exceptions come out unwrapped."""
    with collapse_excgroups():
        async with anyio.create_task_group() as task_group:
            yield task_group


class _AppCall:
    """One call of the app (a connection, or the lifespan) running as a task the client owns.

    The task never lets an app exception into the task group (that would cancel the whole test):
    it stores it in ``error`` for the side that talks to the app to re-raise. Cancellation and
    other ``BaseException``s do propagate. ``on_finish`` runs when the call has ended either way.
    """

    def __init__(
        self,
        app: ASGIApp,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        description: str,
        on_finish: Callable[[], None],
    ) -> None:
        self.description = description
        self.error: Exception | None = None
        self.finished = anyio.Event()
        self._app, self._scope, self._receive, self._send = app, scope, receive, send
        self._on_finish = on_finish
        self._cancel_scope = anyio.CancelScope()
        self._error_reported = False

    def report_error(self, *, raise_it: bool) -> None:
        """Re-raise the app's exception (once), or log it when the client shows 500s instead."""
        error = self.error
        if error is None or self._error_reported:
            return
        self._error_reported = True
        if raise_it:
            raise error
        logger.error("%s raised", self.description, exc_info=error)

    async def run(self) -> None:
        with self._cancel_scope:
            try:
                await self._app(self._scope, self._receive, self._send)
            except Exception as exc:
                self.error = exc
            finally:
                self._on_finish()
                self.finished.set()

    async def wait_finished(self, grace: float, *, after: str) -> None:
        """Wait for the call to return, ``after`` its client told it to; cancel it if it won't.

        Shielded so that a cancelled test still cleans up; bounded by ``grace`` seconds, and as
        long again for a cancelled call to unwind. Raises ``AppOutlivedClientError`` when the call
        had to be cancelled.
        """
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(grace):
                await self.finished.wait()
            if self.finished.is_set():
                return
            self._cancel_scope.cancel()
            with anyio.move_on_after(grace):
                await self.finished.wait()
        fate = "was cancelled" if self.finished.is_set() else "ignores cancellation, still running"
        raise AppOutlivedClientError(
            f"{self.description} was still running {grace:g} s after {after} ({fate}). An ASGI"
            " app must return promptly once its client is gone: this is a bug in the app under"
            " test."
        )
