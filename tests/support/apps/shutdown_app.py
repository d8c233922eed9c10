"""An app with long-lived connections, for the graceful shutdown tests (served by the CLI)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio

from micropie import App, ConnectionClosed, WebSocket
from micropie.http.sse import sse


class LongLived(App):
    async def ws_hold(self, ws: WebSocket) -> None:
        """Stay connected until the client or the server ends it."""
        await ws.accept()
        await ws.send_text("ready")
        try:
            while True:
                await ws.receive_text()
        except ConnectionClosed:
            pass

    async def ticks(self) -> object:
        async def forever() -> AsyncIterator[str]:
            while True:
                yield "tick"
                await anyio.sleep(0.05)

        return sse(forever())


app = LongLived()
