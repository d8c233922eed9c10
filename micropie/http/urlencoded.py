"""Urlencoded form bodies, parsed while they arrive, within limits, exactly as MicroPie parses.

MicroPie parses a form with ``urllib.parse.parse_qs(body.decode("utf-8", "ignore"))`` once the
whole body is in. Its percent-decoding runs a Python loop per ``%``: a 16 MiB body of ``%`` signs
holds the event loop for seconds, and a worker thread does not help (the parse holds the GIL).
No streaming urlencoded parser ships with the standard library (the ``multipart`` extra, too,
parses urlencoded bodies whole with ``parse_qsl``), and core needs nothing but anyio, so this
module does the splitting itself and leaves every byte-level step to C:

- Each body message is split into ``&``-separated fields as it arrives (a regex scan). A field
  larger than ``max_field_size`` bytes, or more than ``max_fields`` fields, is ``HTTPError(413)``
  at once: the rest of the body is never parsed. Empty fields (``&&``) cost nothing and do not
  count; every other field counts, kept or not.
- A field is decoded with string operations only: a ``%`` not followed by two hex digits becomes
  ``%25`` (so it stays a literal ``%``), then the escapes are decoded by the ``unicode_escape``
  codec. A field larger than ``WINDOW`` bytes is decoded window by window with a checkpoint
  between, so no single step holds the event loop for long, whatever the field holds.

The result is what ``parse_qs`` gives for the same body (a property test compares them): blank
values and bare keys dropped, malformed escapes kept as they are, raw invalid UTF-8 dropped,
escaped invalid UTF-8 decoded as U+FFFD, ``+`` a space, ``&`` the only separator.
"""

from __future__ import annotations

import re

import anyio.lowlevel

from micropie.core.errors import HTTPError

__all__ = ["WINDOW", "UrlencodedParser"]

#: Bytes decoded between two checkpoints when a field needs the slow path.
WINDOW = 16 * 1024

_FIELD = re.compile(rb"[^&]+")
_VALID_ESCAPE = re.compile(rb"%[0-9A-Fa-f]{2}")
_MALFORMED_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_FIELD_TOO_LARGE = "413 Payload Too Large: Form field"
_TOO_MANY_FIELDS = "413 Payload Too Large: Too many form fields"


def _percent_decode(data: bytes) -> bytes:
    """``%XX`` escapes as bytes; a ``%`` without two hex digits after it stays a ``%``."""
    if b"%" not in data:
        return data
    data = _MALFORMED_ESCAPE.sub(b"%25", data)
    escaped = data.replace(b"\\", b"\\\\").replace(b"%", b"\\x")
    return escaped.decode("unicode_escape").encode("latin-1")


def _unquote_small(raw: bytes) -> str:
    """One name or value, as ``unquote(text.replace("+", " "))`` decodes it in ``parse_qs``.

    ``raw`` is already free of invalid UTF-8 (``parse_qs`` gets text decoded with "ignore").
    Decoding the percent-decoded bytes as a whole equals ``unquote``'s decoding of each ASCII
    run: a raw non-ASCII character starts with a lead byte, which ends any incomplete escaped
    sequence before it either way.
    """
    return _percent_decode(raw.replace(b"+", b" ")).decode("utf-8", "replace")


async def _unquote_large(raw: bytes) -> str:
    """``_unquote_small`` for a field over ``WINDOW`` bytes: window by window, with checkpoints."""
    raw = raw.replace(b"+", b" ")
    pieces: list[bytes] = []
    start = 0
    while start < len(raw):
        end = _cut(raw, min(start + WINDOW, len(raw)))
        pieces.append(_percent_decode(raw[start:end]))
        start = end
        await anyio.lowlevel.checkpoint()
    return b"".join(pieces).decode("utf-8", "replace")


def _cut(raw: bytes, end: int) -> int:
    """``end``, or the start of the valid ``%XX`` escape that ``end`` would cut in two.

    A ``%`` left at the end of a window that is not such an escape is malformed in the whole
    field too, so each window decodes as the field would.
    """
    for escape_start in (end - 2, end - 1):
        escape = raw[escape_start : escape_start + 3]
        if escape_start > 0 and len(escape) == 3 and _VALID_ESCAPE.fullmatch(escape):
            return escape_start
    return end


def _valid_utf8(raw: bytes) -> bytes:
    return raw if raw.isascii() else raw.decode("utf-8", "ignore").encode("utf-8")


class UrlencodedParser:
    """Feed it the body's chunks with ``await feed(chunk)``; ``await close()`` gives the fields.

    ``None`` disables a limit. The fields are MicroPie's ``body_params``: name → list of values.
    """

    def __init__(self, max_field_size: int | None, max_fields: int | None) -> None:
        self.max_field_size = max_field_size
        self.max_fields = max_fields
        self.fields: dict[str, list[str]] = {}
        self._count = 0
        self._partial = bytearray()  # the field the last chunk ended in

    async def feed(self, chunk: bytes) -> None:
        """Parse the fields ``chunk`` completes; keep the one it leaves open."""
        start = 0
        if self._partial:
            start = chunk.find(b"&")
            if start < 0:
                self._grow(chunk)
                return
            self._grow(chunk[:start])
            field = bytes(self._partial)
            self._partial.clear()
            await self._add(field)
        for match in _FIELD.finditer(chunk, start):
            if match.end() == len(chunk):  # may go on in the next chunk
                self._grow(match.group())
                return
            field = match.group()
            if len(field) <= WINDOW:
                self._add_small(field)
            else:
                await self._add(field)

    async def close(self) -> dict[str, list[str]]:
        """The fields, once the body has ended."""
        if self._partial:
            field = bytes(self._partial)
            self._partial.clear()
            await self._add(field)
        return self.fields

    def _grow(self, data: bytes) -> None:
        self._partial += data
        if self.max_field_size is not None and len(self._partial) > self.max_field_size:
            raise HTTPError(413, _FIELD_TOO_LARGE)

    def _count_field(self, field: bytes) -> tuple[bytes, bytes] | None:
        """Check the limits; the name and value to keep, or ``None`` for a dropped field."""
        if self.max_field_size is not None and len(field) > self.max_field_size:
            raise HTTPError(413, _FIELD_TOO_LARGE)
        self._count += 1
        if self.max_fields is not None and self._count > self.max_fields:
            raise HTTPError(413, _TOO_MANY_FIELDS)
        name, separator, value = field.partition(b"=")
        if not separator:
            return None  # a bare key: parse_qs drops it
        value = _valid_utf8(value)
        if not value:
            return None  # a blank value: dropped too
        return _valid_utf8(name), value

    def _add_small(self, field: bytes) -> None:
        kept = self._count_field(field)
        if kept is not None:
            name, value = kept
            self.fields.setdefault(_unquote_small(name), []).append(_unquote_small(value))

    async def _add(self, field: bytes) -> None:
        if len(field) <= WINDOW:
            self._add_small(field)
            return
        kept = self._count_field(field)
        if kept is not None:
            name, value = kept
            key = await _unquote_large(name) if len(name) > WINDOW else _unquote_small(name)
            self.fields.setdefault(key, []).append(await _unquote_large(value))
        await anyio.lowlevel.checkpoint()  # a body that came in one large message
