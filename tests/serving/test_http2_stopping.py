"""SIGTERM stops an HTTP/2 server on time and cleanly while one connection carries endless work.

One HTTP/2 + TLS connection holds three streams that would never end on their own: a handler
that waits forever (``/endless``), an endless streamed body (``/ticks``) and an idle WebSocket
(``/idle``, RFC 8441 extended CONNECT). On SIGTERM the server (``App.run`` in a subprocess, on
hypercorn's asyncio or trio worker, matching the test's backend) must exit with status 0 within
``graceful_timeout`` + 2 s, log neither a traceback nor an ERROR, and end every stream:

* the streamed body ends cleanly at once (micropie's ``begin_shutdown``), the generator closed;
* the WebSocket is closed with 1001 (going away) at once;
* the endless handler is cancelled when ``graceful_timeout`` runs out (its ``except`` and
  ``finally`` log it), however hypercorn's worker gets there: on the asyncio worker from Python
  3.12.1 on, micropie cancels the app call itself (hypercorn issue 308), and the question here is
  whether that is safe on an HTTP/2 connection (hypercorn pull request 374 reports that
  hypercorn's own cancellation at ``graceful_timeout`` can crash one);
* the client sees the connection end rather than hang.

The same holds when the client has reset one of the streams (RST_STREAM) just before SIGTERM.
"""

from __future__ import annotations

import re
import signal
import ssl
import time
from pathlib import Path

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

pytestmark = pytest.mark.anyio

#: hypercorn's default graceful_timeout, which ``App.run`` keeps.
GRACEFUL_TIMEOUT = 3.0
#: How long the whole stop may take, from SIGTERM to the exit status.
STOP_BOUND = GRACEFUL_TIMEOUT + 2

_RUNNING_ON_HTTPS = r"Running on https://127\.0\.0\.1:(\d+)"


@pytest.fixture(scope="module")
def certificate_authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_files(
    certificate_authority: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    """``(certfile, keyfile)`` for the server: a certificate for localhost and 127.0.0.1."""
    folder: Path = tmp_path_factory.mktemp("tls")
    certificate = certificate_authority.issue_cert("localhost", "127.0.0.1")
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(b"".join(pem.bytes() for pem in certificate.cert_chain_pems))
    certificate.private_key_pem.write_to_path(str(keyfile))
    return str(certfile), str(keyfile)


def client_context(certificate_authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    certificate_authority.configure_trust(context)
    return context


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


@pytest.mark.parametrize("reset_before_stop", [None, "endless", "ticks", "idle"])
async def test_sigterm_ends_every_http2_stream_and_exits_on_time(
    anyio_backend: str,
    certificate_authority: trustme.CA,
    tls_files: tuple[str, str],
    reset_before_stop: str | None,
) -> None:
    certfile, keyfile = tls_files
    module = "tests.support.apps.h2_stopping"
    with CliServer(spawn_module(module, anyio_backend, certfile, keyfile)) as server:
        port = int((await wait_for_output(server, _RUNNING_ON_HTTPS))[0].group(1))
        context = client_context(certificate_authority)
        async with H2Client.connect("127.0.0.1", port, context) as client:
            with anyio.fail_after(10):
                ticks = await client.request("GET", "/ticks")
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
            with anyio.move_on_after(STOP_BOUND):
                await client.receive_until_closed()
            client_done = time.monotonic() - started
            print({name: client.responses[sid] for name, sid in streams.items()})
            print(client.terminated, client.goaway_code, client.closed, client_done)
            status = await anyio.to_thread.run_sync(server.wait, STOP_BOUND)
            elapsed = time.monotonic() - started

        output = server.output
        print(output)
        print({name: client.responses[sid] for name, sid in streams.items()})
        print(client.terminated, client.goaway_code, client.closed, client_done, elapsed)
        assert status == 0, output
        assert elapsed < STOP_BOUND, output
        assert "Traceback" not in output, output
        assert "ERROR" not in output, output
        for marker in (HANDLER_CANCELLED, HANDLER_ENDED, STREAM_CLOSED, WEBSOCKET_ENDED):
            assert marker in output, output
        if reset_before_stop != "idle":
            assert close_code(client.responses[idle]) == 1001
        assert client.closed
