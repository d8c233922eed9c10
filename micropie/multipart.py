"""Streaming ``multipart/form-data`` uploads (needs the ``multipart`` package, >= 2.0).

Theory of operation
-------------------
For a multipart request, ``open_multipart`` returns the *connection* the request's user code
runs in (``MultipartReception``). Entering it opens a task group, starts the parser task in it
and then enters a cancel scope for the user code (middleware, binding, handler). The parser
task owns ``receive()`` for the whole request:

1. It reads body chunks (each ``receive()`` within ``body_timeout``, the total counted against
   ``max_body_size``) and feeds them to ``multipart.PushMultipartParser``.
2. A text field is collected (counted against ``max_form_field_size`` across chunks), decoded
   once whole (so UTF-8 split between chunks survives) and appended to
   ``request.body_params[name]``. A file part is put in ``request.files[name]`` as soon as its
   headers arrive, with an ``UploadStream`` as its ``content``: the handler reads the file while
   the rest of the upload is still arriving.
3. Binding waits for parameters through ``StreamingForm`` (one ``anyio.Event`` per wanted name,
   set when that name arrives or the form ends: no polling).
4. After the body ended, the task keeps reading ``receive()``; ``http.disconnect`` cancels the
   user code's scope and the request ends without a response.

Backpressure: an ``UploadStream`` holds at most ``FILE_BUFFER_SIZE`` unread bytes (plus one
chunk). Past that the parser stops reading, so the server stops reading the socket and the
client is slowed down to the handler's pace. The one exception: while binding waits for a
parameter (or for the whole form, for ``**kwargs`` and sub-app handoff) that comes *after* an
unread file, the parser cannot stop, or binding and the upload would wait for each other
forever. Then unread file data is held in memory ("spilled"); the total is still bounded by
``max_body_size``. Only one part is ever in progress, so a file that is not read blocks nothing
but the parts after it.

Failures (too large, too many parts, stalled, malformed, client gone) are recorded once. Open
(incomplete) files then raise ``MultipartFileError`` from ``get()`` (a cut upload never looks
complete), waiting binders raise the error (so the handler does not run), and when the user
code ends the error replaces its response (also when the handler let ``MultipartFileError``
escape). A client that leaves mid-body makes ``get()`` raise too; a handler that was reading the
open file is given ``DISCONNECT_GRACE`` to see that and clean up before its scope is cancelled
(any other handler is cancelled at once), and nothing is sent.

When the user code ends (the handler returned, or middleware answered early), the parser is
cancelled and awaited, even if the upload is still arriving: read an upload in the handler, not
in a streamed response that runs after it.

Limitations: while the parser is held back (a handler that does not read its file), nobody reads
``receive()``, so a client that leaves is only noticed when the handler reads on or returns
(servers queue the disconnect behind the unread body).

``request.files[name]["filename"]`` is whatever the client sent (``../../etc/passwd``, or with
CR/LF decoded from ``%0D%0A``): never use it as a path or header value without cleaning it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel

from .bodies import receive_body_message
from .concurrency import collapse_excgroups
from .disconnect import Connection, watch_for_disconnect
from .errors import ClientDisconnected, HTTPError, MultipartFileError
from .routing import MISSING, PendingForm

try:
    from multipart import MultipartError, MultipartSegment, PushMultipartParser

    MULTIPART_INSTALLED = True
except ImportError:  # pragma: no cover - depends on the environment
    MULTIPART_INSTALLED = False

if TYPE_CHECKING:
    from .app import App
    from .request import Request
    from .types import Receive

__all__ = [
    "DISCONNECT_GRACE",
    "FILE_BUFFER_SIZE",
    "MULTIPART_INSTALLED",
    "MultipartReception",
    "StreamingForm",
    "UploadStream",
    "open_multipart",
    "parse_boundary",
]

logger = logging.getLogger("micropie")

#: Unread bytes an upload may hold before the parser stops reading the body (backpressure).
FILE_BUFFER_SIZE = 256 * 1024
#: Longest boundary RFC 2046 allows; a longer one is a malformed request.
MAX_BOUNDARY_LENGTH = 70
#: Seconds a handler reading an upload has to clean up after its client left mid-upload.
DISCONNECT_GRACE = 0.1

_MISSING_BOUNDARY = "400 Bad Request: Missing boundary"
_MALFORMED = "400 Bad Request: Malformed multipart body"
_TOO_LARGE = "413 Payload Too Large"
_FIELD_TOO_LARGE = "413 Payload Too Large: Multipart form field"
_TOO_MANY_PARTS = "413 Payload Too Large: Too many multipart parts"
_TOO_MANY_FILES = "413 Payload Too Large: Too many multipart files"

#: Exceptions that end the user code quietly once the client has left (nobody to answer).
_QUIET_WHEN_LEFT = (ClientDisconnected, HTTPError, MultipartFileError)


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


class UploadStream:
    """An uploaded file's content, readable while the upload is still arriving.

    ``await get()`` returns the next ``bytes`` chunk, ``None`` once the file ended cleanly (and
    on every later call), and raises ``MultipartFileError`` (with ``.cause``) when the upload
    was cut short, too large or malformed: a truncated file never looks complete. ``async for
    chunk in stream`` reads the same chunks. For code written against MicroPie's
    ``asyncio.Queue``, ``get_nowait()`` (``anyio.WouldBlock`` when nothing is buffered),
    ``qsize()`` and ``empty()`` exist too.
    """

    def __init__(self, wake_parser: Callable[[], None]) -> None:
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._finished = False
        self._error: BaseException | None = None
        self._read = False
        self._arrival = anyio.Event()
        self._wake_parser = wake_parser

    @property
    def buffered(self) -> int:
        """Bytes received but not read yet."""
        return self._buffered

    @property
    def being_read(self) -> bool:
        """Whether the handler has started reading this file."""
        return self._read

    async def get(self) -> bytes | None:
        """The next chunk, ``None`` at the end, or ``MultipartFileError`` if the upload failed."""
        self._read = True
        await anyio.lowlevel.checkpoint()
        while True:
            try:
                return self.get_nowait()
            except anyio.WouldBlock:
                pass
            if self._arrival.is_set():
                self._arrival = anyio.Event()
            await self._arrival.wait()

    def get_nowait(self) -> bytes | None:
        """Like ``get()`` without waiting: ``anyio.WouldBlock`` when no chunk is ready yet."""
        if self._error is not None:
            raise MultipartFileError(self._error) from self._error
        if self._chunks:
            chunk = self._chunks.popleft()
            self._buffered -= len(chunk)
            self._wake_parser()
            return chunk
        if self._finished:
            return None
        raise anyio.WouldBlock

    def qsize(self) -> int:
        """Chunks ready to read."""
        return len(self._chunks)

    def empty(self) -> bool:
        """Whether ``get_nowait()`` would block."""
        return not self._chunks and not self._finished and self._error is None

    def __aiter__(self) -> UploadStream:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.get()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    # --- the parser's side -----------------------------------------------------------------

    def _put(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._arrival.set()

    def _finish(self) -> None:
        self._finished = True
        self._arrival.set()

    def _abort(self, cause: BaseException) -> None:
        """Fail an incomplete upload (a complete one stays readable)."""
        if self._finished or self._error is not None:
            return
        self._error = cause
        self._chunks.clear()
        self._buffered = 0
        self._arrival.set()


class StreamingForm:
    """The fields of a multipart form, waited for by name while they arrive.

    ``field(name)`` returns the first value of text field ``name`` or the file dict, as soon as
    it exists; ``MISSING`` once the form ended without it. Both ``field`` and ``complete`` raise
    the request's ``HTTPError`` if the upload failed (so the handler never runs on a bad form),
    and ``ClientDisconnected`` if the client left.
    """

    def __init__(self, request: Request, wake_parser: Callable[[], None]) -> None:
        self._request = request
        self._wake_parser = wake_parser
        self._wanted: dict[str, anyio.Event] = {}
        self._ended: anyio.Event | None = None
        self.finished = False
        self.error: HTTPError | None = None
        self.client_left = False
        #: Binders waiting right now: while there are any, the parser must not hold back.
        self.waiters = 0

    async def field(self, name: str) -> Any:
        while True:
            self.check()
            value = self._lookup(name)
            if value is not MISSING or self.finished:
                return value
            event = self._wanted.get(name)
            if event is None:
                event = self._wanted[name] = anyio.Event()
            await self._wait(event)

    async def complete(self) -> None:
        while not self.finished:
            if self._ended is None:
                self._ended = anyio.Event()
            await self._wait(self._ended)
        self.check()

    def check(self) -> None:
        """Raise the upload's failure now, if it failed already (before a handler runs)."""
        if self.error is not None:
            raise HTTPError(self.error.status, self.error.body)
        if self.client_left:
            raise ClientDisconnected

    def _lookup(self, name: str) -> Any:
        values = self._request.body_params.get(name)
        if values:
            return values[0]
        return self._request.files.get(name, MISSING)

    async def _wait(self, event: anyio.Event) -> None:
        self.waiters += 1
        self._wake_parser()
        try:
            await event.wait()
        finally:
            self.waiters -= 1

    # --- the parser's side -----------------------------------------------------------------

    def arrived(self, name: str) -> None:
        event = self._wanted.pop(name, None)
        if event is not None:
            event.set()

    def finish(self) -> None:
        """The form ended (whole, failed or abandoned): wake everyone who waits."""
        self.finished = True
        for event in self._wanted.values():
            event.set()
        self._wanted.clear()
        if self._ended is not None:
            self._ended.set()


