"""The ASGI lifespan protocol, spoken to the app on entering and leaving ``async with``."""

from __future__ import annotations

import logging
from typing import Any

import anyio
from anyio.abc import TaskGroup

from micropie.core.types import ASGIApp, Message
from micropie.testing._app_call import _AppCall
from micropie.testing._errors import ASGIProtocolError, LifespanError

logger = logging.getLogger("micropie")


class _Lifespan:
    """Speaks the ASGI lifespan protocol to the app, whose call runs in the client's task group.

    An app that returns from (or raises on) the lifespan scope before answering startup does not
    support lifespan; the client then carries on without it, as servers and Starlette do.
    """

    def __init__(self, app: ASGIApp, state: dict[str, Any], timeout: float) -> None:
        self._to_app, self._app_inbox = anyio.create_memory_object_stream[Message](1)
        self._app_outbox, self._from_app = anyio.create_memory_object_stream[Message](1)
        self._timeout = timeout
        self._supported = True
        self._app_waiting = anyio.Event()  # the app asked for its next message, or returned
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        scope["state"] = state
        self._call = _AppCall(
            app,
            scope,
            self._receive,
            self._app_outbox.send,
            description="The lifespan call",
            on_finish=self._on_app_finished,
        )

    async def _receive(self) -> Message:
        self._app_waiting.set()
        return await self._app_inbox.receive()

    def _on_app_finished(self) -> None:
        self._app_outbox.close()
        self._app_waiting.set()

    async def _ask(self, message_type: str) -> Message | None:
        """Send one message to the app; its answer, or None if the call ended without one."""
        self._app_waiting = anyio.Event()
        await self._to_app.send({"type": message_type})
        try:
            return await self._from_app.receive()
        except anyio.EndOfStream:
            return None

    async def startup(self, task_group: TaskGroup) -> None:
        """Raises ``LifespanError`` when startup failed (the app's exception as its cause)."""
        task_group.start_soon(self._call.run)
        answer = await self._ask("lifespan.startup")
        if answer is None:
            self._supported = False
            logger.info("no lifespan support in the app (%r); going on without", self._call.error)
            return
        if answer["type"] == "lifespan.startup.failed":
            # Give the app the chance to end (and hand us its exception as the cause).
            with anyio.move_on_after(self._timeout):
                await self._app_waiting.wait()
            raise LifespanError("startup", str(answer.get("message", ""))) from self._call.error
        _expect(answer, "lifespan.startup.complete")

    async def shutdown(self) -> None:
        """Raises ``LifespanError``, the app's exception, or ``AppOutlivedClientError``."""
        if not self._supported:
            return
        answer = await self._ask("lifespan.shutdown")
        await self._call.wait_finished(self._timeout, after="lifespan.shutdown")
        if answer is not None and answer["type"] == "lifespan.shutdown.failed":
            raise LifespanError("shutdown", str(answer.get("message", ""))) from self._call.error
        if self._call.error is not None:
            raise self._call.error
        if answer is not None:
            _expect(answer, "lifespan.shutdown.complete")

    def close(self) -> None:
        for stream in (self._to_app, self._app_inbox, self._app_outbox, self._from_app):
            stream.close()


def _expect(message: Message, expected: str) -> None:
    if message["type"] != expected:
        raise ASGIProtocolError(f"expected {expected!r} from the app, got {message['type']!r}")
