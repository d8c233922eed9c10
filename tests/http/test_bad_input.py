"""Hostile and broken input: bodies, JSON, headers, paths, cookies, failing components.

Every test drives ``app(scope, receive, send)`` directly on both backends. Where we
deliberately differ from MicroPie 0.32 the test says so and names the row of docs/migration.md
("Every difference") that documents it; it is a strict xfail when the suite runs against 0.32.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import anyio
import pytest

from micropie import App, HttpMiddleware, InMemorySessionBackend
from tests.support.asgi import (
    ATTACKER_SESSION_ID,
    HTML,
    JSON,
    VALID_SESSION_ID,
    CountingSessionBackend,
    Message,
    attach,
    body,
    cookie_header,
    cookie_session_id,
    differs_from_032,
    elapsed_since,
    http_scope,
    plain_response,
    run_app,
)

pytestmark = pytest.mark.anyio

FORM = (b"content-type", b"application/x-www-form-urlencoded")
JSON_REQUEST = (b"content-type", b"application/json")
NOT_FOUND = plain_response(404, b"404 Not Found")
SERVER_ERROR = plain_response(500, b"500 Internal Server Error")
BAD_JSON = plain_response(400, b"400 Bad Request: Bad JSON")


class Recorder:
    """An app whose ``submit``/``index`` handlers record that they ran."""

    def __init__(self, **settings: Any) -> None:
        self.calls: list[Any] = []
        self.app = App(session_backend=InMemorySessionBackend(), **settings)
        calls = self.calls

        @attach(self.app)
        async def submit(self: App, value: str = "-") -> str:
            calls.append(value)
            return value

        @attach(self.app)
        async def data(self: App) -> str:
            calls.append(self.request.json())
            return "ok"


# -- Content-Length and body size ------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [b"abc", b"-1", b"+5", b"1.5", b"0x10", b"1e3", "\u0663".encode()]
)
async def test_content_length_that_is_not_digits_is_400(value: bytes) -> None:
    rec = Recorder()
    conn = await run_app(
        rec.app,
        http_scope("/submit", "POST", [FORM, (b"content-length", value)]),
        [body(b"value=x")],
    )
    assert conn.sent == plain_response(400, b"400 Bad Request: Invalid Content-Length")
    assert conn.receive_calls == 0
    assert rec.calls == []


@pytest.mark.parametrize("declared", [b"9", b"9" * 40])
async def test_content_length_over_limit_is_413_before_reading(declared: bytes) -> None:
    rec = Recorder(max_body_size=8)
    conn = await run_app(
        rec.app,
        http_scope("/submit", "POST", [FORM, (b"content-length", declared)]),
        [body(b"value=123")],
    )
    assert conn.sent == plain_response(413, b"413 Payload Too Large")
    assert conn.receive_calls == 0
    assert rec.calls == []


async def test_streamed_body_one_byte_over_the_limit_is_413() -> None:
    rec = Recorder(max_body_size=10)
    conn = await run_app(
        rec.app,
        http_scope("/submit", "POST", [FORM]),
        [body(b"value", True), body(b"=12345", True), body(b"", False)],
    )
    assert conn.sent == plain_response(413, b"413 Payload Too Large")
    assert rec.calls == []


async def test_streamed_body_exactly_at_the_limit_is_accepted() -> None:
    rec = Recorder(max_body_size=10)
    conn = await run_app(
        rec.app,
        http_scope("/submit", "POST", [FORM]),
        [body(b"value", True), body(b"=1234", True), body(b"", False)],
    )
    assert conn.sent == plain_response(200, b"1234")
    assert rec.calls == ["1234"]


async def test_lying_content_length_is_not_trusted() -> None:
    """Bytes are counted as they arrive: a small declared length does not lift the limit."""
    rec = Recorder(max_body_size=8)
    conn = await run_app(
        rec.app,
        http_scope("/submit", "POST", [FORM, (b"content-length", b"4")]),
        [body(b"value=", True), body(b"toolong")],
    )
    assert conn.sent == plain_response(413, b"413 Payload Too Large")
    assert rec.calls == []


async def test_stalled_body_is_408_at_body_timeout() -> None:
    rec = Recorder(body_timeout=0.1)
    first_chunk_taken = anyio.Event()

    async def receive() -> Message:
        if not first_chunk_taken.is_set():
            first_chunk_taken.set()
            return body(b"value=", True)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    started = anyio.current_time()
    conn = await run_app(rec.app, http_scope("/submit", "POST", [FORM]), receive=receive)
    took = elapsed_since(started)
    assert conn.sent == plain_response(408, b"408 Request Timeout: Failed to receive body")
    assert rec.calls == []
    assert 0.09 <= took < 1.5


# 0.32 runs the handler on a partial body.
@differs_from_032("Requests: A disconnect while the body arrives")
@pytest.mark.parametrize(
    ("path", "content_type", "partial"),
    [("/submit", FORM, b"value=par"), ("/data", JSON_REQUEST, b'{"a": 1}')],
)
async def test_disconnect_mid_body_never_runs_the_handler(
    path: str, content_type: tuple[bytes, bytes], partial: bytes
) -> None:
    rec = Recorder()
    conn = await run_app(
        rec.app,
        http_scope(path, "POST", [content_type]),
        [body(partial, True), {"type": "http.disconnect"}],
    )
    assert rec.calls == []
    # No response is required; if one is sent it is not a success.
    starts = [m for m in conn.sent if m["type"] == "http.response.start"]
    assert all(m["status"] >= 400 for m in starts)


# -- JSON ------------------------------------------------------------------------------------

HOSTILE_JSON = {
    "nested-100000": b"[" * 100_000 + b"]" * 100_000,
    "nested-objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "invalid-utf8": b'{"a": "\xff\xfe"}',
    "lone-surrogate-bytes": b'{"a": "\xed\xa0\x80"}',
    "5000-digit-int": b"1" * 5000,
    "5000-digit-value": b'{"n": ' + b"7" * 5000 + b"}",
    "nan": b'{"a": NaN}',
    "infinity": b"[Infinity]",
    "minus-infinity": b'{"a": -Infinity}',
    "bom": b'\xef\xbb\xbf{"a": 1}',
    "empty": b"",
    "truncated": b'{"a": [1, 2',
}


def use_codec(codec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``stdlib`` forces micropie's JSON onto the standard library (no orjson)."""
    if codec == "stdlib":
        # 0.32 has no micropie.core.json_codec (the "stdlib" cases are marked as differences).
        monkeypatch.setattr("micropie.core.json_codec.orjson", None)


