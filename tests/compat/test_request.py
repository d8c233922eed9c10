"""MicroPie 0.32 compatibility: public names, ``Request``, ``App`` settings, ``_redirect``.

Ported from 0.32's ``TestRequest``, ``TestRequestInputParsing``,
``TestSession.test_app_rejects_invalid_limit_configuration`` and
``TestResponseHandling.test_redirect``; the scope keys ``body_params`` and ``json_body`` are
supported hooks read by ``Request(scope)``.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any
from urllib.parse import parse_qs

import pytest

from micropie import (
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_FORM_FIELD_SIZE,
    SESSION_TIMEOUT,
    App,
    ConnectionClosed,
    HttpMiddleware,
    InMemorySessionBackend,
    MultipartFileError,
    Request,
    SessionBackend,
    WebSocket,
    WebSocketMiddleware,
    WebSocketRequest,
    current_request,
)
from tests.support.asgi import attach, body, http_scope, run_app

FORM = (b"content-type", b"application/x-www-form-urlencoded")


def test_public_names_and_constants() -> None:
    import micropie

    assert DEFAULT_MAX_BODY_SIZE == 16 * 1024 * 1024
    assert DEFAULT_MAX_FORM_FIELD_SIZE == 1024 * 1024
    assert SESSION_TIMEOUT == 8 * 3600
    assert isinstance(current_request, ContextVar)
    with pytest.raises(LookupError):
        current_request.get()
    assert issubclass(WebSocketRequest, Request)
    assert issubclass(ConnectionClosed, Exception)
    assert issubclass(MultipartFileError, Exception)
    assert issubclass(InMemorySessionBackend, SessionBackend)
    for name in ("JINJA_INSTALLED", "MULTIPART_INSTALLED"):
        assert isinstance(getattr(micropie, name), bool)
    for cls in (HttpMiddleware, WebSocketMiddleware, WebSocket, App):
        assert isinstance(cls, type)


def test_request_initialization() -> None:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/test",
        "headers": [(b"host", b"example.com"), (b"cookie", b"session_id=123")],
        "query_string": b"param1=value1",
    }
    request = Request(scope)
    request.query_params = parse_qs(scope["query_string"].decode("utf-8", "ignore"))
    assert request.method == "GET"
    assert request.headers["host"] == "example.com"
    assert request.query_params == {"param1": ["value1"]}
    assert request.session == {}
    assert request.scope is scope


def test_websocket_request_initialization() -> None:
    scope = {
        "type": "websocket",
        "path": "/ws_test",
        "headers": [(b"host", b"example.com")],
        "query_string": b"param1=value1",
    }
    request = WebSocketRequest(scope)
    request.query_params = parse_qs(scope["query_string"].decode("utf-8", "ignore"))
    assert request.scope["path"] == "/ws_test"
    assert request.query_params == {"param1": ["value1"]}


def test_websocket_request_cannot_regenerate_session() -> None:
    request = WebSocketRequest({"type": "websocket", "path": "/", "headers": []})
    with pytest.raises(RuntimeError, match="Session regeneration is only available for HTTP"):
        request.regenerate_session()


def test_request_query_and_form_helpers() -> None:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/test",
        "headers": [],
        "query_string": b"name=Alice&name=Bob",
        "body_params": {"username": ["test-user"]},
    }
    request = Request(scope)
    request.query_params = parse_qs(scope["query_string"].decode("utf-8", "ignore"))

    assert request.query("name") == "Alice"
    assert request.query("missing") is None
    assert request.query("missing", "fallback") == "fallback"

    assert request.form("username") == "test-user"
    assert request.form("missing") is None
    assert request.form("missing", "fallback") == "fallback"


def test_request_json_helper() -> None:
    request = Request(
        {
            "type": "http",
            "method": "POST",
            "path": "/json",
            "headers": [],
            "json_body": {"username": "alice", "age": 42},
        }
    )
    assert not hasattr(request, "get_json")
    assert request.json() == {"username": "alice", "age": 42}
    assert request.json("username") == "alice"
    assert request.json("missing") is None
    assert request.json("missing", "fallback") == "fallback"
    # JSON is its own namespace: form() never sees it.
    assert request.form("username") is None

    list_payload = Request(
        {"type": "http", "method": "POST", "path": "/json", "headers": [], "json_body": ["a", "b"]}
    )
    assert list_payload.json() == ["a", "b"]
    assert list_payload.json("username", "fallback") == "fallback"


def test_request_without_json_body_has_empty_json() -> None:
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": []})
    assert request.json() == {}
    assert request.body_params == {}
    assert request.files == {}


TOLERANT_CASES = [
    (b"value=", {}),
    (b"value", {}),
    (b"value=%ZZ", {"value": ["%ZZ"]}),
    (b"value=%FF", {"value": ["\ufffd"]}),
    (b"value=before\xffafter", {"value": ["beforeafter"]}),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("encoded", "expected"), TOLERANT_CASES)
async def test_query_and_form_bodies_share_legacy_tolerant_parsing(
    encoded: bytes, expected: dict[str, list[str]]
) -> None:
    """The same urlencoded bytes give the same mapping as a query string and as a form body."""
    app = App(session_backend=InMemorySessionBackend())
    seen: list[tuple[Any, Any]] = []

    @attach(app)
    async def inspect_form(self: App) -> str:
        seen.append((self.request.query_params, self.request.body_params))
        return "OK"

    await run_app(app, http_scope("/inspect_form", query_string=encoded))
    conn = await run_app(app, http_scope("/inspect_form", "POST", [FORM]), [body(encoded)])
    assert seen == [(expected, {}), ({}, expected)]
    assert conn.body == b"OK"


def test_app_rejects_invalid_limit_configuration() -> None:
    with pytest.raises(ValueError, match="body_timeout must be positive or None"):
        App(body_timeout=0)
    with pytest.raises(ValueError, match="max_body_size must be positive or None"):
        App(max_body_size=0)
    with pytest.raises(ValueError, match="max_form_field_size must be positive or None"):
        App(max_form_field_size=0)
    with pytest.raises(ValueError, match="session_timeout must be positive"):
        App(session_timeout=0)
    with pytest.raises(ValueError, match="session_id_factory must be callable"):
        App(session_id_factory=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="session_id_validator must be callable or None"):
        App(session_id_validator="not-callable")  # type: ignore[arg-type]

    unbounded = App(body_timeout=None, max_body_size=None, max_form_field_size=None)
    assert unbounded.body_timeout is None
    assert unbounded.max_body_size is None
    assert unbounded.max_form_field_size is None

    defaults = App()
    assert defaults.max_body_size == DEFAULT_MAX_BODY_SIZE
    assert defaults.max_form_field_size == DEFAULT_MAX_FORM_FIELD_SIZE
    assert defaults.body_timeout == 5.0
    assert defaults.session_timeout == SESSION_TIMEOUT
    assert defaults.session_cookie_secure is True
    assert isinstance(defaults.session_backend, InMemorySessionBackend)
    for name in ("middlewares", "ws_middlewares", "startup_handlers", "shutdown_handlers"):
        assert getattr(defaults, name) == []


def test_redirect() -> None:
    app = App()
    status_code, body_text, headers = app._redirect("/new-page", [("X-Custom", "Value")])
    assert status_code == 302
    assert body_text == ""
    assert headers == [("Location", "/new-page"), ("X-Custom", "Value")]

    _, _, unicode_headers = app._redirect("/search?q=snow man ☃")
    assert ("Location", "/search?q=snow%20man%20%E2%98%83") in unicode_headers
    # Existing escapes are never encoded twice.
    _, _, escaped = app._redirect("/a%20b?q=%E2%98%83")
    assert escaped == [("Location", "/a%20b?q=%E2%98%83")]
