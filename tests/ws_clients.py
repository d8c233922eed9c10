"""Real WebSocket clients for end-to-end tests: trio-websocket on trio, websockets on asyncio.

``ws_connect(url, backend)`` gives both the same small face (``send``, ``recv``), and a server
close comes out of ``recv()`` as ``Closed(code, reason)`` whichever library is underneath.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any


class Closed(Exception):
    """The server closed the connection with ``code``/``reason`` (either client library)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class Client:
    """A uniform face for trio-websocket (trio) and websockets (asyncio)."""

    def __init__(self, connection: Any, backend: str) -> None:
        self._connection = connection
        self._backend = backend

    async def send(self, data: str | bytes) -> None:
        if self._backend == "trio":
            await self._connection.send_message(data)
        else:
            await self._connection.send(data)

    async def recv(self) -> str | bytes:
        if self._backend == "trio":
            import trio_websocket

            try:
                return await self._connection.get_message()  # type: ignore[no-any-return]
            except trio_websocket.ConnectionClosed as exc:
                raise Closed(exc.reason.code, exc.reason.reason or "") from None
        import websockets.exceptions

        try:
            return await self._connection.recv()  # type: ignore[no-any-return]
        except websockets.exceptions.ConnectionClosed as exc:
            received = exc.rcvd
            code, reason = (received.code, received.reason) if received else (None, "")
            raise Closed(code, reason) from None


@asynccontextmanager
async def ws_connect(url: str, backend: str) -> AsyncIterator[Client]:
    url = url.replace("http://", "ws://", 1)
    if backend == "trio":
        import trio_websocket

        connection = None
        try:
            async with trio_websocket.open_websocket_url(url, disconnect_timeout=2) as connection:
                yield Client(connection, backend)
        finally:
            # trio-websocket 0.12 never closes its socket when the server closed first (its
            # reader stops at EOF in the CLOSED state): close it ourselves (idempotent).
            if connection is not None:
                await connection._stream.aclose()
        return
    import websockets.asyncio.client

    async with websockets.asyncio.client.connect(url, proxy=None, close_timeout=2) as connection:
        yield Client(connection, backend)
