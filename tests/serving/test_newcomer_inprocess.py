"""The newcomer fixes of ``python -m micropie``, in this process: app loading, a port in use,
and the log line for asyncio-only code on trio (the CLI tests run the same in subprocesses)."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sniffio
from hypercorn.config import Config

from micropie import App
from micropie.core.asyncio_hint import HINT, AsyncioOnTrioHint, is_asyncio_only_error
from micropie.serving import run
from micropie.serving.loading import AppLoadError, load_app
from micropie.serving.supervisor import supervise
from tests.support.asgi import http_scope, run_app


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_run_on_a_port_in_use_logs_one_line_and_exits_1(
    taken_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exited:
        run(App(), port=taken_port)
    assert exited.value.code == 1
    assert [(r.levelno, r.getMessage(), r.exc_info) for r in caplog.records] == [
        (logging.ERROR, f"Cannot listen on 127.0.0.1:{taken_port}: Address already in use", None)
    ]


def test_the_supervisor_on_a_port_in_use_logs_one_line_and_returns_1(
    taken_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{taken_port}"]
    config.workers = 2
    assert supervise(config) == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"Cannot listen on 127.0.0.1:{taken_port}: Address already in use"
    ]


def test_load_app_from_a_file_and_from_a_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_app puts the app's folder first
    (tmp_path / "newcomer_loadable.py").write_text(
        "async def app(scope, receive, send):\n    pass\nnested = type('N', (), {'app': app})\n"
        "number = 3\n"
    )
    by_file = load_app(f"{tmp_path / 'newcomer_loadable.py'}:nested.app")
    assert callable(by_file)
    assert load_app("tests.support.apps.serving_hello").__module__ == (
        "tests.support.apps.serving_hello"
    )
    assert load_app("tests/support/apps/serving_hello.py:app").__module__ == "serving_hello"
    with pytest.raises(AppLoadError, match="no module named 'no_such_module'"):
        load_app("no_such_module:app")
    with pytest.raises(AppLoadError, match="no attribute 'missing'"):
        load_app(f"{tmp_path / 'newcomer_loadable.py'}:missing")
    with pytest.raises(AppLoadError, match="'number' is not an ASGI app"):
        load_app(f"{tmp_path / 'newcomer_loadable.py'}:number")


@pytest.mark.parametrize(
    ("error", "asyncio_only"),
    [
        (RuntimeError("no running event loop"), True),
        (RuntimeError("There is no current event loop in thread 'x'."), True),
        (TypeError("trio.run received unrecognized yield message <Future>"), True),
        (sniffio.AsyncLibraryNotFoundError("unknown async library"), True),
        (ExceptionGroup("g", [ValueError("x"), RuntimeError("no running event loop")]), True),
        (RuntimeError("boom"), False),
        (ValueError("no running event loop"), False),
    ],
)
def test_which_errors_are_asyncio_only(error: BaseException, asyncio_only: bool) -> None:
    assert is_asyncio_only_error(error) is asyncio_only


def test_a_chained_asyncio_error_is_found() -> None:
    outer = ValueError("wrapped")
    outer.__cause__ = RuntimeError("no running event loop")
    assert is_asyncio_only_error(outer)


def test_outside_an_event_loop_no_hint_is_added() -> None:
    record = logging.LogRecord("micropie", logging.ERROR, __file__, 1, "failed %s", ("x",), None)
    record.exc_info = (RuntimeError, RuntimeError("no running event loop"), None)
    assert AsyncioOnTrioHint().filter(record)
    assert record.getMessage() == "failed x"


class Napper(App):
    async def nap(self) -> str:
        await asyncio.sleep(0)
        return "slept"


@pytest.mark.anyio
async def test_asyncio_only_code_gets_the_hint_on_trio_only(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    connection = await run_app(Napper(), http_scope("/nap"))
    if anyio_backend == "asyncio":
        assert (connection.status, connection.body) == (200, b"slept")
        assert not caplog.records
        return
    assert connection.status == 500
    (record,) = caplog.records
    assert record.getMessage() == f"Unhandled exception in HTTP handler for /nap\n{HINT}"