CODECS = [
    pytest.param("orjson", id="orjson"),
    pytest.param("stdlib", id="stdlib", marks=differs_from_032("Requests: JSON")),
]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("payload", list(HOSTILE_JSON.values()), ids=list(HOSTILE_JSON))
async def test_hostile_json_is_400_fast(
    payload: bytes, codec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_codec(codec, monkeypatch)
    rec = Recorder()
    conn = await run_app(
        rec.app, http_scope("/data", "POST", [JSON_REQUEST]), [body(payload)], deadline=2.0
    )
    assert conn.sent == BAD_JSON
    assert rec.calls == []


@pytest.mark.parametrize("codec", CODECS)
async def test_valid_json_round_trips_with_either_codec(
    codec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_codec(codec, monkeypatch)
    app = App()

    @attach(app)
    async def echo(self: App) -> Any:
        return self.request.json()

    payload = b'{"s": "\xc3\xa9\\u2603", "l": [1, 2.5, null, true], "n": -9007199254740993}'
    conn = await run_app(app, http_scope("/echo", "POST", [JSON_REQUEST]), [body(payload)])
    assert conn.sent == plain_response(200, conn.body, [JSON])
    assert json.loads(conn.body) == {"s": "é☃", "l": [1, 2.5, None, True], "n": -9007199254740993}


# -- response headers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        ("Bad-Header", "value\r\nInject: malicious"),
        ("X-A", "value\nInject: malicious"),
        ("X-A", "value\rInject: malicious"),
        ("Bad\r\nInject", "malicious"),
        ("X-Snowman", "☃"),
        ("X-☃", "value"),
    ],
)
async def test_unsafe_response_header_is_dropped_with_a_warning(
    bad: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="micropie")
    app = App()

    @attach(app)
    async def index(self: App) -> Any:
        return 200, "ok", [("X-Before", "1"), bad, ("X-After", "2")]

    conn = await run_app(app, http_scope("/"))
    assert conn.sent == plain_response(200, b"ok", [(b"X-Before", b"1"), (b"X-After", b"2"), HTML])
    assert any(
        r.name.startswith("micropie") and "Rejected response header" in r.getMessage()
        for r in caplog.records
    )
    assert not any(b"Inject" in k or b"Inject" in v for k, v in conn.start["headers"])


# -- private names and paths -----------------------------------------------------------------


