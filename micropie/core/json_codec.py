"""JSON in and out, with orjson when it is installed and the same answers without it.

MicroPie uses orjson when it can. The two parsers disagree at the edges, so this module pins
the edges down: whichever parser runs, a body is rejected (``ValueError``) when it is not valid
UTF-8, starts with a byte-order mark, contains ``NaN``/``Infinity`` or a number that does not fit
a double, has an integer of more than 4,300 digits, or nests deeper than the parser allows.
A document orjson rejects is handed to the standard library parser, whose strict answer is
final: orjson refuses integers beyond a double's range that Python parses exactly (below
4,300 digits), and both must give the same status. Tests set ``orjson`` to ``None`` to
exercise the standard library path.
"""

from __future__ import annotations

import json
import math
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    orjson = None  # type: ignore[assignment]

__all__ = ["dumps", "loads"]

_BOM = b"\xef\xbb\xbf"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"JSON constant {name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("JSON number out of range")
    return value


_stdlib_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def loads(data: bytes) -> Any:
    """Parse a JSON document, raising ``ValueError`` for anything this module rejects."""
    if data.startswith(_BOM):
        raise ValueError("JSON with a byte-order mark is not allowed")
    if orjson is not None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # the standard library has the last word, so both paths answer alike
    try:
        return _stdlib_decoder.decode(data.decode("utf-8"))
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def dumps(value: Any) -> str:
    """Serialise ``value`` to a JSON ``str`` (middleware always sees text, as in MicroPie)."""
    if orjson is not None:
        return orjson.dumps(value).decode("utf-8")
    return json.dumps(value)
