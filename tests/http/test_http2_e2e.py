"""HTTP/2 over TLS end to end: hypercorn (asyncio and trio workers), httpx and an h2 client.

The server gets a certificate from a throwaway ``trustme`` CA and negotiates ``h2`` by ALPN.
httpx (``http2=True``) checks what an ordinary client sees: routes, JSON, a multipart upload
larger than HTTP/2's initial flow-control window, a streamed body and server-sent events.
httpx never resets a stream it closes early, so the cancellation tests use ``H2Client``
(tests/h2_client.py), which sends RST_STREAM the way a browser does when a tab closes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
import trustme

from micropie import App
from micropie.http.sse import ServerSentEvent, sse
from tests.support.apps.common_routes import CommonRoutes
from tests.support.h2_client import H2Client
from tests.support.servers import running_server
from tests.support.tls import client_context

pytestmark = pytest.mark.anyio

#: Larger than HTTP/2's initial 65,535-byte window: the upload needs WINDOW_UPDATEs to finish.
UPLOAD_SIZE = 300_000


class Http2App(CommonRoutes, App):
    """Routes for each kind of answer, and events that record a handler's end."""

    def __init__(self) -> None:
        super().__init__()
        self.slow_started = anyio.Event()
        self.slow_cancelled = anyio.Event()
        self.endless_started = anyio.Event()
        self.endless_closed = anyio.Event()
        self.gate_reached = anyio.Event()
        self.gate = anyio.Event()

    async def index(self) -> str:
        return f"home over {self.request.scope['http_version']}"

    async def events(self) -> Any:
        async def ticks() -> AsyncIterator[ServerSentEvent]:
            for i in range(3):
                yield ServerSentEvent({"n": i}, event="tick", id=str(i))

        return sse(ticks())

    async def gated(self) -> str:
        self.gate_reached.set()
        await self.gate.wait()
        return "opened"

    async def slow(self) -> str:
        self.slow_started.set()
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            self.slow_cancelled.set()
            raise
        return "too late"

    async def endless(self) -> AsyncIterator[bytes]:
        async def ticks() -> AsyncIterator[bytes]:
            self.endless_started.set()
            try:
                while True:
                    yield b"tick\n"
                    await anyio.sleep(0.05)
            finally:
                self.endless_closed.set()

        return ticks()


async def test_routes_json_upload_stream_and_events_over_http2(
    certificate_authority: trustme.CA, tls_files: dict[str, str]
) -> None:
    app = Http2App()
    async with (
        running_server(app, **tls_files) as url,
        httpx.AsyncClient(
            base_url=url.replace("http://", "https://"),
            http2=True,
            verify=client_context(certificate_authority),
        ) as client,
    ):
        home = await client.get("/")
        assert home.http_version == "HTTP/2"
        assert (home.status_code, home.text) == (200, "home over 2")

        posted = await client.post("/echo", json={"a": [1, 2], "é": None})
        assert posted.json() == {"json": {"a": [1, 2], "é": None}}

        data = os.urandom(UPLOAD_SIZE)
        uploaded = await client.post(
            "/upload",
            data={"title": "big"},
            files={"doc": ("blob.bin", data, "application/octet-stream")},
        )
        assert uploaded.status_code == 200
        assert uploaded.json() == {
            "title": "big",
            "filename": "blob.bin",
            "size": UPLOAD_SIZE,
            "sha256": hashlib.sha256(data).hexdigest(),
        }

        async with client.stream("GET", "/count/200") as streamed:
            assert streamed.http_version == "HTTP/2"
            body = b"".join([chunk async for chunk in streamed.aiter_bytes()])
        assert body == b"".join(f"{i};".encode() for i in range(200))

        events = await client.get("/events")
        assert events.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert events.text == "".join(
            f'event: tick\nid: {i}\ndata: {{"n":{i}}}\n\n' for i in range(3)
        ) or events.text == "".join(
            f'event: tick\nid: {i}\ndata: {{"n": {i}}}\n\n' for i in range(3)
        )  # orjson or the standard library


async def test_several_requests_share_one_connection_concurrently(
    certificate_authority: trustme.CA, tls_files: dict[str, str]
) -> None:
    """HTTP/2 multiplexing: a slow stream does not hold up the quick answers beside it."""
    app = Http2App()
    async with (
        running_server(app, **tls_files) as url,
        httpx.AsyncClient(
            base_url=url.replace("http://", "https://"),
            http2=True,
            verify=client_context(certificate_authority),
        ) as client,
    ):
        gated: list[str] = []

        async def fetch_gated() -> None:
            gated.append((await client.get("/gated")).text)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(fetch_gated)
                await app.gate_reached.wait()
                answers = [(await client.get("/")).text for _ in range(5)]
                app.gate.set()
        assert gated == ["opened"]
        assert answers == ["home over 2"] * 5


@pytest.mark.parametrize("route", ["slow", "endless"])
async def test_a_reset_stream_cancels_its_handler_and_the_connection_serves_on(
    certificate_authority: trustme.CA, tls_files: dict[str, str], route: str
) -> None:
    """RST_STREAM cancels the handler (or closes the generator) within 1 s, nothing else."""
    app = Http2App()
    started, ended = {
        "slow": (app.slow_started, app.slow_cancelled),
        "endless": (app.endless_started, app.endless_closed),
    }[route]
    async with running_server(app, **tls_files) as url:
        port = int(url.rsplit(":", 1)[1])
        context = client_context(certificate_authority)
        async with H2Client.connect("127.0.0.1", port, context) as client:
            stream_id = await client.request("GET", f"/{route}")
            with anyio.fail_after(5):
                await started.wait()
                if route == "endless":  # reset mid-body, after the first chunk arrived
                    await client.receive_until(lambda: client.responses[stream_id].body)
            await client.reset(stream_id)
            with anyio.fail_after(1):
                await ended.wait()

            # The same connection carries on: a new stream gets a whole answer.
            next_id = await client.request("GET", "/")
            with anyio.fail_after(5):
                await client.receive_until(lambda: client.responses[next_id].ended)
            answer = client.responses[next_id]
            assert (answer.status, answer.body) == (200, b"home over 2")
            assert not client.terminated
