"""MicroPie 0.32 compatibility: HTTP middleware and sub-app handoff
(docs/guides/middleware.md).

Ported from 0.32's ``TestMiddleware``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from micropie import App, HttpMiddleware, InMemorySessionBackend
from tests.support.asgi import HTML, attach, body, http_scope, plain_response, run_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def app() -> App:
    return App(session_backend=InMemorySessionBackend())


class PassThrough(HttpMiddleware):
    async def before_request(self, request: Any) -> Any:
        return None

    async def after_request(
        self, request: Any, status_code: int, response_body: Any, extra_headers: Any
    ) -> Any:
        return None


async def test_http_middleware(app: App) -> None:
    class Rewrite(HttpMiddleware):
        async def before_request(self, request: Any) -> None:
            request.custom_data = "set_by_middleware"

        async def after_request(
            self, request: Any, status_code: int, response_body: Any, extra_headers: Any
        ) -> dict[str, Any]:
            return {
                "status_code": 201,
                "body": f"{response_body} + middleware",
                "headers": extra_headers,
            }

    app.middlewares.append(Rewrite())

    @attach(app)
    async def index(self: App) -> str:
        return f"Data: {self.request.custom_data}"  # type: ignore[attr-defined]

    conn = await run_app(app, http_scope("/index"), [body(b"")])
    assert conn.sent == plain_response(201, b"Data: set_by_middleware + middleware")


async def test_partial_before_request_response_uses_defaults(app: App) -> None:
    class NoContent(PassThrough):
        async def before_request(self, request: Any) -> dict[str, Any]:
            return {"status_code": 204}

    app.middlewares.append(NoContent())
    conn = await run_app(app, http_scope("/"), [body(b"")])
    # A 204 must not carry Content-Length (RFC 9110 8.6) but h11 tolerates "0": accept both.
    assert conn.sent in (
        plain_response(204, b""),
        [
            {"type": "http.response.start", "status": 204, "headers": [HTML]},
            {"type": "http.response.body", "body": b"", "more_body": False},
        ],
    )


async def test_before_request_short_circuit_with_headers_skips_handler(app: App) -> None:
    calls: list[str] = []

    class Deny(PassThrough):
        async def before_request(self, request: Any) -> dict[str, Any]:
            return {"status_code": 403, "body": "nope", "headers": [("X-Why", "policy")]}

    app.middlewares.append(Deny())

    @attach(app)
    async def index(self: App) -> str:
        calls.append("index")
        return "secret"

    conn = await run_app(app, http_scope("/"))
    assert conn.sent == plain_response(403, b"nope", [(b"X-Why", b"policy"), HTML])
    assert calls == []


async def test_after_request_may_mutate_extra_headers(app: App) -> None:
    class AddHeader(PassThrough):
        async def after_request(
            self, request: Any, status_code: int, response_body: Any, extra_headers: Any
        ) -> None:
            extra_headers.append(("X-Frame-Options", "DENY"))

    app.middlewares.append(AddHeader())

    @attach(app)
    async def index(self: App) -> str:
        return "ok"

    conn = await run_app(app, http_scope("/"))
    assert conn.sent == plain_response(200, b"ok", [(b"X-Frame-Options", b"DENY"), HTML])


async def test_middlewares_run_in_list_order(app: App) -> None:
    order: list[str] = []

    class Record(HttpMiddleware):
        def __init__(self, name: str) -> None:
            self.name = name

        async def before_request(self, request: Any) -> None:
            order.append(f"before {self.name}")

        async def after_request(
            self, request: Any, status_code: int, response_body: Any, extra_headers: Any
        ) -> None:
            order.append(f"after {self.name}")

    app.middlewares.extend([Record("a"), Record("b")])

    @attach(app)
    async def index(self: App) -> str:
        order.append("handler")
        return "ok"

    await run_app(app, http_scope("/"))
    assert order == ["before a", "before b", "handler", "after a", "after b"]


async def test_middleware_may_change_session_before_it_is_saved() -> None:
    backend = InMemorySessionBackend()
    app = App(session_backend=backend)

    class Stamp(PassThrough):
        async def after_request(
            self, request: Any, status_code: int, response_body: Any, extra_headers: Any
        ) -> None:
            request.session["stamped"] = True

    app.middlewares.append(Stamp())

    @attach(app)
    async def index(self: App) -> str:
        return "ok"

    conn = await run_app(app, http_scope("/"))
    (session_id,) = backend.sessions
    assert backend.sessions[session_id] == {"stamped": True}
    assert f"session_id={session_id};".encode() in conn.set_cookie()


async def test_explicit_route_handler_from_middleware(app: App) -> None:
    """Middleware may pick the handler (even a ``_private`` one) and its path params."""

    class Router(PassThrough):
        async def before_request(self, request: Any) -> None:
            if request.scope["path"].startswith("/users/"):
                request._route_handler = "_show_user"
                request.path_params = [request.scope["path"].rsplit("/", 1)[1]]

    app.middlewares.append(Router())

    @attach(app)
    async def _show_user(self: App, user_id: str) -> str:
        return f"user {user_id}"

    conn = await run_app(app, http_scope("/users/42"))
    assert conn.sent == plain_response(200, b"user 42")


async def test_a_later_middleware_sees_whether_an_earlier_one_routed(app: App) -> None:
    """The steering attributes exist only once set, so ``hasattr`` tells (as in MicroPie)."""
    seen: list[bool] = []

    class Router(PassThrough):
        async def before_request(self, request: Any) -> None:
            if request.scope["path"] == "/secret":
                request._route_handler = "_hidden"

    class Observer(PassThrough):
        async def before_request(self, request: Any) -> None:
            seen.append(hasattr(request, "_route_handler") or hasattr(request, "_subapp"))

    app.middlewares.extend([Router(), Observer()])

    @attach(app)
    async def _hidden(self: App) -> str:
        return "hidden"

    @attach(app)
    async def index(self: App) -> str:
        return "index"

    assert (await run_app(app, http_scope("/secret"))).sent == plain_response(200, b"hidden")
    assert (await run_app(app, http_scope("/"))).sent == plain_response(200, b"index")
    assert seen == [True, False]


async def test_json_subapp_handoff_preserves_json_namespace(app: App) -> None:
    child = App()

    @attach(child)
    async def submit(self: App) -> dict[str, Any]:
        return {"value": self.request.json("value"), "body_params": self.request.body_params}

    class MountChild(PassThrough):
        async def before_request(self, request: Any) -> None:
            request._subapp = child
            request._subapp_path = "/submit"

    app.middlewares.append(MountChild())
    conn = await run_app(
        app,
        http_scope("/mounted/submit", "POST", [(b"content-type", b"application/json")]),
        [body(b'{"value": 7}')],
    )
    assert json.loads(conn.body) == {"value": 7, "body_params": {}}


async def test_form_subapp_handoff_sees_parsed_form(app: App) -> None:
    child = App()

    @attach(child)
    async def submit(self: App, value: str) -> str:
        return f"child got {value}"

    class MountChild(PassThrough):
        async def before_request(self, request: Any) -> None:
            if request.scope["path"].startswith("/api/"):
                request._subapp = child
                request._subapp_path = request.scope["path"][len("/api") :]

    app.middlewares.append(MountChild())
    conn = await run_app(
        app,
        http_scope(
            "/api/submit", "POST", [(b"content-type", b"application/x-www-form-urlencoded")]
        ),
        [body(b"value=", True), body(b"42")],
    )
    assert conn.sent == plain_response(200, b"child got 42")
