"""A request, its body and its parsed JSON are freed when its response is sent.

On asyncio a loop timer keeps the context it was scheduled in (the one that holds
``current_request``) until its time comes, cancelled or not. Three kinds of timer were
scheduled in a request's context: its body deadlines (without lifespan, one per body message),
its handler's time limit, and the server's own keep-alive timer, which hypercorn starts inside
the response's last ``send()``. Each kept the request, its body and its document alive for
``body_timeout``, the time limit or the keep-alive timeout after the response: thousands of
them, then freed at once on the event loop, stalled it. Deadlines are now scheduled outside the
request's context (``lifetimes.cancel_scopes.set_deadline``), and a plain answer is sent after
the request's context is left.
"""

from __future__ import annotations

import gc
import weakref

import anyio
import anyio.lowlevel
import httpx
import pytest

from micropie import App, time_limit
from micropie.core.types import Receive, Scope, Send
from micropie.http.request import Request
from tests.support.drive import lifespan, post_in_chunks
from tests.support.servers import running_server

pytestmark = pytest.mark.anyio


class Keeper(App):
    def __init__(self) -> None:
        super().__init__(max_json_size=None)
        self.requests: list[weakref.ref[Request]] = []

    async def sink(self) -> str:
        self.requests.append(weakref.ref(self.request))
        items = self.request.json("items") or []
        return f"{len(items)} {self.request.body_params.get('a', [''])[0]}"

    @time_limit(60)
    async def limited(self) -> str:
        return await self.sink()

    def live_requests(self) -> int:
        """How many of the requests recorded so far are still alive, after a collection."""
        gc.collect()
        return sum(request() is not None for request in self.requests)


@pytest.mark.parametrize(
    ("content_type", "body", "answer"),
    [
        (b"application/json", b'{"items":[' + b",".join([b"[]"] * 50_000) + b"]}", b"50000 "),
        (b"application/x-www-form-urlencoded", b"a=" + b"x" * 300_000, b"0 " + b"x" * 300_000),
    ],
    ids=["json", "urlencoded"],
)
async def test_nothing_keeps_a_request_after_its_response(
    content_type: bytes, body: bytes, answer: bytes
) -> None:
    app = Keeper()
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(tick)  # as a server's own timers: asyncio's next is not a body's
        for _ in range(3):
            with anyio.fail_after(20):
                status, sent, taken = await post_in_chunks(
                    app, "/sink", body, headers, chunk_size=16384
                )
            assert (status, sent) == (200, answer)
            assert taken >= 8  # a body deadline per message
        for _ in range(3):  # callbacks already due (a cancel scope's last delivery) run
            await anyio.lowlevel.checkpoint()
        gc.collect()  # cycles aside: what stays is held by something alive
        assert [request() for request in app.requests] == [None, None, None]
        task_group.cancel_scope.cancel()


async def tick() -> None:
    """A timer that is always due sooner than a body deadline: it stays first in asyncio's
    timer heap, so the cancelled timers behind it wait for their own time to be dropped."""
    for _ in range(120):  # cancelled when the test is done; a minute at most
        await anyio.sleep(0.5)


async def test_a_kept_alive_connection_keeps_no_request_after_its_response() -> None:
    """hypercorn starts its keep-alive timer inside the response's last ``send()``."""
    app = Keeper()
    calls = CountedCalls(app)
    document = {"items": [[] for _ in range(1000)]}
    async with running_server(calls) as url, httpx.AsyncClient(base_url=url) as client:
        for _ in range(3):  # one connection: each response (re)starts its keep-alive timer
            with anyio.fail_after(10):
                response = await client.post("/sink", json=document)
            assert (response.status_code, response.text) == (200, "1000 ")
        with anyio.fail_after(10):
            await calls.ended(3)  # the response is out before the app's call has returned
        assert len(app.requests) == 3
        assert app.live_requests() == 0


class CountedCalls:
    """The app, telling when a number of its HTTP calls have returned."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.returned = 0
        self._changed = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http":
                self.returned += 1
                self._changed.set()
                self._changed = anyio.Event()

    async def ended(self, count: int) -> None:
        while self.returned < count:
            await self._changed.wait()


async def test_a_handlers_time_limit_keeps_no_request_after_its_response() -> None:
    app = Keeper()
    document = b'{"items":[' + b",".join([b"[]"] * 1000) + b"]}"
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(document))]
    async with lifespan(app):
        for _ in range(3):
            with anyio.fail_after(10):
                status, sent, _ = await post_in_chunks(
                    app, "/limited", document, headers, chunk_size=len(document)
                )
            assert (status, sent) == (200, b"1000 ")
        assert app.live_requests() == 0
