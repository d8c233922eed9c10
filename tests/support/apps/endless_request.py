"""A raw ASGI app whose every request runs until it is cancelled, saying so on stderr."""

from __future__ import annotations

import sys
from typing import Any

import anyio

RUNNING = "endless_request: running"
CANCELLED = "endless_request: cancelled"


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await receive()
    _say(RUNNING)
    try:
        await anyio.sleep_forever()
    finally:
        _say(CANCELLED)
