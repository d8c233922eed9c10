"""multipart/form-data bodies (needs the ``multipart`` package, >= 2.0).

Interim implementation: the body is read within the app's limits and parsed with the
``multipart`` push parser; text fields land in ``body_params`` and each file part becomes
``{"filename", "content_type", "content"}`` where ``await content.get()`` returns the next
``bytes`` chunk and ``None`` at the end. Streaming into the handler while the upload is still
arriving is tracked in the multipart issue.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from .bodies import read_body
from .errors import HTTPError

try:
    from multipart import MultipartSegment, ParserError, PushMultipartParser

    MULTIPART_INSTALLED = True
except ImportError:  # pragma: no cover - depends on the environment
    MULTIPART_INSTALLED = False

if TYPE_CHECKING:
    from .app import App
    from .request import Request
    from .types import Receive

__all__ = ["MULTIPART_INSTALLED", "read_multipart"]

logger = logging.getLogger("micropie")

_BOUNDARY = re.compile(r"boundary=(?:\"([^\"]+)\"|([^;\s]+))", re.IGNORECASE)


class BufferedFile:
    """An uploaded file held in memory: ``await get()`` yields its chunks, then ``None``."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks
        self._position = 0

    async def get(self) -> bytes | None:
        if self._position >= len(self._chunks):
            return None
        chunk = self._chunks[self._position]
        self._position += 1
        return chunk


async def read_multipart(app: App, request: Request, receive: Receive, media_type: str) -> None:
    if not MULTIPART_INSTALLED:
        logger.error("Multipart form data requires the 'multipart' package")
        raise HTTPError(500, "500 Internal Server Error")
    match = _BOUNDARY.search(request.headers.get("content-type", ""))
    if match is None:
        raise HTTPError(400, "400 Bad Request: Missing boundary")
    boundary = match.group(1) or match.group(2)
    body = await read_body(receive, max_size=app.max_body_size, idle_timeout=app.body_timeout)
    request.body = body
    fields: dict[str, list[str]] = {}
    files: dict[str, Any] = {}
    try:
        with PushMultipartParser(boundary) as parser:
            segment: MultipartSegment | None = None
            parts: list[bytes] = []
            for event in parser.parse(body):
                if isinstance(event, MultipartSegment):
                    segment, parts = event, []
                elif event:
                    parts.append(bytes(event))
                elif segment is not None:
                    _store(app, segment, parts, fields, files)
                    segment = None
            parser.close()
    except ParserError:
        raise HTTPError(400, "400 Bad Request: Malformed multipart body") from None
    request.body_params = fields
    request.files = files
    request.body_parsed = True


def _store(
    app: App,
    segment: MultipartSegment,
    parts: list[bytes],
    fields: dict[str, list[str]],
    files: dict[str, Any],
) -> None:
    if segment.filename:
        files[segment.name] = {
            "filename": segment.filename,
            "content_type": segment.content_type or "application/octet-stream",
            "content": BufferedFile(parts),
        }
        return
    value = b"".join(parts)
    if app.max_form_field_size is not None and len(value) > app.max_form_field_size:
        raise HTTPError(413, "413 Payload Too Large: Multipart form field")
    fields.setdefault(segment.name, []).append(value.decode("utf-8", "replace"))
