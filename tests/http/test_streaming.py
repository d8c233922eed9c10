"""Streamed responses: chunk by chunk, stopped at once when the client leaves."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from micropie import App
from micropie.http.sse import ServerSentEvent, sse
from tests.support.drive import Client, http_scope, lifespan

pytestmark = pytest.mark.anyio


class Reader(Client):
    """A client that lets ``leave_after`` body chunks through, then leaves."""

    def __init__(self, leave_after: int | None = None) -> None:
        super().__init__()
        self.leave_after = leave_after

    async def send(self, message: dict[str, Any]) -> None:
        if self.left.is_set():
            raise AssertionError(f"sent after the client left: {message}")
        await super().send(message)
        chunks = [m for m in self.sent if m.get("body")]
        if self.leave_after is not None and len(chunks) >= self.leave_after:
            self.leave()

    @property
    def chunks(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body"]


async def test_an_async_generator_streams_each_chunk() -> None:
    class Streams(App):
        async def index(self) -> AsyncIterator[str]:
            async def numbers() -> AsyncIterator[str]:
                for n in range(3):
                    yield f"{n};"

            return numbers()

    client = Reader()
    with anyio.fail_after(5):
        await Streams()(http_scope("/"), client.receive, client.send)
    assert client.sent[0] == {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"Content-Type", b"text/html; charset=utf-8")],
    }
    assert client.chunks == [b"0;", b"1;", b"2;", b""]
    assert client.sent[-1]["more_body"] is False


async def test_a_client_leaving_closes_an_endless_async_generator() -> None:
    closed = anyio.Event()

    class Endless(App):
        async def index(self) -> AsyncIterator[bytes]:
            async def forever() -> AsyncIterator[bytes]:
                try:
                    while True:
                        yield b"tick"
                        await anyio.sleep(0.01)
                finally:
                    closed.set()

            return forever()

    client = Reader(leave_after=3)
    with anyio.fail_after(5):
        await Endless()(http_scope("/"), client.receive, client.send)
        await closed.wait()
    assert client.chunks == [b"tick"] * 3  # and no final chunk: nobody is listening
    assert client.pending_receives == 0


async def test_a_sync_generator_runs_in_a_thread_and_is_closed_when_the_client_leaves() -> None:
    threads: set[int] = set()
    closed = threading.Event()

    class SyncStream(App):
        def index(self) -> Iterator[bytes]:
            def forever() -> Iterator[bytes]:
                try:
                    while True:
                        threads.add(threading.get_ident())
                        yield b"x"
                finally:
                    closed.set()

            return forever()

    client = Reader(leave_after=5)
    with anyio.fail_after(5):
        await SyncStream()(http_scope("/"), client.receive, client.send)
    assert closed.is_set()
    assert threading.get_ident() not in threads  # never advanced on the event loop thread
    assert client.chunks == [b"x"] * 5


async def test_a_generator_failing_mid_stream_leaves_the_stream_broken(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Failing(App):
        async def index(self) -> AsyncIterator[bytes]:
            async def broken() -> AsyncIterator[bytes]:
                yield b"first"
                raise RuntimeError("secret detail")

            return broken()

    client = Reader()
    with caplog.at_level(logging.ERROR, logger="micropie"), anyio.fail_after(5):
        await Failing()(http_scope("/"), client.receive, client.send)
    starts = [m for m in client.sent if m["type"] == "http.response.start"]
    assert len(starts) == 1
    assert client.chunks == [b"first"]  # no clean end: the client sees a broken stream
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "secret detail" not in b"".join(client.chunks).decode()


async def test_a_slow_reader_holds_the_generator_back() -> None:
    """Backpressure: while ``send()`` blocks, the generator is not advanced."""
    produced = 0
    release = anyio.Event()

    class Producer(App):
        async def index(self) -> AsyncIterator[bytes]:
            async def chunks() -> AsyncIterator[bytes]:
                nonlocal produced
                for _ in range(100):
                    produced += 1
                    yield b"." * 1024

            return chunks()

    class Stalled(Reader):
        async def send(self, message: dict[str, Any]) -> None:
            await super().send(message)
            if message.get("body"):
                await release.wait()  # the socket buffer is full

    client = Stalled()
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(Producer(), http_scope("/"), client.receive, client.send)
        with anyio.fail_after(5):
            while not client.chunks:
                await anyio.lowlevel.checkpoint()
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        assert produced == 1
        release.set()
    assert produced == 100


def test_server_sent_events_are_formatted_as_the_spec_says() -> None:
    event = ServerSentEvent("line one\nline two", event="update", id="7", retry=3000)
    assert event.encode() == (
        b"event: update\nid: 7\nretry: 3000\ndata: line one\ndata: line two\n\n"
    )
    assert ServerSentEvent({"n": 1}).encode() in (b'data: {"n":1}\n\n', b'data: {"n": 1}\n\n')
    assert ServerSentEvent(comment="hi").encode() == b": hi\n\n"
    with pytest.raises(ValueError, match="line break"):
        ServerSentEvent("x", id="1\n2").encode()


async def test_sse_sends_keepalive_comments_while_the_source_is_quiet() -> None:
    class Events(App):
        async def index(self) -> Any:
            async def slow() -> AsyncIterator[Any]:
                yield ServerSentEvent("first", id="1")
                await anyio.sleep(0.3)  # quiet long enough for pings
                yield "second"

            return sse(slow(), ping=0.05)

    client = Reader()
    with anyio.fail_after(5):
        await Events()(http_scope("/"), client.receive, client.send)
    headers = dict(client.sent[0]["headers"])
    assert headers[b"Content-Type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"Cache-Control"] == b"no-cache"
    chunks = client.chunks
    assert chunks[0] == b"id: 1\ndata: first\n\n"
    assert b": ping\n\n" in chunks[1:-2]
    assert chunks[-2:] == [b"data: second\n\n", b""]


async def test_graceful_shutdown_ends_a_stream_cleanly() -> None:
    """``begin_shutdown`` (called by app.serve / the CLI) finishes streams; generators close."""
    closed = anyio.Event()
    streaming = anyio.Event()

    class Events(App):
        async def index(self) -> Any:
            async def forever() -> AsyncIterator[str]:
                try:
                    while True:
                        yield "tick"
                        streaming.set()
                        await anyio.sleep(0.01)
                finally:
                    closed.set()

            return sse(forever())

    app = Events()
    client = Reader()
    async with lifespan(app):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(app, http_scope("/"), client.receive, client.send)
                await streaming.wait()
                app.begin_shutdown()
            await closed.wait()
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
