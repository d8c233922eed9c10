"""A raw ASGI app for the CLI serving tests.

It answers every request with the event loop that serves it ("hello on trio"), so a test can
tell that ``--backend`` took effect, and writes a line to stderr when its lifespan shutdown
runs, so a test can tell that a signal led to a graceful shutdown.
"""

from __future__ import annotations

import sys
from typing import Any

import sniffio

SHUTDOWN_MARKER = "serving_hello: lifespan shutdown complete"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                sys.stderr.write(SHUTDOWN_MARKER + "\n")
                sys.stderr.flush()
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        await receive()
        body = f"hello on {sniffio.current_async_library()}".encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
