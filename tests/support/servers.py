"""Real servers for end-to-end tests: hypercorn in this process, or the CLI in a subprocess.

``running_server(app)`` serves an ASGI app with ``micropie.serving.serve`` on 127.0.0.1, port 0,
under the *current* anyio backend: with the ``anyio_backend`` fixture, asyncio tests get
hypercorn's asyncio worker and trio tests its trio worker. It yields the base URL and stops the
server (gracefully) when the block ends::

    @pytest.mark.anyio
    async def test_something() -> None:
        async with running_server(app) as url, httpx.AsyncClient(base_url=url) as client:
            response = await client.get("/")

``CliServer`` runs ``python -m micropie TARGET --port 0 ...`` in a subprocess, waits until it
accepts connections (it reads the port from hypercorn's "Running on http://..." log line), and
can stop it with a signal and report the exit status and everything it logged::

    with CliServer.start("tests.support.apps.serving_hello:app", backend="trio") as server:
        httpx.get(server.url)
        status = server.stop(signal.SIGTERM)

Every wait is bounded; a server that does not come up or go down in time fails the test with
its output attached.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import pytest

from micropie.core.types import ASGIApp
from micropie.serving import serve

#: The project root: ``python -m micropie`` and ``tests.support.apps...`` targets resolve from here.
ROOT = Path(__file__).absolute().parent.parent.parent

#: Bounds for a subprocess server: interpreter start + imports + lifespan, and a graceful stop.
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0

_RUNNING_ON = re.compile(r"Running on http://([^\s:]+|\[[^\]]+\]):(\d+)")


@asynccontextmanager
async def running_server(app: ASGIApp, **options: Any) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1:0 on the current backend; yield ``"http://127.0.0.1:PORT"``.

    ``options`` go to ``serve`` (hypercorn config: ``graceful_timeout=...``). Leaving the block
    cancels the server's scope, which shuts it down gracefully (lifespan shutdown included).
    """
    async with anyio.create_task_group() as task_group:
        host, port = await task_group.start(
            partial(serve, app, host="127.0.0.1", port=0, **options)
        )
        try:
            yield f"http://{host}:{port}"
        finally:
            task_group.cancel_scope.cancel()


def free_port() -> int:
    """A port that was free a moment ago (for the rare test that cannot use port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CliServer:
    """``python -m micropie ...`` in a subprocess, with its combined output collected."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.url = ""
        self._lines: list[str] = []
        self._output_ended = False
        # Notified for every line of output and at its end; guards the two attributes above.
        self._new_output = threading.Condition()
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()

    @classmethod
    def start(
        cls,
        target: str,
        *extra_args: str,
        backend: str = "trio",
        port: int = 0,
        wait: bool = True,
    ) -> CliServer:
        """Start the CLI on 127.0.0.1 and (unless ``wait=False``) wait until it accepts."""
        server = cls(spawn_cli(target, "--backend", backend, "--port", str(port), *extra_args))
        if wait:
            server.wait_until_serving()
        return server

    @classmethod
    def start_hypercorn(
        cls, target: str, *extra_args: str, worker_class: str = "trio"
    ) -> CliServer:
        """Start plain ``hypercorn TARGET`` on 127.0.0.1, port 0, and wait until it accepts."""
        server = cls(
            spawn_module(
                "hypercorn",
                target,
                "--worker-class",
                worker_class,
                "--bind",
                "127.0.0.1:0",
                *extra_args,
            )
        )
        server.wait_until_serving()
        return server

    @property
    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        with self._new_output:
            return "".join(self._lines)

    def wait_for_output(
        self, pattern: str, count: int = 1, timeout: float = START_TIMEOUT
    ) -> list[re.Match[str]]:
        """Wait until ``pattern`` (a regex) has appeared ``count`` times; return the matches.

        Fails the test, with the output attached, if that takes longer than ``timeout`` or the
        process ends first.
        """
        regex = re.compile(pattern)

        def matches() -> list[re.Match[str]]:
            return list(regex.finditer("".join(self._lines)))

        with self._new_output:
            self._new_output.wait_for(
                lambda: len(matches()) >= count or self._output_ended, timeout
            )
            found = matches()
        if len(found) < count:
            ended = self.process.poll() is not None
            self.kill()
            why = f"the server exited ({self.process.returncode})" if ended else "timeout"
            pytest.fail(f"{pattern!r} x{count} not seen ({why}); output:\n{self.output}")
        return found

    def wait_until_serving(self, count: int = 1, timeout: float = START_TIMEOUT) -> str:
        """Wait for the ``count``-th "Running on" line, check that the port accepts; return URL."""
        match = self.wait_for_output(_RUNNING_ON.pattern, count, timeout)[-1]
        host, port = match.group(1).strip("[]"), int(match.group(2))
        # The line is logged once the socket listens; one connection proves it.
        with socket.create_connection((host, port), timeout=timeout):
            pass
        self.url = f"http://{match.group(1)}:{port}"
        return self.url

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the process to exit on its own; return its exit status."""
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"server did not exit within {timeout} s; output:\n{self.output}")
        self._reader.join(timeout)
        return status

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``signum`` and wait (bounded) for the exit status."""
        self.process.send_signal(signum)
        return self.wait(timeout)

    def kill(self) -> None:
        """Last resort, for cleanup after a failure: the whole process group, workers too.

        With ``--workers N`` the supervisor's workers would outlive it and keep the output pipe
        open, so the group gets SIGTERM, then SIGKILL if it has not gone within a bound.
        """
        for signum in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, signum)  # the server leads its own session
            except ProcessLookupError:
                break  # nothing of the group is left
            try:
                self.process.wait(STOP_TIMEOUT / 2)
            except subprocess.TimeoutExpired:
                continue
            if signum == signal.SIGTERM:
                signum = signal.SIGKILL  # the leader is gone; take any stragglers with it
                try:
                    os.killpg(self.process.pid, signum)
                except ProcessLookupError:
                    pass
            break

    def __enter__(self) -> CliServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.kill()
        if self.process.stdout is not None:
            self._reader.join(STOP_TIMEOUT)
            self.process.stdout.close()

    def _read_output(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._new_output:
                self._lines.append(line)
                self._new_output.notify_all()
        with self._new_output:
            self._output_ended = True
            self._new_output.notify_all()


def spawn_cli(*args: str) -> subprocess.Popen[str]:
    """Start ``python -m micropie *args`` from the project root, output merged into stdout."""
    return spawn_module("micropie", *args)


def spawn_module(module: str, *args: str) -> subprocess.Popen[str]:
    """Start ``python -m MODULE *args`` from the project root in its own session (process
    group), output merged into stdout."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # so that kill() can end the workers of --workers N too
    )


def run_cli(*args: str, timeout: float = START_TIMEOUT + STOP_TIMEOUT) -> tuple[int, str]:
    """Run ``python -m micropie *args`` to completion; return (exit status, output)."""
    completed = subprocess.run(
        [sys.executable, "-m", "micropie", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    return completed.returncode, completed.stdout
