"""A micropie App served over HTTP/2 + TLS that never finishes anything, for the stopping tests.

Run as ``python -m tests.support.apps.h2_stopping BACKEND CERTFILE KEYFILE``: it serves on
127.0.0.1, port 0, with ``App.run`` (SIGINT/SIGTERM stop it gracefully) and logs, at INFO on
stderr, when each endless piece starts and how it ended, so that a test can tell a handler that
was cancelled from one that was abandoned:

* ``/endless``: a handler that waits forever ("h2_stopping: handler cancelled" once cancelled);
* ``/ticks``: an async generator that yields forever ("h2_stopping: stream closed");
* ``/idle`` (WebSocket): accepts, then waits for a message that never comes
  ("h2_stopping: websocket ended").
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator

import anyio

from micropie import App
from micropie.websocket import WebSocket

logger = logging.getLogger("h2_stopping")

HANDLER_RUNNING = "h2_stopping: handler running"
HANDLER_CANCELLED = "h2_stopping: handler cancelled"
HANDLER_ENDED = "h2_stopping: handler ended"
STREAM_RUNNING = "h2_stopping: stream running"
STREAM_CLOSED = "h2_stopping: stream closed"
WEBSOCKET_OPEN = "h2_stopping: websocket open"
WEBSOCKET_ENDED = "h2_stopping: websocket ended"


class EndlessApp(App):
    async def endless(self) -> str:
        logger.info(HANDLER_RUNNING)
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            logger.info(HANDLER_CANCELLED)
            raise
        finally:
            logger.info(HANDLER_ENDED)
        return "unreachable"

    async def ticks(self) -> AsyncIterator[bytes]:
        async def forever() -> AsyncIterator[bytes]:
            logger.info(STREAM_RUNNING)
            try:
                while True:
                    yield b"tick\n"
                    await anyio.sleep(0.05)
            finally:
                logger.info(STREAM_CLOSED)

        return forever()

    async def ws_idle(self, ws: WebSocket) -> None:
        await ws.accept()
        logger.info(WEBSOCKET_OPEN)
        try:
            await ws.receive_text()
        finally:
            logger.info(WEBSOCKET_ENDED)


app = EndlessApp()


def main(backend: str, certfile: str, keyfile: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(relativeCreated)d ms [%(levelname)s] %(message)s"))
    for name in ("micropie", "h2_stopping"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
        logging.getLogger(name).propagate = False
    app.run(
        host="127.0.0.1",
        port=0,
        backend=backend,
        certfile=certfile,
        keyfile=keyfile,
        loglevel="INFO",
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
