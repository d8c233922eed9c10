"""``python -m micropie`` stops on time and cleanly, however it is asked to.

* A request that never ends does not hold the server up: SIGTERM, and the process is gone
  within ``graceful_timeout`` (hypercorn's default, 3 s) + 1 s, the request cancelled. On the
  asyncio worker this needs micropie's own deadline from Python 3.12.1 on (hypercorn issue 308).
* ``docker stop``, systemd and ``timeout`` signal the whole process group: with ``--workers`` or
  ``--reload`` that reaches the workers too, and must be a normal stop (exit 0, no ERROR), the
  same as a signal to the main process.

Every test runs a real subprocess in its own session (process group) on both hypercorn workers.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import httpx
import pytest

from tests.support.servers import CliServer

ENDLESS_APP = "tests/support/apps/endless_request.py:app"
HELLO_APP = "tests/support/apps/serving_hello.py:app"
RUNNING = "endless_request: running"
CANCELLED = "endless_request: cancelled"
SHUTDOWN_MARKER = "serving_hello: lifespan shutdown complete"

#: hypercorn's default graceful_timeout, which ``python -m micropie`` keeps.
GRACEFUL_TIMEOUT = 3.0

BACKENDS = ["trio", "asyncio"]
SERVING_MODES = {"one process": (), "--workers 2": ("--workers", "2"), "--reload": ("--reload",)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["one process", "--workers 2"])
def test_sigterm_stops_within_graceful_timeout_with_a_request_still_running(
    backend: str, mode: str
) -> None:
    with CliServer.start(ENDLESS_APP, *SERVING_MODES[mode], backend=backend) as server:
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            server.wait_for_output(RUNNING)
            started = time.monotonic()
            status = server.stop(signal.SIGTERM, timeout=GRACEFUL_TIMEOUT + 5)
            elapsed = time.monotonic() - started
    assert status == 0, server.output
    assert CANCELLED in server.output
    assert elapsed < GRACEFUL_TIMEOUT + 1, server.output


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("mode", "signum"),
    [
        ("one process", signal.SIGTERM),
        ("--workers 2", signal.SIGTERM),
        ("--workers 2", signal.SIGINT),
        ("--reload", signal.SIGTERM),
    ],
    ids=["one process-SIGTERM", "workers-SIGTERM", "workers-SIGINT", "reload-SIGTERM"],
)
def test_a_signal_to_the_process_group_is_a_normal_stop(
    backend: str, mode: str, signum: int
) -> None:
    with CliServer.start(HELLO_APP, *SERVING_MODES[mode], backend=backend) as server:
        assert httpx.get(server.url, timeout=5).text == f"hello on {backend}"
        os.killpg(server.process.pid, signum)  # the server leads its own process group
        status = server.wait()
    assert status == 0, server.output
    assert "ERROR" not in server.output
    workers = 2 if mode == "--workers 2" else 1
    assert server.output.count(SHUTDOWN_MARKER) == workers, server.output
