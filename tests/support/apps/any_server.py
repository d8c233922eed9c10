"""The app that other ASGI servers (uvicorn, granian) serve in tests/serving/test_other_servers.py.

MicroPie's documented WebSocket examples (echo, greet) plus one HTTP route for each kind of
answer. The server runs in another process, so the test learns what happened inside it over HTTP:
``/happened/NAME`` waits (at most ``WAIT_SECONDS``) for the named moment, such as
``KEY-cancelled`` after ``/slow/KEY``, and answers ``yes`` or ``no``. Each test picks its own
KEY, so the tests can share one server process.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import sniffio

from examples.websockets.app import MyApp
from micropie import ConnectionClosed, WebSocket
from tests.support.apps.common_routes import CommonRoutes

#: What the test reads in the server's output (WARNING: printed even where nobody set up logging).
report = logging.getLogger("tests.any_server")

#: The longest ``/happened/NAME`` waits before answering "no".
WAIT_SECONDS = 5.0


class AnyServerApp(CommonRoutes, MyApp):
    def __init__(self) -> None:
        super().__init__()
        # Created on first use: an anyio.Event needs the running event loop.
        self._moments: dict[str, anyio.Event] = {}
        self.close_codes: dict[str, int] = {}

    async def close_code(self, key: str) -> str:
        """The close code ``ws_listen`` saw for ``key`` (waits like ``happened``)."""
        if await self.happened(f"{key}-closed") == "no":
            return "none"
        return str(self.close_codes[key])

    def _moment(self, name: str) -> anyio.Event:
        if name not in self._moments:
            self._moments[name] = anyio.Event()
        return self._moments[name]

    async def index(self) -> str:
        return f"micropie on {sniffio.current_async_library()}"

    async def happened(self, name: str) -> str:
        with anyio.move_on_after(WAIT_SECONDS):
            await self._moment(name).wait()
        return "yes" if self._moment(name).is_set() else "no"

    async def slow(self, key: str) -> str:
        self._moment(f"{key}-started").set()
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            self._moment(f"{key}-cancelled").set()
            raise
        return "too late"

    async def endless(self, key: str) -> AsyncIterator[bytes]:
        async def ticks() -> AsyncIterator[bytes]:
            self._moment(f"{key}-started").set()
            try:
                while True:
                    yield b"tick\n"
                    await anyio.sleep(0.05)
            finally:
                self._moment(f"{key}-closed").set()

        return ticks()

    async def ws_broken(self, ws: WebSocket) -> None:
        await ws.accept()
        raise RuntimeError("a failing WebSocket handler")

    async def ws_listen(self, ws: WebSocket, key: str) -> None:
        await ws.accept()
        try:
            while True:
                await ws.receive_text()
        except ConnectionClosed as closed:
            self.close_codes[key] = closed.code
            self._moment(f"{key}-closed").set()

    async def ws_wait(self, ws: WebSocket, key: str) -> None:
        await ws.accept()
        self._moment(f"{key}-started").set()
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            self._moment(f"{key}-cancelled").set()
            report.warning("WebSocket handler %s cancelled", key)
            raise


app = AnyServerApp()


async def _report_shutdown() -> None:
    report.warning("lifespan shutdown ran")


app.shutdown_handlers.append(_report_shutdown)
