"""Driving an app's ASGI interface by hand: a scripted client and a running lifespan.

``tests/asgi.py`` replays MicroPie 0.32's tests; this module serves the tests of behaviour
over time (disconnects, deadlines, shutdown), where the client's timing is what is tested.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from micropie import App


class Client:
    """A scripted HTTP client: ``receive()`` blocks until ``leave()``, then reports a disconnect."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.left = anyio.Event()
        self.receive_calls = 0
        self.pending_receives = 0

    def leave(self) -> None:
        self.left.set()

    async def receive(self) -> dict[str, Any]:
        self.receive_calls += 1
        self.pending_receives += 1
        try:
            await self.left.wait()
        finally:
            self.pending_receives -= 1
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


def http_scope(path: str) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}


async def post_in_chunks(
    app: App,
    path: str,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    chunk_size: int,
) -> tuple[int, bytes, int]:
    """POST ``body`` to ``app`` in messages of ``chunk_size`` bytes; the status, the answer
    and how many messages the app took (a limit crossed stops the reading early).

    After the last message the connection stays open (nothing more comes): the caller bounds
    the call (``anyio.fail_after``), so an app that waited for more fails the test.
    """
    chunks = [body[i : i + chunk_size] for i in range(0, len(body), chunk_size)] or [b""]
    taken = 0
    sent: list[dict[str, Any]] = []
    stalled = anyio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal taken
        if taken < len(chunks):
            taken += 1
            return {
                "type": "http.request",
                "body": chunks[taken - 1],
                "more_body": taken < len(chunks),
            }
        await stalled.wait()  # an open connection: nothing more comes
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {**http_scope(path), "method": "POST", "headers": headers}
    await app(scope, receive, send)
    return sent[0]["status"], sent[1]["body"], taken


@asynccontextmanager
async def lifespan(
    app: App, *, running: bool = True, state: dict[str, Any] | None = None
) -> AsyncIterator[None]:
    """Run the app's lifespan around the block (or not, for the no-lifespan path)."""
    if not running:
        yield
        return
    to_app_send, to_app = anyio.create_memory_object_stream[dict[str, Any]](2)
    from_app_send, from_app = anyio.create_memory_object_stream[dict[str, Any]](2)

    async def run() -> None:
        async with to_app, from_app_send:
            scope: dict[str, Any] = {"type": "lifespan"}
            if state is not None:
                scope["state"] = state  # the lifespan state extension, as hypercorn offers it
            await app(scope, to_app.receive, from_app_send.send)

    async with anyio.create_task_group() as task_group, to_app_send, from_app:
        task_group.start_soon(run)
        await to_app_send.send({"type": "lifespan.startup"})
        assert (await from_app.receive())["type"] == "lifespan.startup.complete"
        yield
        await to_app_send.send({"type": "lifespan.shutdown"})
        assert (await from_app.receive())["type"] == "lifespan.shutdown.complete"


def bounded(test: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """Fail the test after 10 s rather than hang it, whatever regresses."""

    @functools.wraps(test)
    async def bounded_test(*args: Any, **kwargs: Any) -> None:
        with anyio.fail_after(10):
            await test(*args, **kwargs)

    return bounded_test


class Boom(Exception):
    pass