class Guarded(App):
    """An app with things that must never be reachable; every evaluation is recorded."""

    evaluated: list[str]

    def _private(self) -> str:
        self.evaluated.append("_private")
        return "leak"

    async def _x(self) -> str:
        self.evaluated.append("_x")
        return "leak"

    @property
    def secret(self) -> str:
        self.evaluated.append("secret")
        return "leak"

    async def ws_chat(self, ws: Any) -> None:
        self.evaluated.append("ws_chat")


class GuardedWithIndex(Guarded):
    async def index(self, *parts: str) -> str:
        self.evaluated.append("index")
        return "/".join(parts)


PRIVATE_PATHS = [
    http_scope("/_private"),
    http_scope("/_private", raw_path=b"/%5Fprivate"),  # what a server hands us for /%5Fprivate
    http_scope("/%5Fprivate"),  # a server that does not decode: still no such handler
    http_scope("/__class__"),
    http_scope("/__init__"),
    http_scope("/__dict__"),
    http_scope("/__getattribute__/x"),
    http_scope("/session_backend"),
    http_scope("/env"),
    http_scope("/middlewares"),
    http_scope("/request"),
    http_scope("/secret"),
    http_scope("/ws_chat"),
    http_scope("/_x"),
    http_scope("/a/../_x"),
]


@pytest.mark.parametrize("scope", PRIVATE_PATHS, ids=[s["path"] for s in PRIVATE_PATHS])
async def test_private_names_are_404_and_never_evaluated(scope: dict[str, Any]) -> None:
    app = Guarded()
    app.evaluated = []
    conn = await run_app(app, scope)
    assert conn.sent == NOT_FOUND
    assert app.evaluated == []


@pytest.mark.parametrize(
    "path",
    ["/_private", "/__class__", "/__init__", "/secret", "/ws_chat", "/_x", "/session_backend"],
)
async def test_private_names_never_fall_back_to_index(path: str) -> None:
    app = GuardedWithIndex()
    app.evaluated = []
    conn = await run_app(app, http_scope(path))
    assert conn.sent == NOT_FOUND
    assert app.evaluated == []


async def test_dot_segments_reach_index_as_plain_strings() -> None:
    app = GuardedWithIndex()
    app.evaluated = []
    conn = await run_app(app, http_scope("/a/../_x"))
    assert conn.sent == plain_response(200, b"a/../_x")
    assert app.evaluated == ["index"]


# -- session cookies -------------------------------------------------------------------------

BAD_SESSION_IDS = [
    "../../tmp/attacker-session",
    "{" + VALID_SESSION_ID + "}",
    "urn:uuid:" + VALID_SESSION_ID,
    VALID_SESSION_ID.replace("-", ""),
    "00000000-0000-1000-8000-000000000001",  # version 1
    "00000000-0000-4000-0000-000000000001",  # version nibble 4, but not the RFC 4122 variant
    "00000000-0000-4000-8000-00000000000g",
    VALID_SESSION_ID + "0",
    "x" * 10_000,
    "",
]


@pytest.mark.parametrize("session_id", BAD_SESSION_IDS, ids=range(len(BAD_SESSION_IDS)))
async def test_non_canonical_session_id_never_reaches_the_backend(session_id: str) -> None:
    backend = CountingSessionBackend()
    app = App(session_backend=backend)

    @attach(app)
    async def whoami(self: App) -> str:
        return str(self.request.session.get("user", "anonymous"))

    conn = await run_app(app, http_scope("/whoami", headers=[cookie_header(session_id)]))
    assert conn.sent == plain_response(200, b"anonymous")
    assert backend.load_calls == []
    assert backend.save_calls == []


@pytest.mark.parametrize("planted", [ATTACKER_SESSION_ID, ATTACKER_SESSION_ID.upper()])
async def test_planted_unknown_session_id_is_never_adopted(planted: str) -> None:
    backend = CountingSessionBackend()
    app = App(session_backend=backend)

    @attach(app)
    async def login(self: App) -> str:
        self.request.session["user_id"] = 42
        return "logged in"

    conn = await run_app(app, http_scope("/login", headers=[cookie_header(planted)]))
    assert conn.body == b"logged in"
    fresh = cookie_session_id(conn.set_cookie())
    assert fresh.lower() != ATTACKER_SESSION_ID
    assert backend.sessions == {fresh: {"user_id": 42}}
    assert all(
        not data for sid, data, _ in backend.save_calls if sid.lower() == ATTACKER_SESSION_ID
    )


# -- failing middleware and session backends -------------------------------------------------


class Fussy(HttpMiddleware):
    def __init__(self, where: str) -> None:
        self.where = where

    async def before_request(self, request: Any) -> None:
        if self.where == "before" and request.scope["path"] == "/boom":
            raise RuntimeError("before_request failed")

    async def after_request(
        self, request: Any, status_code: int, response_body: Any, extra_headers: Any
    ) -> None:
        if self.where == "after" and request.scope["path"] == "/boom":
            raise RuntimeError("after_request failed")


