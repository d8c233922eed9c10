"""A real ``redis-server`` on a free loopback port, for tests (started and killed by them).

``redis-server`` must be installed (Debian: ``apt-get install -y redis-server``); a missing one
fails the test with that instruction instead of skipping it. The server keeps nothing on disk
(no RDB, no AOF) and listens on 127.0.0.1 only::

    with RedisServer.start() as redis:
        ... redis.url ...        # "redis://127.0.0.1:PORT/0"
        redis.kill()             # SIGKILL, as a crash would
        redis.restart()          # the same port again

The ``redis_server`` fixture gives one server per test module; tests that kill it use their
own ``RedisServer.start()``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from types import TracebackType

import pytest

#: Bound for a server to say "Ready to accept connections" and for it to exit.
START_TIMEOUT = 10.0
INSTALL_HINT = "redis-server is not installed: apt-get update && apt-get install -y redis-server"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on ``port``; ``restart`` brings it back on the same port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen[str] | None = None
        self._lines: list[str] = []
        self._ready = threading.Event()

    @classmethod
    def start(cls, port: int | None = None) -> RedisServer:
        server = cls(port or _free_port())
        server.restart()
        return server

    def restart(self) -> None:
        """Start the server (again) and wait until it accepts connections."""
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail(INSTALL_HINT)
        self.kill()
        self._ready.clear()
        self.process = subprocess.Popen(
            [
                executable,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--daemonize", "no"),
                *("--loglevel", "notice"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read_output, args=(self.process,), daemon=True).start()
        if not self._ready.wait(START_TIMEOUT):
            self.kill()
            pytest.fail(f"redis-server did not start on {self.port}:\n{''.join(self._lines)}")

    def _read_output(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._lines.append(line)
            if "Ready to accept connections" in line:
                self._ready.set()
        process.stdout.close()

    def kill(self) -> None:
        """SIGKILL the server (a crash: clients see their connections drop) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(START_TIMEOUT)
        self.process = None

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.kill()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server shared by the tests of one module."""
    with RedisServer.start() as server:
        yield server
