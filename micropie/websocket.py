"""WebSocket connections (placeholder: being written)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .types import Receive, Scope, Send

if TYPE_CHECKING:
    from .app import App

__all__ = ["ConnectionClosed", "WebSocket", "serve_websocket"]


class ConnectionClosed(Exception):
    """The client closed the WebSocket connection."""


class WebSocket:
    """Placeholder."""


async def serve_websocket(app: App, scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "websocket.close", "code": 1011, "reason": "Not implemented"})
