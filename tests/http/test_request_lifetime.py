"""A request, its body and its parsed JSON are freed when its response is sent.

Each body message moves the request's body deadline; on asyncio each move schedules a timer,
and a timer keeps the context it was scheduled in (the one that holds ``current_request``) until
its time comes, cancelled or not. Body deadlines are scheduled outside the request's context, so
no timer keeps a request, its body and its document alive for ``body_timeout`` after the
response: thousands of them, then freed at once on the event loop, stalled it.
"""

from __future__ import annotations

import gc
import weakref

import anyio
import anyio.lowlevel
import pytest

from micropie import App
from micropie.http.request import Request
from tests.support.drive import post_in_chunks

pytestmark = pytest.mark.anyio


class Keeper(App):
    def __init__(self) -> None:
        super().__init__(max_json_size=None)
        self.requests: list[weakref.ref[Request]] = []

    async def sink(self) -> str:
        self.requests.append(weakref.ref(self.request))
        items = self.request.json("items") or []
        return f"{len(items)} {self.request.body_params.get('a', [''])[0]}"


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
