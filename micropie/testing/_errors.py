"""The exceptions a test sees from ``TestClient`` when the app under test misbehaves."""

from __future__ import annotations

from typing import ClassVar


class ASGIProtocolError(RuntimeError):
    """The app broke the ASGI contract: messages out of order, or no response at all."""


class AppOutlivedClientError(RuntimeError):
    """An app call kept running ``disconnect_timeout`` seconds after its client left.

    The client had been told (``http.disconnect``, or ``lifespan.shutdown`` answered); the call has
    been cancelled. An ASGI app must return promptly once its client is gone, so this is a bug in
    the app under test, not in the test.
    """


class LifespanError(RuntimeError):
    """The app answered ``lifespan.startup.failed`` or ``lifespan.shutdown.failed``."""

    def __init__(self, phase: str, message: str) -> None:
        super().__init__(f"lifespan {phase} failed" + (f": {message}" if message else ""))
        self.phase = phase
        self.message = message

    def __reduce__(self) -> tuple[type[LifespanError], tuple[str, str]]:
        # Its ``args`` hold the formatted text, not the constructor's arguments: without this
        # it cannot be unpickled (pytest-xdist, multiprocessing).
        return type(self), (self.phase, self.message)


class _WebSocketEnded(Exception):
    """A WebSocket connection the test holds is over; ``code`` and ``reason`` are the app's.

    The common part of ``WebSocketRejected`` and ``WebSocketClosed``, which differ only in the
    word their message uses for how the connection ended.
    """

    _how: ClassVar[str]

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        suffix = f": {self.reason}" if self.reason else ""
        return f"WebSocket connection {self._how} with code {self.code}{suffix}"


class WebSocketRejected(_WebSocketEnded):
    """The app refused the connection: it sent ``websocket.close`` before accepting.

    ``code`` and ``reason`` are the app's. Over a real server only an HTTP 403 reaches the
    client; in-process the test sees what the app said.
    """

    _how = "rejected"


class WebSocketClosed(_WebSocketEnded):
    """The app closed the connection (``code``, ``reason``): raised by the receive that would
    have returned the next message, and by sends after it."""

    _how = "closed by the app"
