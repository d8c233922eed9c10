"""Hypercorn's trio worker must survive a client that closes a WebSocket as the app closes it.

Unfixed, hypercorn's trio ``TCPServer._close`` sends its EOF while the reading task answers the
client's close frame, and the ``trio.BusyResourceError`` that follows ends the whole server
process within a few such connections (docs/hypercorn-trio-send-eof.md). Every test here runs
MicroPie's documented ``ws_greet`` (accept, greet, close) against a raw-socket client that reads the
greeting, then sends its close frame and FIN at once, ``RACES`` times in a row, and then checks
that the server still answers. The trio worker only: the asyncio worker has no such race.
"""

from __future__ import annotations

import base64
import os
import runpy
import socket
import struct
import subprocess
import sys
import time

import anyio
import httpx
import pytest
import trio
from hypercorn.trio.tcp_server import TCPServer

from micropie.serving.hypercorn_glue import fix_hypercorn_trio_send_eof
from tests.support.servers import ROOT, CliServer, running_server

RACES = 300
#: Bound for one connection's handshake and close, and for a whole run of RACES.
CONNECTION_TIMEOUT = 5.0
RUN_TIMEOUT = 60.0

#: The apps and the client that docs/hypercorn-trio-send-eof.md shows, run as they stand.
SAMPLES = "docs_src/hypercorn_send_eof"
MICROPIE_GREETER = f"{SAMPLES}/greet.py:app"
PLAIN_GREETER = f"{SAMPLES}/plain_app.py:app"
PLAIN_GREETER_FIXED = f"{SAMPLES}/plain_app_fixed.py:app"


class ServerGone(Exception):
    """The server refused or dropped a new connection before its WebSocket handshake."""


def close_race(host: str, port: int, path: str) -> None:
    """One connection: handshake, read the greeting, then a close frame and FIN at once.

    Raises ``ServerGone`` when the handshake fails; anything after the handshake may fail
    (the server may close first) and is not the server dying.
    """
    try:
        sock = socket.create_connection((host, port), timeout=CONNECTION_TIMEOUT)
    except OSError as exc:
        raise ServerGone(f"connect: {exc}") from exc
    with sock:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        try:
            sock.sendall(request.encode())
            answer = sock.recv(65536)
        except OSError as exc:
            raise ServerGone(f"handshake: {exc}") from exc
        if not answer.startswith(b"HTTP/1.1 101"):
            raise ServerGone(f"handshake answered {answer[:60]!r}")
        mask = os.urandom(4)
        code = struct.pack("!H", 1000)
        close_frame = bytes([0x88, 0x80 | len(code)]) + mask
        close_frame += bytes(byte ^ mask[index % 4] for index, byte in enumerate(code))
        try:
            sock.sendall(close_frame)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):  # bounded by the socket timeout
                pass
        except OSError:
            pass


def race_many(url: str, path: str = "/greet") -> int:
    """Run up to RACES close races; return how many completed before the server went away."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    deadline = time.monotonic() + RUN_TIMEOUT
    for done in range(RACES):
        if time.monotonic() > deadline:
            pytest.fail(f"{RACES} close races took over {RUN_TIMEOUT} s ({done} done)")
        try:
            close_race(host, int(port), path)
        except ServerGone:
            return done
    return RACES


def survives(server: CliServer) -> None:
    completed = race_many(server.url)
    assert completed == RACES, server.output
    assert httpx.get(server.url, timeout=CONNECTION_TIMEOUT).text == "up"
    assert server.process.poll() is None
    assert "BusyResourceError" not in server.output


def test_the_fix_applies_to_the_installed_hypercorn() -> None:
    """Fails when hypercorn's code changes: then see whether it still has the race."""
    assert fix_hypercorn_trio_send_eof() is True
    assert fix_hypercorn_trio_send_eof() is True  # idempotent


def test_the_fix_leaves_code_it_was_not_written_for_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    async def changed_close(self: TCPServer) -> None:
        await self.stream.aclose()

    monkeypatch.setattr(TCPServer, "_close", changed_close)
    assert fix_hypercorn_trio_send_eof() is False
    assert TCPServer._close is changed_close


def test_app_serve_on_trio_survives_close_races() -> None:
    greeter = runpy.run_path(str(ROOT / SAMPLES / "greet.py"))["app"]

    async def main() -> str:
        with trio.fail_after(RUN_TIMEOUT + 10):
            async with running_server(greeter) as url:
                completed = await anyio.to_thread.run_sync(race_many, url)
                assert completed == RACES
                async with httpx.AsyncClient() as client:
                    return (await client.get(url)).text

    assert trio.run(main) == "up"


def test_python_m_micropie_on_trio_survives_close_races() -> None:
    with CliServer.start(MICROPIE_GREETER, backend="trio") as server:
        survives(server)
        assert server.stop() == 0, server.output


def test_python_m_micropie_workers_on_trio_survive_close_races_with_a_plain_app() -> None:
    with CliServer.start(PLAIN_GREETER, "--workers", "1", backend="trio") as server:
        survives(server)
        assert server.stop() == 0, server.output


def test_plain_hypercorn_serving_a_micropie_app_survives_close_races() -> None:
    """The App applies the fix at lifespan startup: nothing for the user to do."""
    with CliServer.start_hypercorn(MICROPIE_GREETER) as server:
        survives(server)


def test_plain_hypercorn_with_the_documented_fix_survives_close_races() -> None:
    """The doc's own client, run as the doc says, against the doc's app with its fix."""
    with CliServer.start_hypercorn(PLAIN_GREETER_FIXED) as server:
        client = subprocess.run(
            [sys.executable, str(ROOT / SAMPLES / "client.py"), server.url.rsplit(":", 1)[1]],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        assert client.stdout.strip() == "server survived 300 connections", client.stderr
        survives(server)


def test_the_fix_is_still_needed_plain_hypercorn_dies_without_it() -> None:
    """When this fails, hypercorn has fixed the race: drop ``fix_hypercorn_trio_send_eof``."""
    with CliServer.start_hypercorn(PLAIN_GREETER) as server:
        completed = race_many(server.url)
        server.wait()  # the process ends (hypercorn's supervisor exits 0 even so)
    assert completed < RACES
    assert "trio.BusyResourceError" in server.output
