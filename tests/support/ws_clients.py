"""Real WebSocket clients for end-to-end tests: trio-websocket on trio, websockets on asyncio.

``ws_connect(url, backend)`` gives both the same small face (``send``, ``recv``), and a server
close comes out of ``recv()`` as ``Closed(code, reason)`` whichever library is underneath.
``open_raw_websocket`` is a client that never reads once the handshake is done.
"""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc


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


async def open_raw_websocket(port: int, path: str) -> anyio.abc.SocketStream:
    """A WebSocket handshake by hand on a socket with a small receive buffer; the 101 is read.

    Reads the response one byte at a time up to the blank line, so that not one byte of the
    first frame is consumed: from here on the client reads nothing at all.
    """
    stream = await anyio.connect_tcp("127.0.0.1", port)
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        assert len(head) < 8192, head
        head += await stream.receive(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return stream
