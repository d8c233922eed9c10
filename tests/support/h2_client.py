"""A small HTTP/2 client on ``h2`` for what httpx cannot do: reset a stream mid-response.

httpx closes an HTTP/2 response early without telling the server (no RST_STREAM), so a test of
"the client cancelled its request" needs a client that sends the frame itself::

    async with H2Client.connect("127.0.0.1", port, ssl_context) as client:
        stream_id = await client.request("GET", "/endless")
        await client.receive_until(lambda: client.responses[stream_id].body)
        await client.reset(stream_id)

It runs over an anyio TLS stream, so it works on asyncio and trio alike. It answers the
server's SETTINGS and PINGs and gives back flow-control credit for every DATA frame it reads.
Callers bound every ``receive_until`` and ``receive_until_closed`` with ``anyio.fail_after``.

``open_websocket`` starts a WebSocket over HTTP/2 (RFC 8441's extended CONNECT); the frames the
server sends arrive as the stream's ``body``.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.abc
import h2.config
import h2.connection
import h2.errors
import h2.events
from anyio.streams.tls import TLSAttribute


@dataclass
class H2Response:
    """What arrived on one stream so far."""

    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    ended: bool = False
    reset_by_server: bool = False
    #: The error code of the server's RST_STREAM, when it sent one.
    reset_code: int | None = None

    @property
    def status(self) -> int:
        return int(self.headers[":status"])


class H2Client:
    """One HTTP/2 connection; ``responses`` maps each stream id to what it received."""

    def __init__(self, stream: anyio.abc.ByteStream, authority: str) -> None:
        self._stream = stream
        self._authority = authority
        self._connection = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.responses: dict[int, H2Response] = {}
        #: The server sent GOAWAY (``goaway_code`` says why).
        self.terminated = False
        self.goaway_code: int | None = None
        #: The server closed the connection (TCP/TLS end of stream, or a reset).
        self.closed = False

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, host: str, port: int, ssl_context: ssl.SSLContext, server_hostname: str = "localhost"
    ) -> AsyncIterator[H2Client]:
        """Open a TLS connection that negotiated ``h2`` (ALPN) and send the preface."""
        ssl_context.set_alpn_protocols(["h2"])
        # Not "standard compatible": servers (hypercorn among them) close without TLS
        # close_notify, which only matters for protocols that end a body at EOF; h2 does not.
        stream = await anyio.connect_tcp(
            host,
            port,
            tls=True,
            ssl_context=ssl_context,
            tls_hostname=server_hostname,
            tls_standard_compatible=False,
        )
        async with stream:
            negotiated = stream.extra(TLSAttribute.alpn_protocol)
            if negotiated != "h2":
                raise AssertionError(f"the server negotiated {negotiated!r}, not h2")
            client = cls(stream, server_hostname)
            client._connection.initiate_connection()
            await client._flush()
            yield client
            if not client.terminated and not client.closed:
                client._connection.close_connection()  # GOAWAY, as a polite client does
                await client._flush()

    async def request(self, method: str, path: str) -> int:
        """Send a request without a body; return its stream id."""
        stream_id: int = self._connection.get_next_available_stream_id()
        self._connection.send_headers(
            stream_id,
            [
                (":method", method),
                (":path", path),
                (":scheme", "https"),
                (":authority", self._authority),
            ],
            end_stream=True,
        )
        self.responses[stream_id] = H2Response()
        await self._flush()
        return stream_id

    async def open_websocket(self, path: str) -> int:
        """Start a WebSocket on a new stream (extended CONNECT); return its stream id.

        The server must have allowed it (SETTINGS_ENABLE_CONNECT_PROTOCOL): receive its SETTINGS
        first, e.g. by waiting for another response.
        """
        stream_id: int = self._connection.get_next_available_stream_id()
        self._connection.send_headers(
            stream_id,
            [
                (":method", "CONNECT"),
                (":protocol", "websocket"),
                (":path", path),
                (":scheme", "https"),
                (":authority", self._authority),
                ("sec-websocket-version", "13"),
            ],
        )
        self.responses[stream_id] = H2Response()
        await self._flush()
        return stream_id

    async def reset(self, stream_id: int) -> None:
        """Cancel one stream (RST_STREAM, CANCEL), as a browser does when a tab closes."""
        self._connection.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        await self._flush()

    async def receive_until(self, done: Callable[[], object]) -> None:
        """Read and handle frames until ``done()`` is true (unbounded: wrap in fail_after)."""
        while not done():
            if self.terminated:
                raise AssertionError("the server ended the connection (GOAWAY)")
            data = await self._stream.receive()
            for event in self._connection.receive_data(data):
                self._handle(event)
            await self._flush()

    async def receive_until_closed(self) -> None:
        """Read and handle frames, GOAWAY included, until the server closes the connection, then
        close this end too, as a browser does (unbounded: wrap in fail_after)."""
        while not self.closed:
            try:
                data = await self._stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                self.closed = True
                await self._stream.aclose()
                return
            for event in self._connection.receive_data(data):
                self._handle(event)
            try:
                await self._flush()
            except anyio.BrokenResourceError:
                self.closed = True

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            response = self.responses[event.stream_id]
            response.headers.update((str(k), str(v)) for k, v in event.headers or [])
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None
            assert event.data is not None
            if event.stream_id in self.responses:
                self.responses[event.stream_id].body += event.data
            self._connection.acknowledge_received_data(
                event.flow_controlled_length or 0, event.stream_id
            )
        elif isinstance(event, h2.events.StreamEnded):
            self.responses[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset):
            if event.remote_reset and event.stream_id in self.responses:
                self.responses[event.stream_id].reset_by_server = True
                self.responses[event.stream_id].reset_code = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = True
            self.goaway_code = event.error_code

    async def _flush(self) -> None:
        data = self._connection.data_to_send()
        if data:
            await self._stream.send(data)
