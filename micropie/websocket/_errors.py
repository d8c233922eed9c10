"""How a WebSocket connection ends: the exceptions a handler sees and the close codes sent."""

from __future__ import annotations

from ..types import Message

INTERNAL_ERROR = (1011, "Internal server error")
_GOING_AWAY = (1001, "Going away")
_TOO_BIG = (1009, "Message too big")


class ConnectionClosed(Exception):
    """The WebSocket connection is over: the client left, or the server closed it.

    ``code`` and ``reason`` say why (``1009`` when a message was too big; on hypercorn a client's
    own close always arrives as ``1006``). Raised by ``receive_*`` once the messages that arrived
    before the close are consumed, and by every send after it. A handler may let it propagate:
    that is a normal end of the connection, never an error.
    """

    def __init__(self, code: int = 1000, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        suffix = f": {self.reason}" if self.reason else ""
        return f"WebSocket connection closed with code {self.code}{suffix}"


class ConnectionNotOpen(RuntimeError):
    """A send or receive on a WebSocket that is not open: not accepted yet, or closed by the
    handler itself. A ``RuntimeError``, as in MicroPie; its own class so that code that sends
    for a handler (``Broadcast.forward``) can tell it from a bug."""


class Refused(Exception):
    """The connection is refused before the handler runs, with this close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def close_message(code: int, reason: str) -> Message:
    return {"type": "websocket.close", "code": code, "reason": reason}


def only_connection_closed(error: BaseException) -> bool:
    """Whether ``error`` (or every exception in a group) is a ``ConnectionClosed``."""
    if isinstance(error, ConnectionClosed):
        return True
    if isinstance(error, BaseExceptionGroup):
        _, rest = error.split(ConnectionClosed)
        return rest is None
    return False
