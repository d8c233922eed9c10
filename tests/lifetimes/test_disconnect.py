"""A client that leaves cancels its request: the guarantee behind every HTTP handler.

Each test runs both ways the framework can be driven: with the ASGI lifespan running (the
app's disconnect sweeper gives long requests a watcher) and without it (each request watches
for itself). Both must give the same user-visible result.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from micropie import App, HttpMiddleware, Request
from tests.support.drive import Client, http_scope, lifespan

pytestmark = pytest.mark.anyio

#: Generous bound for "cancelled promptly": the sweeper needs at most two 50 ms sweeps.
PROMPTLY = 1.0


class Waiter(App):
    """Handlers that block until cancelled, and record that their cleanup ran."""

    def __init__(self, expected: int = 1) -> None:
        super().__init__()
        self.expected = expected
        self.started = anyio.Event()  # set when ``expected`` handlers are waiting
        self.all_cleaned_up = anyio.Event()  # set when ``expected`` handlers ran their finally
        self.started_count = 0
        self.cleaned_up = 0

    async def forever(self) -> str:
        self.started_count += 1
        if self.started_count == self.expected:
            self.started.set()
        try:
            await anyio.sleep_forever()
        finally:
            self.cleaned_up += 1
            if self.cleaned_up == self.expected:
                self.all_cleaned_up.set()
        return "unreachable"  # pragma: no cover

    async def quick(self) -> str:
        return "quick"


@pytest.fixture(params=[True, False], ids=["lifespan", "no-lifespan"])
def with_lifespan(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


async def test_client_leaving_cancels_a_waiting_handler(with_lifespan: bool) -> None:
    app = Waiter()
    client = Client()
    async with lifespan(app, running=with_lifespan):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(app, http_scope("/forever"), client.receive, client.send)
                await app.started.wait()
                client.leave()
                with anyio.fail_after(PROMPTLY):
                    await app.all_cleaned_up.wait()
    assert app.cleaned_up == 1
    assert client.sent == []  # nobody is there to answer
    assert client.pending_receives == 0


async def test_fifty_clients_leaving_leave_no_task_behind(with_lifespan: bool) -> None:
    app = Waiter(expected=50)
    clients = [Client() for _ in range(50)]
    async with lifespan(app, running=with_lifespan):
        baseline = len(anyio.get_running_tasks())
        with anyio.fail_after(5):
            async with anyio.create_task_group() as task_group:
                for client in clients:
                    task_group.start_soon(app, http_scope("/forever"), client.receive, client.send)
                await app.started.wait()
                for client in clients:
                    client.leave()
                with anyio.fail_after(PROMPTLY):
                    await app.all_cleaned_up.wait()
        assert len(anyio.get_running_tasks()) == baseline
    assert all(client.pending_receives == 0 for client in clients)
    assert app._sweeper.registered == 0


async def test_a_quick_request_never_reads_receive(with_lifespan: bool) -> None:
    """Short requests pay for no watcher: with lifespan, ``receive()`` is never even called."""
    app = Waiter()
    client = Client()
    async with lifespan(app, running=with_lifespan):
        with anyio.fail_after(5):
            await app(http_scope("/quick"), client.receive, client.send)
    assert client.sent[1]["body"] == b"quick"
    assert client.pending_receives == 0
    if with_lifespan:
        assert client.receive_calls == 0


async def test_a_finished_slow_request_stops_its_watcher(with_lifespan: bool) -> None:
    """A request that outlived a sweep got a watcher; finishing cancels it (no pending receive)."""

    class Slow(App):
        async def index(self) -> str:
            await anyio.sleep(0.2)  # four sweeps
            return "done"

    app = Slow()
    client = Client()
    async with lifespan(app, running=with_lifespan):
        with anyio.fail_after(5):
            await app(http_scope("/"), client.receive, client.send)
        assert client.receive_calls == 1  # the watcher was there...
        assert client.pending_receives == 0  # ...and is gone with the request
    assert client.sent[1]["body"] == b"done"


async def test_middleware_waiting_is_cancelled_too(with_lifespan: bool) -> None:
    entered = anyio.Event()
    cleaned_up = anyio.Event()

    class Stuck(HttpMiddleware):
        async def before_request(self, request: Request) -> None:
            entered.set()
            try:
                await anyio.sleep_forever()
            finally:
                cleaned_up.set()

        async def after_request(self, *args: Any) -> None:  # pragma: no cover - never reached
            return None

    app = Waiter()
    app.middlewares.append(Stuck())
    client = Client()
    async with lifespan(app, running=with_lifespan):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(app, http_scope("/quick"), client.receive, client.send)
                await entered.wait()
                client.leave()
                with anyio.fail_after(PROMPTLY):
                    await cleaned_up.wait()
    assert client.sent == []


async def test_cancellation_from_outside_propagates(with_lifespan: bool) -> None:
    """Server shutdown cancels the request: that cancellation is never swallowed."""
    app = Waiter()
    client = Client()
    async with lifespan(app, running=with_lifespan):
        with anyio.fail_after(5):
            with anyio.CancelScope() as outer:
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(app, http_scope("/forever"), client.receive, client.send)
                    await app.started.wait()
                    outer.cancel()
            assert outer.cancelled_caught
    assert app.cleaned_up == 1
    assert client.sent == []
    assert client.pending_receives == 0


async def test_the_next_request_is_unaffected_by_a_cancelled_one(with_lifespan: bool) -> None:
    app = Waiter()
    first, second = Client(), Client()
    async with lifespan(app, running=with_lifespan):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(app, http_scope("/forever"), first.receive, first.send)
                await app.started.wait()
                first.leave()
            await app(http_scope("/quick"), second.receive, second.send)
    assert second.sent[0]["status"] == 200
    assert second.sent[1]["body"] == b"quick"


class Echo(App):
    async def echo(self) -> bytes:
        return self.request.body


def post_scope(path: str, length: int) -> dict[str, Any]:
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(length).encode())]
    return {"type": "http", "method": "POST", "path": path, "headers": headers}


async def test_a_stalled_body_gets_408_at_body_timeout(with_lifespan: bool) -> None:
    app = Echo(body_timeout=0.1)
    client = Client()
    messages = [{"type": "http.request", "body": b"par", "more_body": True}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        return await client.receive()  # the rest never comes

    async with lifespan(app, running=with_lifespan):
        started = anyio.current_time()
        with anyio.fail_after(5):
            await app(post_scope("/echo", 6), receive, client.send)
        elapsed = anyio.current_time() - started
    assert client.sent[0]["status"] == 408
    assert client.sent[1]["body"] == b"408 Request Timeout: Failed to receive body"
    assert 0.1 <= elapsed < 0.1 + PROMPTLY


async def test_the_body_timeout_applies_to_each_message(with_lifespan: bool) -> None:
    """Five chunks, each well within the timeout, take longer than the timeout in total."""
    app = Echo(body_timeout=0.25)
    client = Client()
    chunks = [b"a", b"b", b"c", b"d", b"e"]

    async def receive() -> dict[str, Any]:
        if not chunks:
            return await client.receive()
        await anyio.sleep(0.08)  # the client is slow, not stalled: this is what is tested
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async with lifespan(app, running=with_lifespan):
        with anyio.fail_after(5):
            await app(post_scope("/echo", 5), receive, client.send)
    assert client.sent[0]["status"] == 200
    assert client.sent[1]["body"] == b"abcde"