class FlakyBackend(InMemorySessionBackend):
    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where

    async def load(self, session_id: str) -> dict[str, Any]:
        if self.where == "load" and session_id == ATTACKER_SESSION_ID:
            raise ConnectionError("session store down")
        return await super().load(session_id)

    async def save(self, session_id: str, data: dict[str, Any], timeout: int) -> None:  # noqa: ASYNC109
        if self.where == "save" and data.get("explode"):
            raise ConnectionError("session store down")
        await super().save(session_id, data, timeout)


def failing_app(where: str) -> App:
    backend = FlakyBackend(where)
    app = App(session_backend=backend)
    app.middlewares.append(Fussy(where))

    @attach(app)
    async def boom(self: App) -> str:
        self.request.session["explode"] = True
        return "should not be sent"

    @attach(app)
    async def ok(self: App) -> str:
        return "ok"

    return app


# 0.32 lets the exception escape the app.
@differs_from_032(
    "Responses: Errors in middleware or in serialising a response",
    "Sessions: Session backend errors",
)
@pytest.mark.parametrize("where", ["before", "after", "load", "save"])
async def test_failing_middleware_or_backend_is_a_logged_500(
    where: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="micropie")
    app = failing_app(where)
    conn = await run_app(app, http_scope("/boom", headers=[cookie_header(ATTACKER_SESSION_ID)]))
    assert conn.sent == SERVER_ERROR
    assert any(r.name.startswith("micropie") and r.levelno >= logging.ERROR for r in caplog.records)

    after = await run_app(app, http_scope("/ok"))
    assert after.sent == plain_response(200, b"ok")


# -- handler results and shared state --------------------------------------------------------


# 0.32 sends b"None".
@differs_from_032("Responses: A handler returns `None`")
@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
async def test_handler_returning_none_sends_an_empty_body(sync: bool) -> None:
    app = App()

    def nothing_sync(self: App) -> None:
        return None

    async def nothing_async(self: App) -> None:
        return None

    attach(app, "nothing")(nothing_sync if sync else nothing_async)
    conn = await run_app(app, http_scope("/nothing"))
    assert conn.sent == plain_response(200, b"")


HEADERS = [("X-Frame-Options", "DENY")]


# 0.32 appends to the caller's list.
@differs_from_032("Responses: Header lists returned by a handler")
async def test_handler_header_list_is_never_mutated() -> None:
    app = App()

    @attach(app)
    async def page(self: App) -> Any:
        self.request.session["visits"] = self.request.session.get("visits", 0) + 1
        return 200, "page", HEADERS

    @attach(app)
    async def frozen(self: App) -> Any:
        return 200, "frozen", (("X-Frozen", "1"),)

    first = await run_app(app, http_scope("/page"))
    second = await run_app(app, http_scope("/page"))
    assert HEADERS == [("X-Frame-Options", "DENY")]
    for conn in (first, second):
        names = sorted(k.lower() for k, _ in conn.start["headers"])
        assert names == [b"content-length", b"content-type", b"set-cookie", b"x-frame-options"]
    assert first.set_cookie() != second.set_cookie()

    frozen_conn = await run_app(app, http_scope("/frozen"))
    assert frozen_conn.sent == plain_response(200, b"frozen", [(b"X-Frozen", b"1"), HTML])


