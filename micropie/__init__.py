"""micropie: a MicroPie-compatible ASGI framework on anyio structured concurrency.

Runs unchanged on asyncio and trio. Every connection lives in its own cancel scope: a client
that leaves cancels its handler, and nothing a handler started outlives its connection.
"""

from __future__ import annotations

import logging

from micropie.app import DEFAULT_MAX_BODY_SIZE, DEFAULT_MAX_FORM_FIELD_SIZE, App
from micropie.core import asyncio_hint
from micropie.core.errors import MultipartFileError
from micropie.http.multipart import MULTIPART_INSTALLED
from micropie.http.request import Request, WebSocketRequest, current_request
from micropie.lifetimes.policy import shielded, time_limit
from micropie.middleware import HttpMiddleware, WebSocketMiddleware
from micropie.routing.mount import url_path
from micropie.sessions import SESSION_TIMEOUT, InMemorySessionBackend, SessionBackend
from micropie.templates import JINJA_INSTALLED
from micropie.websocket import ConnectionClosed, WebSocket

__version__ = "0.1.0"

# An error from asyncio-only code on trio gets a line in the log that says so.
asyncio_hint.install(logging.getLogger("micropie"))

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_FORM_FIELD_SIZE",
    "JINJA_INSTALLED",
    "MULTIPART_INSTALLED",
    "SESSION_TIMEOUT",
    "App",
    "ConnectionClosed",
    "HttpMiddleware",
    "InMemorySessionBackend",
    "MultipartFileError",
    "Request",
    "SessionBackend",
    "WebSocket",
    "WebSocketMiddleware",
    "WebSocketRequest",
    "__version__",
    "current_request",
    "shielded",
    "time_limit",
    "url_path",
]
