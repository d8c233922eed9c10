"""A response starts at most once: a ``send()`` that fails means the client is gone.

Every point where the app sends (a plain answer, each error answer, a middleware's short
circuit, a stream, a HEAD on a stream, a sub-app's answer) is tried with a ``send`` that raises
there, with each kind of error a server raises for a closed connection. The app must not
raise, must not try a second response start, and must log nothing at ERROR beyond what the same
request logs when the client stays (the DEBUG line says the client left).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
import trio

from micropie import App
from micropie.core.types import Message, Receive, Scope, Send
from micropie.http.request import Request
from micropie.middleware import HttpMiddleware
from tests.support.drive import Client, http_scope

pytestmark = pytest.mark.anyio

CLIENT_GONE_ERRORS: list[Callable[[], Exception]] = [
    lambda: ConnectionResetError("connection reset by peer"),
    lambda: OSError("connection lost"),
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
]


class ShortCircuit(HttpMiddleware):
    async def before_request(self, request: Request) -> dict[str, Any] | None:
        if request.path == "/blocked":
            return {"status_code": 403, "body": "blocked"}
        return None

    async def after_request(
        self, request: Request, status_code: int, response_body: Any, extra_headers: list[Any]
    ) -> dict[str, Any] | None:
        return None


async def plain_sub_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"from the sub-app"})


class HandOver(HttpMiddleware):
    async def before_request(self, request: Request) -> dict[str, Any] | None:
        if request.path == "/mounted":
            request._subapp = plain_sub_app  # type: ignore[attr-defined]
            request._subapp_path = "/"  # type: ignore[attr-defined]
        return None

    async def after_request(
        self, request: Request, status_code: int, response_body: Any, extra_headers: list[Any]
    ) -> dict[str, Any] | None:
        return None


class Everything(App):
    def __init__(self) -> None:
        super().__init__(body_timeout=0.05, max_body_size=10)
        self.middlewares += [ShortCircuit(), HandOver()]
        self.stream_closed = anyio.Event()

    async def index(self) -> str:
        return "hello"

    async def with_session(self) -> str:
        self.request.session["user"] = "alice"
        return "logged in"

    async def boom(self) -> str:
        raise RuntimeError("handler failed")

    async def form(self, name: str = "") -> str:
        return name

    async def stream(self) -> AsyncIterator[str]:
        async def chunks() -> AsyncIterator[str]:
            try:
                yield "one"
                yield "two"
            finally:
                self.stream_closed.set()

        return chunks()


def request(path: str, method: str = "GET", headers: list[Any] | None = None) -> dict[str, Any]:
    return {**http_scope(path), "method": method, "headers": headers or []}


FORM = [(b"content-type", b"application/x-www-form-urlencoded")]

#: name → (scope, how the client sends its body: "none", "stall" or "complete")
SCENARIOS: dict[str, tuple[dict[str, Any], str]] = {
    "200": (request("/"), "none"),
    "200 with a session cookie": (request("/with_session"), "none"),
    "404": (request("/_private"), "none"),
    "500": (request("/boom"), "none"),
    "400 missing parameter": (request("/form", "POST", FORM), "complete"),
    "408 body timeout": (request("/form", "POST", FORM), "stall"),
    "413 content-length": (request("/form", "POST", [*FORM, (b"content-length", b"99")]), "none"),
    "middleware short circuit": (request("/blocked"), "none"),
    "stream": (request("/stream"), "none"),
    "HEAD on a stream": (request("/stream", "HEAD"), "none"),
    "sub-app": (request("/mounted"), "none"),
}


class FailingClient(Client):
    """A client whose connection breaks at its ``fail_at``-th message (0-based)."""

    def __init__(self, body: str, fail_at: int | None, error: Exception | None) -> None:
        super().__init__()
        self.body = body
        self.fail_at = fail_at
        self.error = error
        self.body_sent = False

    async def receive(self) -> Message:
        if self.body == "complete" and not self.body_sent:
            self.body_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return await super().receive()  # "stall": nothing comes until the client leaves

    async def send(self, message: Message) -> None:
        await super().send(dict(message))
        if len(self.sent) - 1 == self.fail_at:
            assert self.error is not None
            raise self.error

    @property
    def starts(self) -> int:
        return sum(message["type"] == "http.response.start" for message in self.sent)


async def run(
    scenario: str, fail_at: int | None, error: Exception | None, caplog: pytest.LogCaptureFixture
) -> tuple[FailingClient, list[logging.LogRecord]]:
    scope, body = SCENARIOS[scenario]
    client = FailingClient(body, fail_at, error)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="micropie"), anyio.fail_after(5):
        await Everything()(dict(scope), client.receive, client.send)
    return client, list(caplog.records)


def kinds(messages: list[Message]) -> list[tuple[str, Any]]:
    return [(m["type"], m.get("status", m.get("body"))) for m in messages]


def errors_logged(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("make_error", CLIENT_GONE_ERRORS)
async def test_a_failing_send_ends_the_answer_quietly(
    scenario: str, make_error: Callable[[], Exception], caplog: pytest.LogCaptureFixture
) -> None:
    baseline, baseline_records = await run(scenario, None, None, caplog)
    assert baseline.starts == 1
    for fail_at in range(len(baseline.sent)):
        error = make_error()
        client, records = await run(scenario, fail_at, error, caplog)
        assert kinds(client.sent) == kinds(baseline.sent)[: fail_at + 1], f"failed at {fail_at}"
        assert client.starts == 1
        assert errors_logged(records) == errors_logged(baseline_records)
        assert any(
            r.levelno == logging.DEBUG and "client left" in r.getMessage() for r in records
        ), f"no DEBUG line for a send failing at message {fail_at}"


async def test_a_failing_stream_send_still_closes_the_generator() -> None:
    app = Everything()
    client = FailingClient("none", 1, OSError("connection lost"))
    with anyio.fail_after(5):
        await app(request("/stream"), client.receive, client.send)
        await app.stream_closed.wait()
    assert [m["type"] for m in client.sent] == ["http.response.start", "http.response.body"]


async def test_an_error_that_is_not_a_lost_client_still_propagates() -> None:
    """A ``send`` that rejects a message for another reason is a bug worth a traceback."""
    client = FailingClient("none", 0, RuntimeError("unexpected message"))
    with pytest.raises(RuntimeError, match="unexpected message"), anyio.fail_after(5):
        await Everything()(request("/"), client.receive, client.send)
    assert client.starts == 1
