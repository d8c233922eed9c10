"""SIGTERM stops an HTTP/2 server on time and cleanly while one connection carries endless work.

One HTTP/2 + TLS connection holds three streams that would never end on their own: a handler
that waits forever (``/endless``), an endless streamed body (``/ticks``) and an idle WebSocket
(``/idle``, RFC 8441 extended CONNECT). On SIGTERM the server (``App.run`` in a subprocess, on
hypercorn's asyncio or trio worker, matching the test's backend) must exit with status 0 within
``graceful_timeout`` + 2 s, log neither a traceback nor an ERROR, and end every stream:

* the streamed body ends cleanly at once (micropie's ``begin_shutdown``), the generator closed;
* the WebSocket is closed with 1001 (going away) at once;
* the endless handler is cancelled when ``graceful_timeout`` runs out (its ``except`` and
  ``finally`` log it). On the asyncio worker micropie cancels it (hypercorn issue 308) and the
  connection then ends the graceful way: an empty 500 that ends the stream, GOAWAY, close. The
  trio worker cancels the whole connection instead, which the client sees as a plain close;
* the client sees the connection end rather than hang.

The same holds when the client has reset one of the streams (RST_STREAM) just before SIGTERM.
"""

from __future__ import annotations

import re
import signal
import time
from dataclasses import dataclass

import anyio
import anyio.to_thread
import pytest
import trustme
from wsproto.frame_protocol import FrameProtocol, Opcode

from tests.support.apps.h2_stopping import (
    HANDLER_CANCELLED,
    HANDLER_ENDED,
    HANDLER_RUNNING,
    STREAM_CLOSED,
    WEBSOCKET_ENDED,
    WEBSOCKET_OPEN,
)
from tests.support.h2_client import H2Client, H2Response
from tests.support.servers import CliServer, spawn_module
from tests.support.tls import client_context

pytestmark = pytest.mark.anyio

#: hypercorn's default graceful_timeout, which ``App.run`` keeps.
GRACEFUL_TIMEOUT = 3.0
#: How long the whole stop may take, from SIGTERM to the exit status.
STOP_BOUND = GRACEFUL_TIMEOUT + 2

_RUNNING_ON_HTTPS = r"Running on https://127\.0\.0\.1:(\d+)"


def close_code(response: H2Response) -> int | None:
    """The code of the WebSocket close frame among the frames a stream received, if any."""
    frames = FrameProtocol(client=True, extensions=[])
    frames.receive_bytes(response.body)
    for frame in frames.received_frames():
        if frame.opcode is Opcode.CLOSE:
            payload = frame.payload
            assert isinstance(payload, tuple)
            return int(payload[0])
    return None


async def wait_for_output(server: CliServer, pattern: str) -> list[re.Match[str]]:
    return await anyio.to_thread.run_sync(server.wait_for_output, pattern)


@dataclass
class Stop:
    """What a SIGTERM led to: the server's exit and output, what the client received."""

    status: int
    elapsed: float
    output: str
    client: H2Client
    streams: dict[str, int]

    def response(self, name: str) -> H2Response:
        return self.client.responses[self.streams[name]]


