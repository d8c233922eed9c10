"""The middleware contracts: hooks around every HTTP request and WebSocket connection.

Middlewares run in list order (``app.middlewares``, ``app.ws_middlewares``), before and after
alike, as in MicroPie. A hook that raises is logged and answered with a 500 (HTTP) or a 1011
close (WebSocket); the next request is unaffected.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from micropie.http.request import Request

__all__ = ["HttpMiddleware", "WebSocketMiddleware"]


class HttpMiddleware(ABC):
    """Hooks around an HTTP request."""

    @abstractmethod
    async def before_request(self, request: Request) -> dict[str, Any] | None:
        """Runs after the body was read, before routing.

        Return a truthy dict to answer at once with its ``status_code`` (200), ``body`` ("") and
        ``headers`` ([]); return ``None`` to go on. Set ``request._route_handler`` and
        ``request.path_params`` to route explicitly, or ``request._subapp`` and
        ``request._subapp_path`` to hand the request to another ASGI app.
        """

    @abstractmethod
    async def after_request(
        self,
        request: Request,
        status_code: int,
        response_body: Any,
        extra_headers: list[tuple[str, str]],
    ) -> dict[str, Any] | None:
        """Runs after a successful handler, before the response is sent.

        Return a truthy dict to override any of ``status_code``, ``body`` and ``headers``, or
        mutate ``extra_headers`` in place. Error answers (400, 404, 413, 500 …) skip this hook.
        """


class WebSocketMiddleware(ABC):
    """Hooks around a WebSocket connection."""

    @abstractmethod
    async def before_websocket(self, request: Request) -> dict[str, Any] | None:
        """Return a truthy dict to refuse the connection with its ``code`` (1008) and
        ``reason`` ("Middleware rejected"); return ``None`` to go on."""

    @abstractmethod
    async def after_websocket(self, request: Request) -> None:
        """Runs after the handler returned or the client left."""
