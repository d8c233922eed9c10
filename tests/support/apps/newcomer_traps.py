"""A micropie app with the mistakes a newcomer makes, for the CLI tests of what the log says.

One handler of each kind fails once (``/boom``, ``/stream``, ``ws /boom``); ``/nap`` and
``ws /nap`` call asyncio-only code, which fails on trio.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from micropie import App, WebSocket


class Traps(App):
    async def index(self) -> str:
        return "ok"

    async def boom(self) -> str:
        raise ValueError("boom from the handler")

    async def stream(self) -> AsyncIterator[str]:
        async def chunks() -> AsyncIterator[str]:
            yield "first chunk\n"
            raise ValueError("boom from the stream")

        return chunks()

    async def nap(self) -> str:
        await asyncio.sleep(0.01)
        return "slept"

    async def ws_boom(self, ws: WebSocket) -> None:
        await ws.accept()
        raise ValueError("boom from the WebSocket handler")

    async def ws_nap(self, ws: WebSocket) -> None:
        await ws.accept()
        await asyncio.sleep(0.01)


app = Traps(session_cookie_secure=False)
