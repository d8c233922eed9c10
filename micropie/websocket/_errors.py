"""How a WebSocket connection ends: the exceptions a handler sees and the close codes sent."""

from __future__ import annotations

from micropie.core.types import Message

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


def check_close_code(code: object) -> None:
    """``ValueError`` unless a server may send ``code`` in a close frame (RFC 6455 §7.4).

    1000-1003 and 1007-1014 are the protocol's own codes an endpoint may send (1004 is
    reserved; 1005, 1006 and 1015 only report what happened, they never go on the wire),
    3000-3999 are registered for libraries and 4000-4999 are private. Anything else makes
    the client fail the connection with a protocol error instead of reading the close, so it
    is refused before anything is sent.
    """
    if type(code) is not int or not (
        1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999
    ):
        raise ValueError(
            f"Invalid WebSocket close code {code!r}: a server may send 1000-1003, "
            "1007-1014 or 3000-4999"
        )


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