# 0.32 hands out shared header lists.
@differs_from_032("Responses: Header lists returned by a handler")
async def test_outer_middleware_mutating_headers_does_not_leak_into_later_responses() -> None:
    """An outer ASGI middleware may append to ``message["headers"]`` in place.

    Each response must hand ``send`` its own list; otherwise the tag would pile up on every
    later response. The tag is removed again after each send so a failing run does not
    poison the module-level state of the framework under test for other tests.
    """
    app = App()
    lists_seen: list[list[Any]] = []

    @attach(app)
    async def index(self: App) -> str:
        return "ok"

    @attach(app)
    async def api(self: App) -> dict[str, int]:
        return {"n": 1}

    async def tagging(scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def tagging_send(message: Message) -> None:
            if message["type"] != "http.response.start":
                await send(message)
                return
            headers = message["headers"]
            assert all(headers is not seen for seen in lists_seen), "header list is shared"
            lists_seen.append(headers)
            headers.append((b"x-outer", b"1"))
            try:
                await send(message)
            finally:
                headers.remove((b"x-outer", b"1"))

        await app(scope, receive, tagging_send)

    for path in ("/", "/", "/api", "/api", "/missing", "/missing"):
        conn = await run_app(tagging, http_scope(path))
        assert conn.header_values(b"x-outer") == [b"1"]
        assert len(conn.header_values(b"content-type")) == 1


# 0.32 keeps only the last header, and only lower-case names are found.
@differs_from_032("Requests: Repeated request headers", "Requests: Header lookup")
async def test_repeated_request_headers_are_combined_and_lookup_is_case_insensitive() -> None:
    backend = CountingSessionBackend()
    await backend.save(VALID_SESSION_ID, {"user": "alice"}, 60)
    backend.load_calls.clear()
    app = App(session_backend=backend)

    @attach(app)
    async def show(self: App) -> dict[str, Any]:
        headers = self.request.headers
        return {
            "tag": headers["x-tag"],
            "host": headers.get("Host"),
            "HOST": headers["HOST"],
            "user": self.request.session.get("user"),
        }

    conn = await run_app(
        app,
        http_scope(
            "/show",
            headers=[
                (b"host", b"example.com"),
                (b"x-tag", b"a"),
                (b"cookie", f"session_id={VALID_SESSION_ID}".encode()),
                (b"X-Tag", b"b"),
                (b"cookie", b"theme=dark"),
            ],
        ),
    )
    assert json.loads(conn.body) == {
        "tag": "a, b",
        "host": "example.com",
        "HOST": "example.com",
        "user": "alice",
    }
    assert backend.load_calls == [VALID_SESSION_ID]


# 0.32 hands the handler the stored dict itself.
@differs_from_032("Sessions: A handler that fails")
async def test_failing_handler_does_not_persist_session_changes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="micropie")
    backend = InMemorySessionBackend()
    await backend.save(VALID_SESSION_ID, {"balance": 100}, 60)
    app = App(session_backend=backend)

    @attach(app)
    async def withdraw(self: App) -> str:
        self.request.session["balance"] -= 90
        raise RuntimeError("ledger unavailable")

    @attach(app)
    async def balance(self: App) -> str:
        return str(self.request.session["balance"])

    conn = await run_app(app, http_scope("/withdraw", headers=[cookie_header(VALID_SESSION_ID)]))
    assert conn.sent == SERVER_ERROR
    assert backend.sessions[VALID_SESSION_ID] == {"balance": 100}
    conn = await run_app(app, http_scope("/balance", headers=[cookie_header(VALID_SESSION_ID)]))
    assert conn.body == b"100"


# -- optional annotation coercion (docs/guides/routing.md, "Conversions from annotations") --


def coercing_app() -> App:
    app = App()

    @attach(app)
    async def add(self: App, n: int, m: int = 1) -> str:
        return f"{type(n).__name__}:{n + m}"

    @attach(app)
    async def scale(self: App, factor: float) -> str:
        return f"{type(factor).__name__}:{factor * 2}"

    @attach(app)
    async def plain(self: App, x) -> str:  # type: ignore[no-untyped-def]
        return type(x).__name__

    return app


# 0.32 ignores annotations.
@differs_from_032("Routing and binding: Annotations")
@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        (http_scope("/add/5"), b"int:6"),
        (http_scope("/add/5", query_string=b"m=10"), b"int:15"),
        (http_scope("/add", query_string=b"n=-3"), b"int:-2"),
        (http_scope("/scale/1.25"), b"float:2.5"),
    ],
)
async def test_annotated_parameters_are_coerced(scope: dict[str, Any], expected: bytes) -> None:
    conn = await run_app(coercing_app(), scope)
    assert conn.sent == plain_response(200, expected)


# 0.32 ignores annotations.
@differs_from_032("Routing and binding: Annotations")
@pytest.mark.parametrize(
    ("path", "query_string", "name"),
    [("/add/x", b"", "n"), ("/add/5", b"m=zz", "m"), ("/scale/abc", b"", "factor")],
)
async def test_bad_annotated_value_is_400_naming_the_parameter(
    path: str, query_string: bytes, name: str
) -> None:
    conn = await run_app(coercing_app(), http_scope(path, query_string=query_string))
    assert conn.status == 400
    assert conn.body.startswith(b"400 Bad Request")
    assert re.search(rb"\b" + name.encode() + rb"\b", conn.body.removeprefix(b"400 Bad Request"))
    assert conn.sent == plain_response(400, conn.body)


async def test_unannotated_parameters_stay_strings() -> None:
    conn = await run_app(coercing_app(), http_scope("/plain/5"))
    assert conn.body == b"str"