async def sigterm_with_endless_streams(
    backend: str,
    certificate_authority: trustme.CA,
    tls_files: dict[str, str],
    reset_before_stop: str | None = None,
) -> Stop:
    """Serve the endless app on ``backend``, open its three endless streams on one connection,
    reset ``reset_before_stop`` (if any) and send SIGTERM at once; read until the server
    closes the connection (bounded) and wait for its exit."""
    certfile, keyfile = tls_files["certfile"], tls_files["keyfile"]
    module = "tests.support.apps.h2_stopping"
    with CliServer(spawn_module(module, backend, certfile, keyfile)) as server:
        port = int((await wait_for_output(server, _RUNNING_ON_HTTPS))[0].group(1))
        context = client_context(certificate_authority)
        async with H2Client.connect("127.0.0.1", port, context) as client:
            with anyio.fail_after(10):
                ticks = await client.request("GET", "/ticks")
                # The first chunk: the server's SETTINGS (extended CONNECT allowed) came first.
                await client.receive_until(lambda: client.responses[ticks].body)
                endless = await client.request("GET", "/endless")
                idle = await client.open_websocket("/idle")
                await client.receive_until(lambda: client.responses[idle].headers)
            assert client.responses[idle].status == 200
            await wait_for_output(server, re.escape(HANDLER_RUNNING))
            await wait_for_output(server, re.escape(WEBSOCKET_OPEN))
            streams = {"ticks": ticks, "endless": endless, "idle": idle}
            if reset_before_stop is not None:
                await client.reset(streams[reset_before_stop])

            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(STOP_BOUND):  # asserted below, with the server's output
                await client.receive_until_closed()
            status = await anyio.to_thread.run_sync(server.wait, STOP_BOUND)
            elapsed = time.monotonic() - started
    return Stop(status, elapsed, server.output, client, streams)


def assert_clean_stop(stop: Stop) -> None:
    """Exit 0 on time, nothing logged as an error, every endless piece ended and said how."""
    assert stop.status == 0, stop.output
    assert stop.elapsed < STOP_BOUND, stop.output
    assert "Traceback" not in stop.output, stop.output
    assert "ERROR" not in stop.output, stop.output
    for marker in (HANDLER_CANCELLED, HANDLER_ENDED, STREAM_CLOSED, WEBSOCKET_ENDED):
        assert marker in stop.output, stop.output
    assert stop.client.closed, (stop.output, stop.client.responses)


def assert_ended_by_shutdown(stop: Stop, name: str, backend: str) -> None:
    """What the client sees of a stream it did not reset."""
    response = stop.response(name)
    if name == "ticks":  # the body ends cleanly, at once
        assert (response.status, response.ended) == (200, True), response
        assert response.body.startswith(b"tick\n"), response
    elif name == "idle":  # the WebSocket is closed with 1001, going away
        assert close_code(response) == 1001, response
        assert response.ended, response
    elif backend == "asyncio":  # cancelled before it answered: hypercorn's empty 500, ended
        assert (response.status, response.ended) == (500, True), response
    else:
        # The trio worker cancels the whole connection at graceful_timeout: the stream gets
        # neither an answer nor a reset, the connection just closes (asserted by the caller).
        assert not response.ended, response


async def test_sigterm_ends_every_http2_stream_and_exits_within_graceful_timeout(
    anyio_backend: str, certificate_authority: trustme.CA, tls_files: dict[str, str]
) -> None:
    stop = await sigterm_with_endless_streams(anyio_backend, certificate_authority, tls_files)
    assert_clean_stop(stop)
    # The endless handler had its grace period, and was cancelled when it ran out.
    assert stop.elapsed >= GRACEFUL_TIMEOUT, stop.output
    if anyio_backend == "asyncio":  # micropie's deadline (hypercorn's trio worker has its own)
        assert "Cancelled 1 requests still running after graceful_timeout" in stop.output
        assert stop.client.goaway_code == 0, stop.client  # GOAWAY, NO_ERROR, before the close
    for name in ("ticks", "idle", "endless"):
        assert_ended_by_shutdown(stop, name, anyio_backend)


@pytest.mark.parametrize("reset", ["endless", "ticks", "idle"])
async def test_a_stream_reset_just_before_sigterm_changes_nothing_for_the_others(
    anyio_backend: str, certificate_authority: trustme.CA, tls_files: dict[str, str], reset: str
) -> None:
    stop = await sigterm_with_endless_streams(
        anyio_backend, certificate_authority, tls_files, reset_before_stop=reset
    )
    assert_clean_stop(stop)
    for name in {"ticks", "idle", "endless"} - {reset}:
        assert_ended_by_shutdown(stop, name, anyio_backend)
    if reset == "endless":  # nothing was left for graceful_timeout to cancel
        assert stop.elapsed < GRACEFUL_TIMEOUT, stop.output
