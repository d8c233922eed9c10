"""The ``boundary`` parameter of a multipart ``Content-Type``, read without backtracking."""

from __future__ import annotations

from micropie.core.errors import HTTPError

#: Longest boundary RFC 2046 allows; a longer one is a malformed request.
MAX_BOUNDARY_LENGTH = 70

_MALFORMED = "400 Bad Request: Malformed multipart body"


def parse_boundary(content_type: str) -> str | None:
    """The ``boundary`` parameter of a ``Content-Type`` value, or ``None``.

    A single left-to-right scan (no regular expression, so no backtracking on hostile input).
    Parameter names are case-insensitive, the value keeps its case; a quoted value may escape
    characters with ``\\``. An unterminated quoted value is ``HTTPError(400)``.
    """
    text = content_type.partition(";")[2]
    position, end = 0, len(text)
    while position < end:
        equals = text.find("=", position)
        if equals == -1:
            return None
        semicolon = text.find(";", position)
        if -1 < semicolon < equals:  # a parameter without a value
            position = semicolon + 1
            continue
        name = text[position:equals].strip().lower()
        position = equals + 1
        while position < end and text[position] in " \t":
            position += 1
        if position < end and text[position] == '"':
            value, position = _quoted_string(text, position + 1)
            semicolon = text.find(";", position)
            position = end if semicolon == -1 else semicolon + 1
        else:
            semicolon = text.find(";", position)
            stop = end if semicolon == -1 else semicolon
            value, position = text[position:stop].strip(), stop + 1
        if name == "boundary":
            return value or None
    return None


def _quoted_string(text: str, position: int) -> tuple[str, int]:
    """Read a quoted string whose opening quote is just before ``position``."""
    characters: list[str] = []
    end = len(text)
    while position < end:
        character = text[position]
        if character == '"':
            return "".join(characters), position + 1
        if character == "\\" and position + 1 < end:
            position += 1
            character = text[position]
        characters.append(character)
        position += 1
    raise HTTPError(400, _MALFORMED)
