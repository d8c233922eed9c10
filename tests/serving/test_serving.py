"""Serving on hypercorn: ``micropie.serving.serve`` in-process and ``python -m micropie``.

In-process tests run on both backends (asyncio -> hypercorn's asyncio worker, trio -> its trio
worker). CLI tests start a real subprocess and talk to it over 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import sniffio
import trio
from hypercorn.utils import LifespanFailureError

from micropie import App
from micropie.__main__ import main as cli_main
from micropie.serving import serve
from tests.support.servers import ROOT, CliServer, free_port, run_cli, running_server

HELLO_APP = "tests/support/apps/serving_hello.py:app"
FAILING_APP = "tests/support/apps/serving_failing_startup.py:app"
MICROPIE_APP = "tests/support/apps/serving_micropie.py:app"
SHUTDOWN_MARKER = "serving_hello: lifespan shutdown complete"

#: Bound for a graceful stop with no open requests (hypercorn closes idle connections at once).
QUICK_STOP_SECONDS = 2.0

BACKENDS = ["trio", "asyncio"]


class RecordingApp:
    """A raw ASGI app: answers with the serving event loop, records its lifespan messages."""

    def __init__(self, on_startup: Callable[[], object] | None = None) -> None:
        self.lifespan: list[str] = []
        self.on_startup = on_startup

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.lifespan.append(message["type"])
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                    if self.on_startup is not None:
                        self.on_startup()
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await receive()
        body = f"hello on {sniffio.current_async_library()}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


async def failing_startup_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "database unreachable"})


def refuses_connections(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return False
    except OSError:
        return True


# --- serve() inside the current backend --------------------------------------------------------


@pytest.mark.anyio
async def test_serve_on_port_zero_answers_on_the_current_backend(anyio_backend: str) -> None:
    async with running_server(RecordingApp()) as url, httpx.AsyncClient(base_url=url) as client:
        assert not url.endswith(":0")
        response = await client.get("/")
    assert response.status_code == 200
    assert response.text == f"hello on {anyio_backend}"


@pytest.mark.anyio
async def test_cancelling_the_scope_shuts_down_gracefully() -> None:
    app = RecordingApp()
    async with running_server(app) as url:
        assert app.lifespan == ["lifespan.startup"]  # started() came after startup
    assert app.lifespan == ["lifespan.startup", "lifespan.shutdown"]
    assert refuses_connections(url)


@pytest.mark.anyio
async def test_cancelling_cancels_a_request_still_running_after_graceful_timeout() -> None:
    handler_running = anyio.Event()
    handler_cancelled = anyio.Event()

    async def endless_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        handler_running.set()
        try:
            await anyio.sleep_forever()
        finally:
            handler_cancelled.set()

    with anyio.fail_after(5):
        async with running_server(endless_app, graceful_timeout=0.2) as url:
            host, port = url.removeprefix("http://").rsplit(":", 1)
            client = await anyio.connect_tcp(host, int(port))
            await client.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            await handler_running.wait()
            stopping_at = anyio.current_time()
        stop_seconds = anyio.current_time() - stopping_at
        await client.aclose()
    assert handler_cancelled.is_set()
    assert 0.15 < stop_seconds < QUICK_STOP_SECONDS  # it waited for the grace period, no more


@pytest.mark.anyio
async def test_app_that_ignores_lifespan_is_served() -> None:
    # Returning at once from the lifespan call crashes hypercorn's trio worker unless serve()
    # turns it into "lifespan not supported".
    async def http_only_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with running_server(http_only_app) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/")).status_code == 204
    assert refuses_connections(url)


@pytest.mark.anyio
async def test_shutdown_trigger_stops_serve_which_returns() -> None:
    app = RecordingApp()
    stop = anyio.Event()
    with anyio.fail_after(QUICK_STOP_SECONDS * 2):
        async with anyio.create_task_group() as task_group:
            await task_group.start(partial(serve, app, port=0, shutdown_trigger=stop.wait))
            stop.set()
        # Leaving the task group means serve() returned (without being cancelled).
    assert app.lifespan == ["lifespan.startup", "lifespan.shutdown"]


class RecordingTaskStatus:
    def __init__(self) -> None:
        self.reported: list[Any] = []

    def started(self, value: Any = None) -> None:
        self.reported.append(value)


@pytest.mark.anyio
async def test_failed_startup_raises_the_error_itself_and_never_reports_started() -> None:
    task_status = RecordingTaskStatus()
    with anyio.fail_after(5), pytest.raises(LifespanFailureError, match="database unreachable"):
        await serve(failing_startup_app, port=0, task_status=task_status)  # type: ignore[arg-type]
    assert task_status.reported == []


@pytest.mark.anyio
async def test_unknown_hypercorn_option_is_rejected() -> None:
    with pytest.raises(TypeError, match="keep_alive_timout"):
        await serve(RecordingApp(), port=0, keep_alive_timout=1)
    with pytest.raises(TypeError, match="host= and port="):
        await serve(RecordingApp(), bind=["127.0.0.1:0"])


@pytest.mark.anyio
async def test_client_dropping_mid_response_gives_the_app_http_disconnect() -> None:
    """The harness for disconnect tests: a raw TCP client leaves while the app streams."""
    streaming = anyio.Event()
    after_first_chunk: list[dict[str, Any]] = []
    app_done = anyio.Event()

    async def slow_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # no lifespan support: hypercorn carries on without it
        try:
            await receive()  # the (empty) request body
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first chunk", "more_body": True})
            streaming.set()
            after_first_chunk.append(await receive())
        finally:
            app_done.set()

    async with running_server(slow_app) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        with anyio.fail_after(5):
            client = await anyio.connect_tcp(host, int(port))
            await client.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            received = b""
            while b"first chunk" not in received:
                received += await client.receive()
            await streaming.wait()
            await client.aclose()
            await app_done.wait()
    assert received.startswith(b"HTTP/1.1 200")
    assert [message["type"] for message in after_first_chunk] == ["http.disconnect"]


@pytest.mark.anyio
async def test_a_micropie_app_is_served_with_its_lifespan(anyio_backend: str) -> None:
    class ServedApp(App):
        async def index(self) -> str:
            return f"micropie on {sniffio.current_async_library()}"

    app = ServedApp()
    events: list[str] = []

    async def note_startup() -> None:
        events.append("startup")

    async def note_shutdown() -> None:
        events.append("shutdown")

    app.startup_handlers.append(note_startup)
    app.shutdown_handlers.append(note_shutdown)
    async with running_server(app) as url, httpx.AsyncClient(base_url=url) as client:
        assert events == ["startup"]
        response = await client.get("/")
    assert response.text == f"micropie on {anyio_backend}"
    assert events == ["startup", "shutdown"]


# --- serve() inside plain trio and asyncio programs ----------------------------------------------


def test_serve_inside_trio_run() -> None:
    app = RecordingApp()

    async def main() -> tuple[str, float]:
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(partial(serve, app, port=0))
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://{host}:{port}/")
            cancelled_at = trio.current_time()
            nursery.cancel_scope.cancel()
        return response.text, trio.current_time() - cancelled_at

    text, stop_seconds = trio.run(main)
    assert text == "hello on trio"
    assert app.lifespan == ["lifespan.startup", "lifespan.shutdown"]
    assert stop_seconds < QUICK_STOP_SECONDS


def test_serve_inside_asyncio_run_with_a_task_group() -> None:
    app = RecordingApp()

    async def main() -> tuple[str, float]:
        async with anyio.create_task_group() as task_group:
            host, port = await task_group.start(partial(serve, app, port=0))
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://{host}:{port}/")
            cancelled_at = time.monotonic()
            task_group.cancel_scope.cancel()
        return response.text, time.monotonic() - cancelled_at

    text, stop_seconds = asyncio.run(main())
    assert text == "hello on asyncio"
    assert app.lifespan == ["lifespan.startup", "lifespan.shutdown"]
    assert stop_seconds < QUICK_STOP_SECONDS


def test_serve_as_a_plain_asyncio_task_stops_on_task_cancel() -> None:
    port = free_port()
    lifespan: list[str] = []

    async def main() -> str:
        started = asyncio.Event()
        app = RecordingApp(on_startup=started.set)
        app.lifespan = lifespan
        server = asyncio.create_task(serve(app, port=port))
        await asyncio.wait_for(started.wait(), 5)
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/")
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(server, QUICK_STOP_SECONDS)
        return response.text

    assert asyncio.run(main()) == "hello on asyncio"
    assert lifespan == ["lifespan.startup", "lifespan.shutdown"]


# --- the CLI ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_cli_serves_on_port_zero_and_stops_cleanly_on_signal(backend: str, signum: int) -> None:
    with CliServer.start(HELLO_APP, backend=backend) as server:
        response = httpx.get(server.url)
        started_stopping = time.monotonic()
        status = server.stop(signum)
        stop_seconds = time.monotonic() - started_stopping
    assert response.text == f"hello on {backend}"
    assert status == 0, server.output
    assert SHUTDOWN_MARKER in server.output
    assert stop_seconds < QUICK_STOP_SECONDS + 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_failed_startup_exits_nonzero_with_the_message(backend: str) -> None:
    status, output = run_cli(FAILING_APP, "--backend", backend, "--port", "0")
    assert status == 1, output
    assert "database unreachable" in output


@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_worker_processes_serve_and_stop_on_sigterm(backend: str) -> None:
    with CliServer.start(HELLO_APP, "--workers", "2", backend=backend) as server:
        response = httpx.get(server.url)
        status = server.stop(signal.SIGTERM)
    assert response.text == f"hello on {backend}"
    assert status == 0, server.output
    assert server.output.count(SHUTDOWN_MARKER) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_worker_failing_startup_exits_nonzero(backend: str) -> None:
    # hypercorn's own supervisor exits 0 here; ours must not.
    status, output = run_cli(FAILING_APP, "--backend", backend, "--port", "0", "--workers", "1")
    assert status == 1, output
    assert "database unreachable" in output
    assert "A worker exited with status 1" in output


def test_cli_reload_restarts_the_workers_when_the_app_changes(tmp_path: Path) -> None:
    app_file = tmp_path / "serving_reloadable.py"
    source = (ROOT / "tests" / "support" / "apps" / "serving_hello.py").read_text()
    app_file.write_text(source)
    with CliServer.start(f"{app_file}:app", "--reload") as server:
        assert httpx.get(server.url).text == "hello on trio"
        app_file.write_text(source.replace('f"hello on', 'f"reloaded on'))
        changed_at = time.time() + 1  # an mtime that is surely newer than the watched one
        os.utime(app_file, (changed_at, changed_at))
        server.wait_until_serving(count=2)  # the second generation of workers is up
        assert httpx.get(server.url).text == "reloaded on trio"
        assert server.stop() == 0, server.output
    assert server.output.count("Restarting workers") == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_serves_a_micropie_app(backend: str) -> None:
    with CliServer.start(MICROPIE_APP, backend=backend) as server:
        index = httpx.get(server.url)
        ready = httpx.get(f"{server.url}/ready")
        status = server.stop(signal.SIGTERM)
    assert index.text == f"micropie on {backend}"
    assert ready.text == "started"
    assert status == 0, server.output


def test_cli_explicit_port_is_used() -> None:
    port = free_port()
    with CliServer.start(HELLO_APP, port=port) as server:
        assert server.url == f"http://127.0.0.1:{port}"
        assert httpx.get(server.url).status_code == 200
        assert server.stop() == 0


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("tests/support/apps/serving_missing.py:app", "no module named 'serving_missing'"),
        ("tests/support/apps/serving_hello.py:nothing", "no attribute 'nothing'"),
    ],
)
def test_cli_unloadable_app_exits_2(target: str, message: str) -> None:
    status, output = run_cli(target, "--port", "0")
    assert status == 2, output
    assert message in output


def test_cli_help_describes_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_main(["--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    for option in ["APP", "--host", "--port", "--backend", "--workers", "--reload", "--log-level"]:
        assert option in help_text
    assert "python -m micropie hello:app" in help_text
