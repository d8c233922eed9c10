"""multipart/form-data bodies (needs the ``multipart`` package, >= 2.0).

Interim implementation behind the final interface: ``open_multipart`` returns the
``Connection`` the request's user code runs in. Here it reads the body within the app's limits,
parses it with the ``multipart`` push parser, and then behaves like an ordinary
``ConnectionScope``; text fields land in ``body_params`` and each file part becomes
``{"filename", "content_type", "content"}`` where ``await content.get()`` returns the next
``bytes`` chunk and ``None`` at the end. Streaming into a handler that starts while the upload
is still arriving is the multipart issue's work.
"""

from __future__ import annotations

import logging
import re
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .bodies import read_body
from .disconnect import Connection, ConnectionScope
from .errors import HTTPError
from .routing import MISSING, PendingForm

try:
    from multipart import MultipartSegment, ParserError, PushMultipartParser

    MULTIPART_INSTALLED = True
except ImportError:  # pragma: no cover - depends on the environment
    MULTIPART_INSTALLED = False

if TYPE_CHECKING:
    from .app import App
    from .request import Request
    from .types import Receive

__all__ = ["MULTIPART_INSTALLED", "open_multipart"]

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


class _ArrivedForm:
    """A form that has fully arrived: nothing to wait for."""

    async def field(self, name: str) -> Any:
        return MISSING

    async def complete(self) -> None:
        return None


class _BufferedReception:
    def __init__(self, app: App, request: Request, receive: Receive) -> None:
        self._app = app
        self._request = request
        self._inner = ConnectionScope(receive, app._sweeper)
        self._receive = receive
        self.form: PendingForm = _ArrivedForm()

    @property
    def client_left(self) -> bool:
        return self._inner.client_left

    @property
    def timed_out(self) -> bool:
        return False  # read_body answers a stalled upload with HTTPError(408) itself

    async def __aenter__(self) -> _BufferedReception:
        await _read_form(self._app, self._request, self._receive)
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return await self._inner.__aexit__(exc_type, exc, tb)


def open_multipart(app: App, request: Request, receive: Receive) -> Connection:
    """The connection scope for a multipart request (its parser owns ``receive()``)."""
    return _BufferedReception(app, request, receive)


async def _read_form(app: App, request: Request, receive: Receive) -> None:
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
