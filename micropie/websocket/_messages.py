"""Per-message helpers: payload conversion, size limit, a failed receive, what a send may skip.

Plain module-level functions the ``WebSocket`` calls directly (no method lookup, no wrapper):
they run once per message.
"""

from __future__ import annotations

import logging
from functools import cache

from micropie.core.types import Message, Scope

logger = logging.getLogger("micropie")


def _payload(message: Message) -> str | bytes:
    """What ``receive()`` returns for a ``websocket.receive`` message."""
    text: str | None = message.get("text")
    if text is not None:
        return text
    return bytes(message.get("bytes") or b"")


def _as_text(message: Message) -> str:
    text: str | None = message.get("text")
    if text is not None:
        return text
    return bytes(message.get("bytes") or b"").decode("utf-8", "ignore")


def _as_bytes(message: Message) -> bytes:
    data = message.get("bytes")
    if data is not None:
        return bytes(data)
    return str(message.get("text") or "").encode("utf-8")


def _receive_failed() -> Message:
    """A ``receive()`` that raised (a server in trouble) is treated as the client leaving."""
    logger.debug("WebSocket receive() failed; treating it as a disconnect", exc_info=True)
    return {"type": "websocket.disconnect", "code": 1006}


def _too_big(message: Message, limit: int | None) -> bool:
    """Whether a ``websocket.receive`` message exceeds ``limit`` bytes (text as UTF-8)."""
    if limit is None:
        return False
    data = message.get("bytes")
    if data is not None:
        return len(data) > limit
    text = message.get("text") or ""
    if len(text) > limit:  # every character takes at least one byte…
        return True
    if len(text) * 4 <= limit:  # …and at most four: only the middle ground needs encoding
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit


@cache
def _spec_before_2_4(spec_version: str) -> bool:
    try:
        major, minor = (int(part) for part in spec_version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) < (2, 4)


def server_send_cannot_fail(scope: Scope) -> bool:
    """Whether the server said its ``send()`` raises no ``OSError`` for a client that left.

    ASGI 2.4 lets a server raise ``OSError`` from ``send()`` once the peer is gone; a server
    that names an older ``spec_version`` in ``scope["asgi"]`` does not (hypercorn: 2.3, and
    drops such sends). A scope that names none counts as one that may raise.
    """
    asgi = scope.get("asgi")
    spec_version = asgi.get("spec_version") if isinstance(asgi, dict) else None
    return isinstance(spec_version, str) and _spec_before_2_4(spec_version)
