"""ASGI servers other than hypercorn, run as subprocesses: uvicorn and granian.

``start_server("uvicorn", "tests.support.apps.any_server:app")`` starts the server on 127.0.0.1
from the project root, waits (bounded) until it accepts connections and returns a ``CliServer``
(see tests/support/servers.py) with its ``url`` set: ``stop(signal.SIGTERM)``,
``wait_for_output(...)`` and ``output`` work as for the micropie CLI, and leaving its ``with``
block kills what is left.

uvicorn binds port 0 and logs the port it got. granian logs the port it was given, so it gets
one that was free a moment ago (``free_port``); a clash shows up as a start-up failure. Its
worker may start listening just after it logs "Started worker-1", so the helper connects until
the port accepts (bounded).
Both run the app on asyncio: neither can run trio.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from tests.support.servers import ROOT, START_TIMEOUT, CliServer, free_port

#: The servers these helpers know; each test module parametrizes over them.
SERVERS = ("uvicorn", "granian")

#: The line each server logs once it listens; group 1 is the port.
_LISTENING = {
    "uvicorn": r"Uvicorn running on http://127\.0\.0\.1:(\d+)",
    "granian": r"Started worker-1",
}


def server_command(server: str, target: str, port: int, *extra_args: str) -> list[str]:
    """The command line that serves ``target`` with ``server`` on 127.0.0.1:``port``."""
    if server == "uvicorn":
        options = ["--host", "127.0.0.1", "--port", str(port), "--ws", "websockets-sansio"]
        return [sys.executable, "-m", "uvicorn", target, *options, *extra_args]
    if server == "granian":
        options = ["--interface", "asgi", "--host", "127.0.0.1", "--port", str(port)]
        return [sys.executable, "-m", "granian", *options, "--workers", "1", *extra_args, target]
    raise ValueError(f"unknown server {server!r}")


def start_server(server: str, target: str, *extra_args: str) -> CliServer:
    """Start ``server`` serving ``target``; return once a TCP connection is accepted."""
    port = 0 if server == "uvicorn" else free_port()
    process = subprocess.Popen(
        server_command(server, target, port, *extra_args),
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # CliServer.kill() ends the whole group: granian's worker too
    )
    running = CliServer(process)
    try:
        match = running.wait_for_output(_LISTENING[server])[-1]
        if server == "uvicorn":
            port = int(match.group(1))
        wait_until_accepting(running, port)
    except BaseException:
        running.kill()  # nobody holds it yet: never leave a server behind
        raise
    running.url = f"http://127.0.0.1:{port}"
    return running


def wait_until_accepting(running: CliServer, port: int) -> None:
    """Connect until the port accepts (granian's worker may listen after its log line).

    There is no event to wait for across processes, so this polls, in bounded steps.
    """
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=START_TIMEOUT):
                return
        except ConnectionRefusedError:
            if time.monotonic() > deadline or running.process.poll() is not None:
                running.kill()
                pytest.fail(f"port {port} never accepted; output:\n{running.output}")
            time.sleep(0.05)