class _TextField:
    __slots__ = ("chunks", "name", "size")

    def __init__(self, name: str) -> None:
        self.name = name
        self.chunks: list[bytes] = []
        self.size = 0


class MultipartReception:
    """The connection a multipart request's user code runs in (see the module docstring).

    ``async with`` it around middleware, binding and the handler. Entering raises
    ``HTTPError`` for a request that cannot be parsed at all (no boundary, package missing).
    Leaving cancels and awaits the parser, then raises the upload's ``HTTPError`` if it failed
    (replacing the handler's answer), or returns quietly with ``client_left`` true.
    """

    def __init__(self, app: App, request: Request, receive: Receive) -> None:
        self._app = app
        self._request = request
        self._receive = receive
        self._form = StreamingForm(request, self._wake_parser)
        self._user_scope = anyio.CancelScope()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._parser: Any = None
        self._part: UploadStream | _TextField | None = None
        self._parts = 0
        self._files = 0
        self._wakeup = anyio.Event()

    @property
    def client_left(self) -> bool:
        return self._form.client_left

    @property
    def form(self) -> PendingForm:
        return self._form

    @property
    def timed_out(self) -> bool:
        """Always false: a stalled upload is answered through its ``HTTPError(408)``."""
        return False

    async def __aenter__(self) -> MultipartReception:
        self._parser = _open_parser(self._request)
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        task_group.start_soon(self._run)
        self._user_scope.__enter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._user_scope.__exit__(exc_type, exc, tb):  # our own cancellation: client left
            exc_type = exc = tb = None
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        outcome: BaseException | None = None
        try:
            with collapse_excgroups():
                await self._task_group.__aexit__(exc_type, exc, tb)
        except BaseException as error:  # anyio re-raises the user code's exception itself
            outcome = error
        form = self._form
        quiet = outcome is None or isinstance(outcome, _QUIET_WHEN_LEFT)
        if form.client_left and quiet:
            return True
        replaceable = outcome is None or isinstance(outcome, (HTTPError, MultipartFileError))
        if form.error is not None and replaceable:
            raise HTTPError(form.error.status, form.error.body)
        if outcome is None:
            return True
        if outcome is exc:
            return False  # the original exception propagates as it is
        raise outcome

    # --- the parser task ---------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            if not await self._parse_body():
                return
            if await watch_for_disconnect(self._receive, self._user_scope):
                self._form.client_left = True
        finally:
            if isinstance(self._part, UploadStream):  # cancelled: the request is over
                self._part._abort(RuntimeError("Multipart parser stopped"))

    async def _parse_body(self) -> bool:
        """Read and parse the whole body; ``False`` if it failed (the failure is recorded)."""
        try:
            await self._receive_form()
        except HTTPError as error:
            self._fail(error)
        except ClientDisconnected:
            await self._client_gone()
        except MultipartError as error:  # the client's fault: no traceback in the log
            logger.info("Rejected a malformed multipart body: %s", error)
            self._fail(HTTPError(400, _MALFORMED))
        except Exception:
            logger.exception("Failed to parse multipart request body")
            self._fail(HTTPError(400, _MALFORMED))
        else:
            return True
        return False

    async def _receive_form(self) -> None:
        limit = self._app.max_body_size
        size = 0
        while True:
            message = await receive_body_message(self._receive, self._app.body_timeout)
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if limit is not None and size > limit:
                    raise HTTPError(413, _TOO_LARGE)
                await self._feed(chunk)
            if not message.get("more_body", False):
                break
            await anyio.lowlevel.checkpoint()  # a receive() that never blocks must not starve
        self._parser.close()  # raises ParserError if the closing boundary never came
        self._request.body_parsed = True
        self._form.finish()

    async def _feed(self, chunk: bytes) -> None:
        for event in self._parser.parse(chunk):
            if isinstance(event, MultipartSegment):
                self._start_part(event)
            elif event:
                await self._take(event)
            else:
                self._end_part()

    def _start_part(self, segment: Any) -> None:
        self._parts += 1
        limit = self._app.max_multipart_parts
        if limit is not None and self._parts > limit:
            raise HTTPError(413, _TOO_MANY_PARTS)
        name: str = segment.name
        if not segment.filename:  # MicroPie: filename="" (an empty file input) is a text field
            self._part = _TextField(name)
            return
        self._files += 1
        limit = self._app.max_multipart_files
        if limit is not None and self._files > limit:
            raise HTTPError(413, _TOO_MANY_FILES)
        stream = UploadStream(self._wake_parser)
        self._part = stream
        self._request.files[name] = {
            "filename": segment.filename,
            "content_type": segment.header("Content-Type") or "application/octet-stream",
            "content": stream,
        }
        self._form.arrived(name)

    async def _take(self, data: bytes) -> None:
        part = self._part
        if isinstance(part, UploadStream):
            part._put(data)
            await self._hold_back(part)
        elif part is not None:
            part.size += len(data)
            limit = self._app.max_form_field_size
            if limit is not None and part.size > limit:
                raise HTTPError(413, _FIELD_TOO_LARGE)
            part.chunks.append(data)

    def _end_part(self) -> None:
        part, self._part = self._part, None
        if isinstance(part, UploadStream):
            part._finish()
        elif part is not None:
            value = b"".join(part.chunks).decode("utf-8", "replace")
            self._request.body_params.setdefault(part.name, []).append(value)
            self._form.arrived(part.name)

    async def _hold_back(self, stream: UploadStream) -> None:
        """Backpressure: wait while the file's reader is behind, unless binding is waiting."""
        while stream.buffered > FILE_BUFFER_SIZE and not self._form.waiters:
            if self._wakeup.is_set():
                self._wakeup = anyio.Event()
            await self._wakeup.wait()

    def _wake_parser(self) -> None:
        self._wakeup.set()

    def _fail(self, error: HTTPError) -> None:
        if self._form.error is None:
            self._form.error = error
        if isinstance(self._part, UploadStream):
            self._part._abort(error)
        self._form.finish()

    async def _client_gone(self) -> None:
        """The client left mid-body: fail the open file, then cancel the user code."""
        self._form.client_left = True
        part = self._part
        being_read = isinstance(part, UploadStream) and part.being_read
        if isinstance(part, UploadStream):
            part._abort(ClientDisconnected("The client left during the upload"))
        self._form.finish()
        if being_read:  # let the reader see MultipartFileError and clean up first
            await anyio.sleep(DISCONNECT_GRACE)
        self._user_scope.cancel()


def _open_parser(request: Request) -> Any:
    """A push parser for the request's boundary, or the ``HTTPError`` that answers it."""
    if not MULTIPART_INSTALLED:
        logger.error("Multipart form data requires the 'multipart' package")
        raise HTTPError(500, "500 Internal Server Error")
    boundary = parse_boundary(request.headers.get("content-type", ""))
    if boundary is None:
        raise HTTPError(400, _MISSING_BOUNDARY)
    if len(boundary) > MAX_BOUNDARY_LENGTH:
        raise HTTPError(400, _MALFORMED)
    try:
        return PushMultipartParser(boundary.encode("utf-8"))
    except MultipartError:
        raise HTTPError(400, _MALFORMED) from None


def open_multipart(app: App, request: Request, receive: Receive) -> Connection:
    """The connection scope for a multipart request; its parser task owns ``receive()``."""
    return MultipartReception(app, request, receive)
