"""``python -m micropie`` as a newcomer meets it: defaults, one-line errors, a readable log.

Each test runs a real CLI server in a subprocess and reads what it logged; those that concern
the event loop run on both of hypercorn's workers.
"""

from __future__ import annotations

import platform
import re
import signal
import socket
import subprocess
import sys

import httpx
import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

from micropie import __version__
from micropie.serving import fix_hypercorn_trio_send_eof, hypercorn_glue
from micropie.serving.hypercorn_glue import BindError
from tests.support.servers import ROOT, CliServer, run_cli, spawn_cli

HELLO_APP = "tests/support/apps/serving_hello.py:app"
TRAPS_APP = "tests/support/apps/newcomer_traps.py:app"
BACKENDS = ["asyncio", "trio"]
HINT = "This error comes from asyncio-only code running on trio"


def test_version_names_the_distribution_the_import_name_and_python() -> None:
    status, output = run_cli("--version")
    assert status == 0, output
    expected = (
        f"micropie-anyio {__version__} (import name micropie) on Python {platform.python_version()}"
    )
    assert output.strip() == expected


def test_the_default_backend_is_asyncio() -> None:
    with CliServer(spawn_cli(HELLO_APP, "--port", "0")) as server:
        server.wait_until_serving()
        response = httpx.get(server.url)
        assert server.stop() == 0, server.output
    assert response.text == "hello on asyncio"


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_failing_handler_logs_one_traceback(backend: str) -> None:
    """Not the error inside an ExceptionGroup and then again "during handling" of it."""
    with CliServer.start(TRAPS_APP, backend=backend) as server:
        assert httpx.get(f"{server.url}/boom").status_code == 500
        server.wait_for_output("boom from the handler")
        with (
            httpx.stream("GET", f"{server.url}/stream") as response,
            pytest.raises(httpx.RemoteProtocolError),
        ):
            response.read()  # the stream failed after its first chunk: cut off
        server.wait_for_output("boom from the stream")
        with (
            connect(server.url.replace("http", "ws") + "/boom") as ws,
            pytest.raises(ConnectionClosedError) as closed,
        ):
            ws.recv(timeout=5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1011
        server.wait_for_output("boom from the WebSocket handler")
        assert server.stop() == 0, server.output
    log = server.output
    for failure in ("the handler", "the stream", "the WebSocket handler"):
        assert log.count(f"ValueError: boom from {failure}") == 1, log
    assert log.count("Traceback") == 3, log
    assert "ExceptionGroup" not in log
    assert "During handling" not in log


def test_asyncio_only_code_on_trio_logs_what_to_do() -> None:
    with CliServer.start(TRAPS_APP, backend="trio") as server:
        assert httpx.get(f"{server.url}/nap").status_code == 500
        with (
            connect(server.url.replace("http", "ws") + "/nap") as ws,
            pytest.raises(ConnectionClosedError),
        ):
            ws.recv(timeout=5)
        server.wait_for_output("Unhandled exception in WebSocket handler for /nap")
        assert server.stop() == 0, server.output
    lines = server.output.splitlines()
    hints = [i for i, line in enumerate(lines) if line.startswith(HINT)]
    assert len(hints) == 2, server.output  # the HTTP handler and the WebSocket handler
    for i in hints:
        assert "Unhandled exception in" in lines[i - 1]
        assert "--backend asyncio" in lines[i]
    assert server.output.count("RuntimeError: no running event loop") == 2


def test_asyncio_only_code_on_asyncio_just_works() -> None:
    with CliServer.start(TRAPS_APP, backend="asyncio") as server:
        assert httpx.get(f"{server.url}/nap").text == "slept"
        assert server.stop() == 0, server.output
    assert HINT not in server.output


@pytest.mark.parametrize("backend", BACKENDS)
def test_access_log_in_hypercorns_format(backend: str) -> None:
    with CliServer.start(TRAPS_APP, "--access-log", backend=backend) as server:
        httpx.get(f"{server.url}/?x=1", headers={"user-agent": "newcomer/1.0"})
        httpx.get(f"{server.url}/boom")
        line = server.wait_for_output(r'"GET /boom 1.1" 500')[0]
        assert server.stop() == 0, server.output
    # hypercorn's access_log_format: '%(h)s %(l)s %(l)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
    assert re.search(
        r'127\.0\.0\.1:\d+ - - \[[^]]+\] "GET / 1\.1" 200 2 "-" "newcomer/1\.0"',
        server.output,
    ), server.output
    assert line is not None


def test_no_access_log_without_the_flag() -> None:
    with CliServer.start(TRAPS_APP, "--log-level", "debug", backend="asyncio") as server:
        httpx.get(f"{server.url}/?x=1")
        assert server.stop() == 0, server.output
    assert '"GET / 1.1" 200' not in server.output


@pytest.fixture
def taken_port() -> object:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_port_in_use_is_one_line_and_status_1(taken_port: int, workers: str) -> None:
    status, output = run_cli(HELLO_APP, "--port", str(taken_port), "--workers", workers)
    assert status == 1, output
    assert "Traceback" not in output
    (line,) = output.strip().splitlines()
    assert line.endswith(f"[ERROR] Cannot listen on 127.0.0.1:{taken_port}: Address already in use")


def test_app_run_on_a_port_in_use_is_one_line_and_status_1(taken_port: int) -> None:
    script = f"from tests.support.apps.newcomer_traps import app\napp.run(port={taken_port})\n"
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 1, completed.stderr
    assert completed.stdout == ""
    assert completed.stderr == f"Cannot listen on 127.0.0.1:{taken_port}: Address already in use\n"


def test_bind_error_is_an_oserror_with_its_errno() -> None:
    error = BindError(98, "Cannot listen on 127.0.0.1:1: Address already in use")
    assert isinstance(error, OSError)
    assert error.errno == 98
    assert str(error) == "Cannot listen on 127.0.0.1:1: Address already in use"


def test_the_trio_send_eof_fix_is_public_at_micropie_serving() -> None:
    assert fix_hypercorn_trio_send_eof is hypercorn_glue.fix_hypercorn_trio_send_eof


def test_sigint_is_still_a_clean_stop_on_the_default_backend() -> None:
    with CliServer(spawn_cli(HELLO_APP, "--port", "0")) as server:
        server.wait_until_serving()
        assert server.stop(signal.SIGINT) == 0, server.output
