"""``HEAD`` on a streamed route: the headers at once, no body, the generator never advanced.

A generator the handler did not start is closed without ever running; one it started (to fail
early, or to open a subscription) runs its ``finally`` and never yields again. Over the wire
the answer comes at once even for an endless event stream, and the connection is free for the
next request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest

from micropie import App
from micropie.http.sse import sse
from tests.support.drive import Client, http_scope
from tests.support.servers import running_server

pytestmark = pytest.mark.anyio


def head_scope(path: str) -> dict[str, Any]:
    return {**http_scope(path), "method": "HEAD"}


class Probe:
    """What a generator did: how often it yielded, and whether its ``finally`` ran."""

    def __init__(self) -> None:
        self.started = False
        self.yields = 0
        self.finished = anyio.Event()


def endless_events(probe: Probe) -> AsyncIterator[str]:
    async def events() -> AsyncIterator[str]:
        probe.started = True
        try:
            while True:
                probe.yields += 1
                yield f"tick {probe.yields}"
                await anyio.sleep(0.01)
        finally:
            probe.finished.set()

    return events()


def endless_chunks(probe: Probe) -> Iterator[bytes]:
    probe.started = True
    try:
        while True:
            probe.yields += 1
            yield b"chunk"
    finally:
        probe.finished.set()


class Streams(App):
    def __init__(self) -> None:
        super().__init__()
        self.probe = Probe()

    async def events(self) -> Any:
        return sse(endless_events(self.probe), headers=[("X-Stream", "events")])

    async def primed_events(self) -> Any:
        events = endless_events(self.probe)
        assert await events.__anext__() == "tick 1"  # started by the handler itself
        return sse(events)

    def primed_chunks(self) -> Any:
        chunks = endless_chunks(self.probe)
        assert next(chunks) == b"chunk"
        return 200, chunks, [("Content-Type", "application/octet-stream")]

    async def plain(self) -> str:
        return "plain"


async def _head(app: App, path: str) -> Client:
    client = Client()
    with anyio.fail_after(5):
        await app(head_scope(path), client.receive, client.send)
    return client


async def test_head_on_an_endless_event_stream_answers_headers_without_starting_it() -> None:
    app = Streams()
    client = await _head(app, "/events")
    start, end = client.sent
    assert start["type"] == "http.response.start"
    assert start["status"] == 200
    assert (b"Content-Type", b"text/event-stream; charset=utf-8") in start["headers"]
    assert (b"X-Stream", b"events") in start["headers"]
    assert end == {"type": "http.response.body", "body": b"", "more_body": False}
    assert not app.probe.started
    assert app.probe.yields == 0
    assert client.pending_receives == 0  # nothing left waiting for the client


async def test_head_closes_a_started_async_generator_without_advancing_it() -> None:
    app = Streams()
    client = await _head(app, "/primed_events")
    assert [m["type"] for m in client.sent] == ["http.response.start", "http.response.body"]
    assert client.sent[1]["body"] == b""
    assert app.probe.finished.is_set()
    assert app.probe.yields == 1  # the handler's own first step, never a second


async def test_head_closes_a_started_sync_generator_without_advancing_it() -> None:
    app = Streams()
    client = await _head(app, "/primed_chunks")
    assert client.sent[0]["status"] == 200
    assert client.sent[1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert app.probe.finished.is_set()
    assert app.probe.yields == 1


async def test_get_still_streams_the_same_route() -> None:
    app = Streams()

    class LeavesAfterThreeEvents(Client):
        async def send(self, message: dict[str, Any]) -> None:
            await super().send(message)
            if len([m for m in self.sent if m.get("body")]) == 3:
                self.leave()

    client = LeavesAfterThreeEvents()
    with anyio.fail_after(5):
        await app(http_scope("/events"), client.receive, client.send)
        await app.probe.finished.wait()
    assert b"data: tick 1" in client.sent[1]["body"]
    assert app.probe.yields >= 3


async def test_head_over_the_wire_answers_at_once_and_frees_the_connection() -> None:
    app = Streams()
    limits = httpx.Limits(max_connections=1)  # the GET must reuse the HEAD's connection
    async with running_server(app) as url, httpx.AsyncClient(base_url=url, limits=limits) as http:
        with anyio.fail_after(5):
            head = await http.head("/events")
            started_by_head = app.probe.started
            get = await http.get("/plain")
            primed = await http.head("/primed_events")
            await app.probe.finished.wait()
    assert head.status_code == 200
    assert head.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert head.content == b""
    assert not started_by_head
    assert get.status_code == 200
    assert get.text == "plain"
    assert primed.status_code == 200
    assert primed.content == b""
    assert app.probe.yields == 1  # only the primed handler's own step
