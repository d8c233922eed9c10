"""From what a handler returns to ASGI messages.

A handler returns a body, ``(status, body)`` or ``(status, body, headers)``. Bodies: ``str``
(UTF-8), ``bytes``, ``dict``/``list`` (JSON), ``None`` (empty), or an iterable / async iterable
to stream. Plain bodies are sent with ``Content-Length``; streams are sent chunk by chunk (see
``streaming``).

Header lists are always copied (MicroPie 0.32 appended to the caller's list, leaking one user's
``Set-Cookie`` into the next response). A header that could split the response (CR, LF, NUL or
another control character), that is not latin-1, or whose name is not an HTTP token is dropped
with a warning; the warning names the header, never its value, which may be a secret.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterable, Iterable
from typing import Any

from micropie.core import json_codec
from micropie.core.types import RawHeaders, Send

__all__ = [
    "PlainResponse",
    "encode_headers",
    "error_response",
    "is_stream",
    "normalise_result",
    "plain_body",
    "plain_response",
    "send_plain",
]

logger = logging.getLogger("micropie")

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN_IN_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_DEFAULT_CONTENT_TYPE = (b"Content-Type", b"text/html; charset=utf-8")
_JSON_CONTENT_TYPE = ("Content-Type", "application/json")


def _encode(part: Any, what: str, name: Any) -> bytes | None:
    if isinstance(part, bytes):
        return part
    try:
        return str(part).encode("latin-1")
    except UnicodeEncodeError:
        logger.warning("Rejected response header outside latin-1: %r (%s)", name, what)
        return None


def _encode_header(name: Any, value: Any) -> tuple[bytes, bytes] | None:
    """One header as raw bytes, or ``None`` (with a warning) when it is unsafe to send."""
    raw_name = _encode(name, "name", name)
    raw_value = _encode(value, "value", name)
    if raw_name is None or raw_value is None:
        return None
    if not _TOKEN.fullmatch(raw_name):
        logger.warning("Rejected response header with an invalid name: %r", name)
        return None
    if _FORBIDDEN_IN_VALUE.search(raw_value):
        logger.warning("Rejected response header containing a newline or control: %r", name)
        return None
    return raw_name, raw_value


_TOKEN_TEXT = re.compile(_TOKEN.pattern.decode("ascii"))  # the same rule, for str names


def _checked_header(header: Any) -> tuple[bytes, bytes] | None:
    """``_encode_header`` for a ``(name, value)`` pair, with a fast path for plain ASCII text.

    A value that is ASCII and printable (``isprintable`` is false for every control
    character) and a name that is a token need no further check. Nothing is remembered: the
    values that vary (cookies, locations, anything echoed from a request) may be secrets.
    """
    name, value = header
    if (
        type(value) is str
        and type(name) is str
        and value.isascii()
        and value.isprintable()
        and _TOKEN_TEXT.fullmatch(name)
    ):
        return name.encode("ascii"), value.encode("ascii")
    return _encode_header(name, value)


#: The framework's own fixed headers, checked and encoded once. Only fixed text belongs here:
#: a cache of what handlers return would keep session cookies and user input alive.
_FIXED_HEADERS: dict[tuple[str, str], tuple[bytes, bytes]] = {
    header: (header[0].encode("ascii"), header[1].encode("ascii"))
    for header in (
        _JSON_CONTENT_TYPE,
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Type", "text/event-stream; charset=utf-8"),
        ("Cache-Control", "no-cache"),
        ("X-Accel-Buffering", "no"),
    )
}


def encode_headers(headers: Iterable[tuple[Any, Any]]) -> RawHeaders:
    """Sanitised raw headers, with ``text/html; charset=utf-8`` appended when no type was set."""
    raw: RawHeaders = []
    has_content_type = False
    for header in headers:
        encoded = _FIXED_HEADERS.get(header) if type(header) is tuple else None
        if encoded is None:
            encoded = _checked_header(header)
            if encoded is None:
                continue
        if not has_content_type and encoded[0].lower() == b"content-type":
            has_content_type = True
        raw.append(encoded)
    if not has_content_type:
        raw.append(_DEFAULT_CONTENT_TYPE)
    return raw


def has_content_type(headers: Iterable[tuple[Any, Any]]) -> bool:
    for name, _ in headers:
        key = name if isinstance(name, str) else bytes(name).decode("latin-1")
        if key.lower() == "content-type":
            return True
    return False


def normalise_result(result: Any) -> tuple[int, Any, list[Any]]:
    """``(status, body, headers)`` from a handler's return value, JSON already encoded.

    ``headers`` is a fresh list that middleware may mutate. A malformed return value raises
    ``TypeError``, which the app turns into a logged 500.
    """
    if isinstance(result, tuple):
        if len(result) < 2:
            raise TypeError(f"a handler returned a tuple of {len(result)} item(s)")
        status, body = result[0], result[1]
        headers = list(result[2]) if len(result) > 2 and result[2] else []
    else:
        status, body, headers = 200, result, []
    if type(status) is not int:
        raise TypeError(f"status must be an int, not {type(status).__name__}")
    if isinstance(body, dict | list):
        body = json_codec.dumps(body)
        if not has_content_type(headers):
            headers.append(_JSON_CONTENT_TYPE)
    return status, body, headers


def is_stream(body: Any) -> bool:
    """Whether ``body`` is sent chunk by chunk (async or sync iterables, not text or bytes)."""
    kind = type(body)
    if kind is str or kind is bytes or body is None:
        return False
    if isinstance(body, str | bytes | bytearray | memoryview | dict | list):
        return False
    return isinstance(body, AsyncIterable | Iterable)


def plain_body(body: Any) -> bytes:
    """The bytes of a non-streamed body (``None`` is empty; MicroPie 0.32 sent ``b"None"``, see
    docs/migration.md)."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    if body is None:
        return b""
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    return str(body).encode("utf-8")


#: ``(status, raw headers, body)`` of a complete plain response.
PlainResponse = tuple[int, RawHeaders, bytes]


def plain_response(status: int, body: Any, headers: list[Any]) -> PlainResponse:
    """A normalised, non-streamed answer (``normalise_result``), ready for ``send_plain``."""
    return status, encode_headers(headers), plain_body(body)


async def send_plain(send: Send, status: int, headers: RawHeaders, body: bytes) -> None:
    """Send a complete response, with ``Content-Length``."""
    headers.append((b"content-length", str(len(body)).encode("ascii")))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def error_response(status: int, text: str) -> PlainResponse:
    """One of MicroPie's plain-text error answers (``404 Not Found`` and friends)."""
    return status, [_DEFAULT_CONTENT_TYPE], text.encode("utf-8")
