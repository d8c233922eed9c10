"""MicroPie 0.32 compatibility: response normalisation and sending
(docs/guides/requests-responses.md, "What a handler returns").

Ported from 0.32's ``TestResponseHandling`` (the ``patch("micropie.json")`` tests are
re-expressed through the public API; ``test_stream_completion_cancels_pending_receive`` is
rewritten with anyio).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from micropie import App, HttpMiddleware, InMemorySessionBackend
from tests.support.asgi import (
    HTML,
    JSON,
    Connection,
    attach,
    body,
    http_scope,
    plain_response,
    run_app,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def app() -> App:
    return App(session_backend=InMemorySessionBackend())


def stream_messages(status: int, headers: list[Any], chunks: list[bytes]) -> list[dict[str, Any]]:
    """The exact messages of a streamed response: no content-length, a final empty chunk."""
    return [
        {"type": "http.response.start", "status": status, "headers": headers},
        *({"type": "http.response.body", "body": c, "more_body": True} for c in chunks),
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ("text é", plain_response(200, "text é".encode())),
        (b"\x00raw", plain_response(200, b"\x00raw")),
        ((201, "made"), plain_response(201, b"made")),
        ((202, b"bytes", [("X-A", "1")]), plain_response(202, b"bytes", [(b"X-A", b"1"), HTML])),
        (
            (200, "<p/>", [("X-A", "1"), ("content-type", "text/plain"), ("X-B", "2")]),
            plain_response(
                200, b"<p/>", [(b"X-A", b"1"), (b"content-type", b"text/plain"), (b"X-B", b"2")]
            ),
        ),
        (42, plain_response(200, b"42")),
    ],
    ids=["str", "bytes", "status-body", "headers", "own-content-type", "other"],
)
async def test_plain_results(app: App, result: Any, expected: list[dict[str, Any]]) -> None:
    """Header names keep the user's casing; the default content type is appended last."""

    @attach(app)
    async def index(self: App) -> Any:
        return result

    conn = await run_app(app, http_scope("/"))
    assert conn.sent == expected


@pytest.mark.parametrize("result", [{"key": "value", "n": [1, 2]}, ["a", {"b": None}]])
async def test_dict_and_list_results_are_json(app: App, result: Any) -> None:
    @attach(app)
    async def index(self: App) -> Any:
        return result

    conn = await run_app(app, http_scope("/"))
    assert conn.sent == plain_response(200, conn.body, [JSON])
    assert json.loads(conn.body) == result


async def test_json_result_with_status_and_headers(app: App) -> None:
    @attach(app)
    async def index(self: App) -> Any:
        return 201, {"ok": True}, [("X-Id", "7")]

    conn = await run_app(app, http_scope("/"))
    assert conn.sent == plain_response(201, conn.body, [(b"X-Id", b"7"), JSON])
    assert json.loads(conn.body) == {"ok": True}


async def test_json_response_type_is_stable_for_middleware(app: App) -> None:
    """``after_request`` sees a ``str`` JSON body whichever JSON library is in use."""
    seen: list[Any] = []

    class ObserveBody(HttpMiddleware):
        async def before_request(self, request: Any) -> None:
            return None

        async def after_request(
            self, request: Any, status_code: int, response_body: Any, extra_headers: Any
        ) -> None:
            seen.append(response_body)

    app.middlewares.append(ObserveBody())

    @attach(app)
    async def index(self: App) -> Any:
        return {"ok": True}

    conn = await run_app(app, http_scope("/"), [body(b"")])
    assert [type(b) for b in seen] == [str]
    assert conn.body == seen[0].encode()
    assert json.loads(conn.body) == {"ok": True}


async def test_http_handler_exception_is_logged(app: App, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="micropie")

    @attach(app)
    async def index(self: App) -> str:
        raise RuntimeError("http boom")

    conn = await run_app(app, http_scope("/index"), [body(b"")])
    assert conn.sent == plain_response(500, b"500 Internal Server Error")
    records = [r for r in caplog.records if r.name.startswith("micropie")]
    assert any(r.exc_info and "http boom" in str(r.exc_info[1]) for r in records)
    assert b"boom" not in conn.body


async def test_sync_handler_exception_is_logged(app: App, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="micropie")

    @attach(app)
    def index(self: App) -> str:
        raise ValueError("sync boom")

    conn = await run_app(app, http_scope("/index"))
    assert conn.sent == plain_response(500, b"500 Internal Server Error")
    assert any(r.exc_info for r in caplog.records if r.name.startswith("micropie"))


async def test_header_injection(app: App, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="micropie")

    @attach(app)
    async def index(self: App) -> Any:
        return 200, "Test", [("Bad-Header", "value\r\nInject: malicious")]

    conn = await run_app(app, http_scope("/index"), [body(b"")])
    assert any("Rejected response header" in r.getMessage() for r in caplog.records)
    assert conn.sent == plain_response(200, b"Test")


async def test_non_latin1_header_is_rejected_before_response_start(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="micropie")

    @attach(app)
    async def index(self: App) -> Any:
        return 200, "OK", [("X-Snowman", "☃")]

    conn = await run_app(app, http_scope("/"), [body(b"")])
    assert any("Rejected response header" in r.getMessage() for r in caplog.records)
    assert conn.sent == plain_response(200, b"OK")


async def test_async_generator_is_streamed(app: App) -> None:
    async def chunks() -> AsyncIterator[Any]:
        yield "one "
        yield b"two"

    @attach(app)
    async def index(self: App) -> Any:
        return 200, chunks(), [("Content-Type", "text/plain")]

    conn = await run_app(app, http_scope("/"))
    assert conn.sent == stream_messages(200, [(b"Content-Type", b"text/plain")], [b"one ", b"two"])


async def test_async_generator_handler_is_streamed(app: App) -> None:
    @attach(app)
    async def index(self: App) -> AsyncIterator[str]:
        yield "a"
        yield "b"

    conn = await run_app(app, http_scope("/"))
    assert conn.sent == stream_messages(200, [HTML], [b"a", b"b"])


async def test_sync_generator_advances_off_event_loop(app: App) -> None:
    event_loop_thread = threading.get_ident()
    generator_threads: list[int] = []

    def chunks() -> Iterator[str]:
        generator_threads.append(threading.get_ident())
        yield "chunk"

    @attach(app)
    async def index(self: App) -> Any:
        return chunks()

    conn = await run_app(app, http_scope("/"), [body(b"")])
    assert generator_threads
    assert generator_threads[0] != event_loop_thread
    assert conn.sent == stream_messages(200, [HTML], [b"chunk"])


async def test_stream_completion_cancels_pending_receive(app: App) -> None:
    """Completing a streamed response must not orphan ``receive()``.

    The stream waits until the framework is listening for a disconnect, then finishes; the
    pending ``receive()`` must be cancelled before the ASGI call returns.
    """
    receive_cancelled = anyio.Event()
    conn = Connection(http_scope("/"))

    async def receive() -> dict[str, Any]:
        conn.receive_called.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            receive_cancelled.set()
            raise
        raise AssertionError("unreachable")

    async def stream() -> AsyncIterator[bytes]:
        await conn.receive_called.wait()
        yield b"done"

    @attach(app)
    async def index(self: App) -> Any:
        return stream()

    with anyio.fail_after(5):
        await app(conn.scope, receive, conn.send)
    assert receive_cancelled.is_set()
    assert conn.sent == stream_messages(200, [HTML], [b"done"])
