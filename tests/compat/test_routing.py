"""MicroPie 0.32 compatibility: routing and HTTP argument binding
(docs/guides/routing.md).

Ported from 0.32's ``TestRouting`` and the HTTP half of ``TestFastPaths``.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest

from micropie import App, InMemorySessionBackend
from tests.support.asgi import HTML, JSON, attach, body, http_scope, plain_response, run_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def app() -> App:
    return App(session_backend=InMemorySessionBackend())


async def test_app_handler(app: App) -> None:
    @attach(app)
    async def index(self: App, name: str = "World") -> tuple[int, str]:
        return 200, f"Hello, {name}!"

    conn = await run_app(app, http_scope("/index", query_string=b"name=Test"), [body(b"")])
    assert conn.sent == plain_response(200, b"Hello, Test!")


async def test_root_path_calls_index(app: App) -> None:
    @attach(app)
    async def index(self: App) -> str:
        return "root"

    conn = await run_app(app, http_scope("/"))
    assert conn.sent == plain_response(200, b"root")


async def test_404_response(app: App) -> None:
    conn = await run_app(app, http_scope("/nonexistent"), [body(b"")])
    assert conn.sent == plain_response(404, b"404 Not Found")


@pytest.mark.parametrize("path", ["/session_backend", "/env", "/middlewares"])
async def test_public_internal_attributes_are_not_routable(app: App, path: str) -> None:
    conn = await run_app(app, http_scope(path), [body(b"")])
    assert conn.sent == plain_response(404, b"404 Not Found")


async def test_route_lookup_does_not_execute_properties() -> None:
    evaluated: list[str] = []

    class PropertyApp(App):
        @property
        def dangerous(self) -> str:
            evaluated.append("dangerous")
            raise AssertionError("route lookup executed a property")

    conn = await run_app(PropertyApp(), http_scope("/dangerous"), [body(b"")])
    assert conn.sent == plain_response(404, b"404 Not Found")
    assert evaluated == []


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/partial/value", b"partial:value"), ("/dispatch/value", b"default:value")],
)
async def test_descriptor_backed_handlers_are_routable_after_binding(
    path: str, expected: bytes
) -> None:
    class DescriptorApp(App):
        def partial_base(self, prefix: str, suffix: str = "") -> str:
            return f"{prefix}:{suffix}"

        partial = functools.partialmethod(partial_base, "partial")

        @functools.singledispatchmethod
        def dispatch(self, value: Any) -> str:
            return f"default:{value}"

    app = DescriptorApp()
    conn = await run_app(app, http_scope(path), [body(b"")])
    assert conn.sent == plain_response(200, expected)
    # A second request takes the same (cached) path and still works.
    again = await run_app(app, http_scope(path), [body(b"")])
    assert again.sent == plain_response(200, expected)


async def test_missing_route_still_falls_back_to_index_with_path_params(app: App) -> None:
    @attach(app)
    async def index(self: App, *parts: str) -> str:
        return "/".join(parts)

    conn = await run_app(app, http_scope("/missing/route"), [body(b"")])
    assert conn.sent == plain_response(200, b"missing/route")


async def test_missing_route_without_index_parameters_is_404(app: App) -> None:
    @attach(app)
    async def index(self: App) -> str:
        return "should not be reached"

    conn = await run_app(app, http_scope("/missing/route"))
    assert conn.sent == plain_response(404, b"404 Not Found")


async def test_missing_parameter(app: App) -> None:
    @attach(app)
    async def index(self: App, required_param: str) -> str:
        return "Should not reach here"

    conn = await run_app(app, http_scope("/index"), [body(b"")])
    assert conn.sent == plain_response(
        400, b"400 Bad Request: Missing required parameter 'required_param'"
    )


@pytest.mark.parametrize("method", ["GET", "DELETE", "OPTIONS", "BREW"])
async def test_http_method_is_never_checked(app: App, method: str) -> None:
    @attach(app)
    async def which(self: App) -> str:
        return self.request.method

    conn = await run_app(app, http_scope("/which", method))
    assert conn.status == 200
    assert conn.body == method.encode()


async def test_sync_handler_is_supported(app: App) -> None:
    @attach(app)
    def hello(self: App, name: str) -> str:
        return f"hi {name}"

    conn = await run_app(app, http_scope("/hello/bob"))
    assert conn.sent == plain_response(200, b"hi bob")


async def test_cached_handler_metadata_tracks_replaced_handler(app: App) -> None:
    @attach(app, "greet")
    async def greet_first(self: App) -> str:
        return "first"

    conn = await run_app(app, http_scope("/greet"), [body(b"")])
    assert conn.body == b"first"

    @attach(app, "greet")
    async def greet_second(self: App, name: str) -> str:
        return f"second {name}"

    conn = await run_app(app, http_scope("/greet/Alice"), [body(b"")])
    assert conn.sent == plain_response(200, b"second Alice")


async def test_http_argument_binding_fast_path_matches_existing_sources(app: App) -> None:
    """Request inputs bind while trusted session state is read explicitly."""

    @attach(app)
    async def combine(
        self: App, path_value: str, query_value: str, body_value: str, suffix: str = "ok"
    ) -> dict[str, Any]:
        return {
            "path": path_value,
            "query": query_value,
            "body": body_value,
            "user": self.request.session["user"],
            "suffix": suffix,
        }

    scope = http_scope(
        "/combine/path-part",
        "POST",
        [(b"content-type", b"application/x-www-form-urlencoded")],
        query_string=b"query_value=query-part",
    )
    scope["session"] = {"user": "alice"}
    conn = await run_app(app, scope, [body(b"body_value=body-part")])
    assert conn.status == 200
    assert json.loads(conn.body) == {
        "path": "path-part",
        "query": "query-part",
        "body": "body-part",
        "user": "alice",
        "suffix": "ok",
    }


async def test_binding_order_path_then_query_then_form(app: App) -> None:
    @attach(app)
    async def pick(self: App, a: str, b: str, c: str) -> str:
        return f"{a}|{b}|{c}"

    conn = await run_app(
        app,
        http_scope(
            "/pick/from-path",
            "POST",
            [(b"content-type", b"application/x-www-form-urlencoded")],
            query_string=b"a=query-a&b=query-b&b=second",
        ),
        [body(b"a=form-a&b=form-b&c=form-c")],
    )
    assert conn.body == b"from-path|query-b|form-c"


async def test_session_values_do_not_bind_http_handler_parameters(app: App) -> None:
    @attach(app)
    async def transfer(self: App, amount: str, user_id: str) -> str:
        return f"{user_id}:{amount}"

    scope = http_scope("/transfer", query_string=b"amount=10")
    scope["session"] = {"user_id": "trusted-user"}
    conn = await run_app(app, scope, [body(b"")])
    assert conn.sent == plain_response(
        400, b"400 Bad Request: Missing required parameter 'user_id'"
    )


async def test_request_input_cannot_shadow_explicit_session_read(app: App) -> None:
    @attach(app)
    async def transfer(self: App, amount: str) -> str:
        return f"{self.request.session['user_id']}:{amount}"

    scope = http_scope("/transfer", query_string=b"amount=10&user_id=attacker")
    scope["session"] = {"user_id": "trusted-user"}
    conn = await run_app(app, scope, [body(b"")])
    assert conn.body == b"trusted-user:10"


async def test_http_keyword_only_and_var_keyword_binding(app: App) -> None:
    @attach(app)
    async def options(self: App, *, name: str = "guest", **kwargs: Any) -> dict[str, Any]:
        return {"name": name, "extras": kwargs}

    payload = {"tags": [], "enabled": True}
    conn = await run_app(
        app,
        http_scope(
            "/options",
            "POST",
            [(b"content-type", b"application/json")],
            query_string=b"name=alice&debug=1",
        ),
        [body(json.dumps(payload).encode())],
    )
    assert conn.start["headers"][0] == JSON
    assert HTML not in conn.start["headers"]
    assert json.loads(conn.body) == {
        "name": "alice",
        "extras": {"debug": "1", "tags": [], "enabled": True},
    }


async def test_var_positional_takes_remaining_segments(app: App) -> None:
    @attach(app)
    async def files(self: App, first: str, *rest: str) -> str:
        return f"{first}:{','.join(rest)}"

    conn = await run_app(app, http_scope("/files/a/b/c"))
    assert conn.body == b"a:b,c"
