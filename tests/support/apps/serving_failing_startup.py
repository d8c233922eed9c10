"""A raw ASGI app whose lifespan startup fails, for the CLI's exit-status tests."""

from __future__ import annotations

from typing import Any

FAILURE_MESSAGE = "database unreachable"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()  # lifespan.startup
        await send({"type": "lifespan.startup.failed", "message": FAILURE_MESSAGE})
        return
    raise AssertionError("a server must not serve requests after a failed startup")
