"""MicroPie 0.32 compatibility: request bodies, limits, timeouts and JSON
(docs/limits.md).

Ported from 0.32's ``TestRequestBodyTimeouts`` (rewritten with anyio: no asyncio),
the non-multipart half of ``TestRequestBodyLimits``, and the JSON request tests of
``TestResponseHandling``. Multipart is covered elsewhere.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from micropie import App, InMemorySessionBackend
from tests.support.asgi import Message, attach, body, http_scope, plain_response, run_app

pytestmark = pytest.mark.anyio

FORM = (b"content-type", b"application/x-www-form-urlencoded")
JSON_REQUEST = (b"content-type", b"application/json")


def submit_app(**settings: Any) -> App:
    app = App(session_backend=InMemorySessionBackend(), **settings)

    @attach(app)
    async def submit(self: App, value: str) -> str:
        return value

    return app


# -- timeouts (0.32 category C, rewritten with anyio) ------------------------------------


async def test_timeout_resets_for_each_body_chunk() -> None:
    """A slow body succeeds while each chunk arrives within ``body_timeout``."""
    app = submit_app(body_timeout=0.2)
    chunks = [body(b"val", True), body(b"ue=", True), body(b"slow")]

    async def receive() -> Message:
        await anyio.sleep(0.08)  # each chunk in time; all three together take longer than 0.2 s
        return chunks.pop(0)

    conn = await run_app(app, http_scope("/submit", "POST", [FORM]), receive=receive)
    assert conn.sent == plain_response(200, b"slow")


async def test_stalled_body_returns_408() -> None:
    app = App(body_timeout=0.01)
    stalled_receive_cancelled = anyio.Event()

    async def receive() -> Message:
        try:
            await anyio.sleep_forever()
        finally:
            stalled_receive_cancelled.set()
        raise AssertionError("unreachable")

    conn = await run_app(app, http_scope("/index", "POST", [FORM]), receive=receive)
    assert conn.sent == plain_response(408, b"408 Request Timeout: Failed to receive body")
    assert stalled_receive_cancelled.is_set()


async def test_body_timeout_can_be_disabled() -> None:
    app = submit_app(body_timeout=None)

    async def receive() -> Message:
        await anyio.sleep(0.02)
        return body(b"value=received")

    conn = await run_app(app, http_scope("/submit", "POST", [FORM]), receive=receive)
    assert conn.sent == plain_response(200, b"received")


# -- limits -------------------------------------------------------------------------------


async def test_content_length_rejects_oversized_body_before_receive() -> None:
    app = App(max_body_size=4)
    conn = await run_app(
        app,
        http_scope("/index", "POST", [JSON_REQUEST, (b"content-length", b"5")]),
        [body(b"12345")],
    )
    assert conn.receive_calls == 0
    assert conn.sent == plain_response(413, b"413 Payload Too Large")


async def test_invalid_content_length_returns_400() -> None:
    app = App(max_body_size=4)
    conn = await run_app(
        app, http_scope("/index", "POST", [(b"content-length", b"not-a-number")]), [body(b"")]
    )
    assert conn.sent == plain_response(400, b"400 Bad Request: Invalid Content-Length")


async def test_streamed_body_is_counted_without_content_length() -> None:
    app = App(max_body_size=8)
    conn = await run_app(
        app,
        http_scope("/index", "POST", [FORM]),
        [body(b"value=", True), body(b"toolong")],
    )
    assert conn.sent == plain_response(413, b"413 Payload Too Large")


async def test_body_at_exact_limit_is_allowed() -> None:
    data = b"value=ok"
    app = submit_app(max_body_size=len(data))
    conn = await run_app(app, http_scope("/submit", "POST", [FORM]), [body(data)])
    assert conn.sent == plain_response(200, b"ok")


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_body_is_read_for_post_put_patch(method: str) -> None:
    app = submit_app()
    conn = await run_app(
        app, http_scope("/submit", method, [FORM]), [body(b"val", True), body(b"ue=x")]
    )
    assert conn.body == b"x"


async def test_form_body_without_content_type_is_urlencoded() -> None:
    app = submit_app()
    conn = await run_app(app, http_scope("/submit", "POST"), [body(b"value=plain")])
    assert conn.body == b"plain"


async def test_get_body_is_not_read() -> None:
    app = App()

    @attach(app)
    async def index(self: App) -> str:
        return repr(self.request.body_params)

    conn = await run_app(app, http_scope("/index", "GET", [FORM]), [body(b"value=ignored")])
    assert conn.body == b"{}"


# -- JSON -----------------------------------------------------------------------------------


async def test_json_handling() -> None:
    app = App()

    @attach(app)
    async def json_handler(self: App) -> Any:
        return self.request.json()

    conn = await run_app(
        app,
        http_scope("/json_handler", "POST", [JSON_REQUEST]),
        [body(b'{"key": ', True), body(b'"value"}')],
    )
    expected = plain_response(200, conn.body, [(b"Content-Type", b"application/json")])
    assert conn.sent == expected
    assert json.loads(conn.body) == {"key": "value"}


async def test_json_arguments_keep_native_types_and_form_namespace() -> None:
    app = App()
    captured: dict[str, Any] = {}

    @attach(app)
    async def json_native(
        self: App, profile: Any, tags: Any, enabled: Any, count: Any, nullable: Any
    ) -> str:
        captured.update(
            profile=profile,
            tags=tags,
            enabled=enabled,
            count=count,
            nullable=nullable,
            body_params=self.request.body_params,
            form_profile=self.request.form("profile", "not-form-data"),
        )
        return "OK"

    payload = {
        "profile": {"id": 7},
        "tags": ["one", "two"],
        "enabled": True,
        "count": 3,
        "nullable": None,
    }
    conn = await run_app(
        app,
        http_scope("/json_native", "POST", [JSON_REQUEST]),
        [body(json.dumps(payload).encode())],
    )
    assert conn.sent == plain_response(200, b"OK")
    assert captured["profile"] == {"id": 7}
    assert captured["tags"] == ["one", "two"]
    assert captured["enabled"] is True
    assert captured["count"] == 3
    assert captured["nullable"] is None
    assert captured["body_params"] == {}
    assert captured["form_profile"] == "not-form-data"


@pytest.mark.parametrize("payload", [b"{invalid}", b""])
async def test_invalid_json(payload: bytes) -> None:
    app = App()
    conn = await run_app(app, http_scope("/index", "POST", [JSON_REQUEST]), [body(payload)])
    assert conn.sent == plain_response(400, b"400 Bad Request: Bad JSON")


async def test_json_null_body_is_none() -> None:
    app = App()

    @attach(app)
    async def echo(self: App) -> str:
        return repr(self.request.json()) + "|" + repr(self.request.json("key", "dflt"))

    conn = await run_app(app, http_scope("/echo", "POST", [JSON_REQUEST]), [body(b"null")])
    assert conn.body == b"None|'dflt'"
