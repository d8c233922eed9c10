"""A ``ws_`` handler written as a plain ``def``: refused with a ``TypeError`` that names it.

It used to run, create ``ws.accept()`` coroutines nobody awaited and be refused with a bare 403
and a warning about a private method of ``WebSocket``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from micropie import App, WebSocket
from micropie.testing import TestClient, WebSocketRejected

pytestmark = pytest.mark.anyio


class Mistaken(App):
    def ws_chat(self, ws: WebSocket) -> None:  # should be async def
        ws.accept()  # type: ignore[unused-coroutine]


def logged(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Awaitable[Any]:
        return handler(*args, **kwargs)

    return wrapper


class Decorated(App):
    @logged
    async def ws_echo(self, ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text(await ws.receive_text())


async def test_a_plain_def_handler_is_refused_with_a_type_error_naming_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with TestClient(Mistaken()) as client:
        with pytest.raises(WebSocketRejected) as refused:
            async with client.websocket_connect("/chat"):
                pass  # pragma: no cover - never accepted
    assert refused.value.code == 1011
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1
    error = errors[0].exc_info[1] if errors[0].exc_info else None
    assert isinstance(error, TypeError)
    assert str(error).startswith("WebSocket handler Mistaken.ws_chat must be an async def")


async def test_a_decorated_async_handler_is_accepted() -> None:
    async with TestClient(Decorated()) as client, client.websocket_connect("/echo") as ws:
        await ws.send_text("hi")
        assert await ws.receive_text() == "hi"
