"""Streaming ``multipart/form-data`` uploads (needs the ``multipart`` package, >= 2.0).

Theory of operation
-------------------
A multipart request runs in an ordinary ``ConnectionScope`` (one cancel scope, no task) that
carries a ``MultipartForm``. The form owns ``receive()`` and a ``multipart.PushMultipartParser``
and is parsed *on demand*, in whichever task needs the next piece of it. There is no parser task.

*Pulling* is one step: ``receive()`` one body message (its deadline set just before and cleared
just after), count it against ``max_body_size``, feed it to the parser and dispatch the events:

* a text field is collected (counted against ``max_form_field_size`` across chunks), decoded
  once whole (so UTF-8 split between chunks survives) and appended to
  ``request.body_params[name]``;
* a file part is put in ``request.files[name]`` as soon as its headers are in, with an
  ``UploadStream`` as its ``content``; its data is appended to that stream's buffer;
* the part and file counts are checked against ``max_multipart_parts``/``max_multipart_files``.

Who pulls: binding (``field(name)`` until the name arrived or the form ended, ``complete()``
for ``**kwargs`` and sub-app hand-off) and ``UploadStream.get()`` (it returns a buffered chunk
if there is one, else pulls until its own stream has data or ended). One task pulls at a time:
a task that needs data while another pulls waits for that step to finish (an ``anyio.Event``,
made only when someone waits) and then looks again, pulling itself if it still needs to. Every
step ends in progress, the end of the form or a released flag (a cancelled puller releases it
and wakes the others), so reading several files in any order, from several tasks, cannot
deadlock.

Why no parser task: the parser needs 6.5 µs per 64 KiB chunk. A task that owns ``receive()``
and hands each chunk to the handler's task pays a hand-off, a wake-up and a checkpoint per
chunk (as much again as parsing), and per request a task group, a task and its cancellation
(~140 µs, more than parsing a whole MiB). Pulling in the reader's own task costs a function
call per chunk and nothing per request. It also gives backpressure for free: while nobody
pulls, nothing is read, the server stops reading the socket and the client waits.

Spill: data for a part nobody is reading is kept in memory while someone pulls for a later
part (binding a field that follows an unread file, or reading files out of order). That is the
price of never deadlocking; it is bounded by ``max_body_size`` (which counts the whole body),
so keep that limit when uploads are large and handlers read out of order.

Checkpoints: ``receive()`` may return without yielding (in-process, or a server with messages
queued), and one per chunk would cost a third of the parsing. A step yields once the messages
read since the last checkpoint add up to ``CHECKPOINT_EVERY`` (each counts its size plus
``MESSAGE_COST``, so a flood of tiny messages yields too): a client that never stops sending
cannot starve the event loop, and a handler drains 4 MiB at most between two yields.

Deadlines: ``body_timeout`` applies to each ``receive()`` only while it is pending, through the
connection's body deadline (the app-wide sweeper, or the scope's own deadline without lifespan):
a handler that is slow to read is never timed out. A stall cancels the request's scope (as for
any body) and is answered with 408; the open file is failed with that ``HTTPError(408)``.

Failures (too large → 413, malformed → 400, stalled → 408, client gone) are recorded once and
end the form. An open (incomplete) file's ``get()`` then raises ``MultipartFileError`` whose
``cause`` is the failure (a cut upload never looks complete), binding raises the ``HTTPError``
(so the handler does not run), and when the user code ends the failure replaces its answer, also
when the handler let ``MultipartFileError`` escape. A client that leaves mid-upload: the reader
gets ``MultipartFileError``, nothing is sent, and the request's scope is cancelled
``DISCONNECT_GRACE`` seconds later (a deadline on the scope, no task), so a handler that
ignores it cannot keep running. Once the body is in, the scope watches for the client leaving
as for any request.

When the user code ends (the handler returned, or middleware answered early), the form stops:
the open file fails with ``RuntimeError("Multipart parser stopped")`` and nothing more is read.
Read an upload in the handler, not in a streamed response that runs after it.

Limitations: while nobody pulls (a handler that does not read its file), nobody reads
``receive()``, so a client that leaves is noticed only when the handler reads on or returns
(servers queue the disconnect behind the unread body).

``request.files[name]["filename"]`` is whatever the client sent (``../../etc/passwd``, or with
CR/LF decoded from ``%0D%0A``): never use it as a path or header value without cleaning it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.lowlevel

from .errors import ClientDisconnected, HTTPError, MultipartFileError
from .routing import MISSING

try:
    from multipart import MultipartError, MultipartSegment, PushMultipartParser

    MULTIPART_INSTALLED = True
except ImportError:  # pragma: no cover - depends on the environment
    MULTIPART_INSTALLED = False

if TYPE_CHECKING:
    from .app import App
    from .disconnect import ConnectionScope
    from .request import Request
    from .types import Message, Receive

__all__ = [
    "CHECKPOINT_EVERY",
    "DISCONNECT_GRACE",
    "MULTIPART_INSTALLED",
    "MultipartForm",
    "UploadStream",
    "open_form",
    "parse_boundary",
]

logger = logging.getLogger("micropie")

#: Longest boundary RFC 2046 allows; a longer one is a malformed request.
MAX_BOUNDARY_LENGTH = 70
#: Seconds a handler has to clean up after its client left mid-upload; then it is cancelled.
DISCONNECT_GRACE = 0.1
#: Body bytes read between two checkpoints (a ``receive()`` that never blocks must not starve).
CHECKPOINT_EVERY = 4 * 1024 * 1024
#: What one body message adds to its size towards ``CHECKPOINT_EVERY`` (for tiny messages).
MESSAGE_COST = 16 * 1024

_MISSING_BOUNDARY = "400 Bad Request: Missing boundary"
_MALFORMED = "400 Bad Request: Malformed multipart body"
_TOO_LARGE = "413 Payload Too Large"
_FIELD_TOO_LARGE = "413 Payload Too Large: Multipart form field"
_TOO_MANY_PARTS = "413 Payload Too Large: Too many multipart parts"
_TOO_MANY_FILES = "413 Payload Too Large: Too many multipart files"
_TIMED_OUT = "408 Request Timeout: Failed to receive body"

#: What the user code may end with that a recorded upload failure (or a client gone) replaces.
_REPLACEABLE = (ClientDisconnected, HTTPError, MultipartFileError)


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


class _Source(Protocol):
    """Where an ``UploadStream``'s data comes from: the form, parsed on demand."""

    @property
    def ended(self) -> bool: ...

    async def pull(self) -> None: ...


class UploadStream:
    """An uploaded file's content, readable while the upload is still arriving.

    ``await get()`` returns the next ``bytes`` chunk, ``None`` once the file ended cleanly (and
    on every later call), and raises ``MultipartFileError`` (with ``.cause``) when the upload
    was cut short, too large or malformed: a truncated file never looks complete. ``async for
    chunk in stream`` reads the same chunks. For code written against MicroPie's
    ``asyncio.Queue``, ``get_nowait()`` (``anyio.WouldBlock`` when nothing is buffered),
    ``qsize()`` and ``empty()`` exist too.

    ``get()`` reads the request body itself when nothing is buffered (see the module doc), so
    it is only a checkpoint when it had to wait for the client.
    """

    __slots__ = ("_chunks", "_error", "_finished", "_source")

    def __init__(self, source: _Source) -> None:
        self._chunks: deque[bytes] = deque()
        self._finished = False
        self._error: BaseException | None = None
        self._source = source

    async def get(self) -> bytes | None:
        """The next chunk, ``None`` at the end, or ``MultipartFileError`` if the upload failed."""
        while True:
            if self._chunks:
                return self._chunks.popleft()
            if self._error is not None:
                raise MultipartFileError(self._error) from self._error
            if self._finished:
                return None
            if self._source.ended:  # cannot happen: an ended form closed all its files
                self._abort(RuntimeError("Multipart parser stopped"))
                continue
            await self._source.pull()

    def get_nowait(self) -> bytes | None:
        """Like ``get()`` without reading the body: ``anyio.WouldBlock`` when nothing is ready."""
        if self._error is not None:
            raise MultipartFileError(self._error) from self._error
        if self._chunks:
            return self._chunks.popleft()
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

    # --- the form's side -------------------------------------------------------------------

    def _put(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def _finish(self) -> None:
        self._finished = True

    def _abort(self, cause: BaseException) -> None:
        """Fail an incomplete upload (a complete one stays readable)."""
        if self._finished or self._error is not None:
            return
        self._error = cause
        self._chunks.clear()


class _TextField:
    """A text part being collected, counted against ``max_form_field_size`` across chunks."""

    __slots__ = ("chunks", "limit", "name", "size")

    def __init__(self, name: str, limit: int | None) -> None:
        self.name = name
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.limit is not None and self.size > self.limit:
            raise HTTPError(413, _FIELD_TOO_LARGE)
        self.chunks.append(data)

    def value(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "replace")


def _no_part(data: bytes) -> None:
    """Where data goes between parts (the parser never sends any there)."""


class MultipartForm:
    """A multipart body, parsed on demand by whichever task needs more of it (module doc).

    For binding (``routing.PendingForm``): ``field(name)`` returns the first value of text field
    ``name`` or the file dict as soon as it exists, ``MISSING`` once the form ended without it;
    ``complete()`` waits for the whole form. Both raise the upload's ``HTTPError`` if it failed
    (so the handler never runs on a bad form) and ``ClientDisconnected`` if the client left.
    ``answering()`` wraps the user code: when it ends, the form stops and a recorded failure
    decides the answer.
    """

    def __init__(
        self,
        app: App,
        request: Request,
        receive: Receive,
        connection: ConnectionScope,
        parser: Any,
    ) -> None:
        self._request = request
        self._receive = receive
        self._connection = connection
        self._parser = parser
        self._timeout = app.body_timeout
        self._max_body_size = app.max_body_size
        self._max_field_size = app.max_form_field_size
        self._max_parts = app.max_multipart_parts
        self._max_files = app.max_multipart_files
        self._size = 0
        self._parts = 0
        self._files = 0
        self._budget = CHECKPOINT_EVERY
        self._part: UploadStream | _TextField | None = None
        self._sink: Callable[[bytes], None] = _no_part
        self._pulling = False
        self._progress: anyio.Event | None = None
        #: Whether nothing more will be read: the body is in, the upload failed or was left.
        self.ended = False
        self.error: HTTPError | None = None
        self.client_left = False

    # --- binding ---------------------------------------------------------------------------

    async def field(self, name: str) -> Any:
        while True:
            self.check()
            value = self._lookup(name)
            if value is not MISSING or self.ended:
                return value
            await self.pull()

    async def complete(self) -> None:
        while not self.ended:
            await self.pull()
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

    # --- the end of the user code ----------------------------------------------------------

    def answering(self) -> MultipartForm:
        """``with form.answering():`` around the user code (see ``__exit__``)."""
        return self

    def __enter__(self) -> MultipartForm:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the form; a client gone or an upload failure then decides the answer.

        Replaces a normal end, an ``HTTPError``, a ``MultipartFileError`` or a
        ``ClientDisconnected``: with ``ClientDisconnected`` if the client left (nothing is
        sent), else with the upload's ``HTTPError``. Anything else propagates as it is.
        """
        self.stop()
        if exc is not None and not isinstance(exc, _REPLACEABLE):
            return
        if self.client_left:
            raise ClientDisconnected from None
        if self.error is not None:
            raise HTTPError(self.error.status, self.error.body) from None

    def stop(self) -> None:
        """Read nothing more; the open file fails (its reader must not take it as complete)."""
        if not self.ended:
            self.ended = True
            self._close_part(RuntimeError("Multipart parser stopped"))
        self._wake_waiters()

    # --- pulling ---------------------------------------------------------------------------

    async def pull(self) -> None:
        """Make progress: read and parse one body message, or wait while another task does.

        Failures are recorded, not raised: callers look at the state they wait for again
        (binding raises the ``HTTPError``, an open file's ``get()`` the ``MultipartFileError``).
        Cancellation propagates, and releases the turn for the next task that needs data.
        """
        if self._pulling:
            await self._wait_for_progress()
            return
        if self.ended:
            return
        self._pulling = True
        try:
            if self._timeout is None:
                message = await self._receive()
            else:
                message = await self._receive_in_time(self._timeout)
            if self.ended:  # stopped while we waited (the request is over): drop it
                return
            self._take(message)
            if self._budget < 0 and not self.ended:
                self._budget = CHECKPOINT_EVERY
                await anyio.lowlevel.checkpoint()  # a receive() that never blocks must not starve
        except HTTPError as error:
            self._fail(error)
        except ClientDisconnected:
            self._client_gone()
        except MultipartError as error:  # the client's fault: no traceback in the log
            logger.info("Rejected a malformed multipart body: %s", error)
            self._fail(HTTPError(400, _MALFORMED))
        except Exception:
            logger.exception("Failed to parse multipart request body")
            self._fail(HTTPError(400, _MALFORMED))
        except BaseException:
            if self._connection.cancel_scope.cancel_called and not self.client_left:
                self._fail(HTTPError(408, _TIMED_OUT))  # the body deadline cancelled us
            raise
        finally:
            self._pulling = False
            if self._progress is not None:
                self._wake_waiters()

    async def _wait_for_progress(self) -> None:
        if self._progress is None:
            self._progress = anyio.Event()
        await self._progress.wait()

    def _wake_waiters(self) -> None:
        progress = self._progress
        if progress is not None:
            self._progress = None
            progress.set()

    async def _receive_in_time(self, seconds: float) -> Message:
        """``receive()`` under the connection's body deadline, which is cleared right after."""
        connection = self._connection
        connection.expect_body_within(seconds)
        try:
            return await self._receive()
        finally:
            connection.expect_body_within(None)  # a slow reader is not a stalled client

    def _take(self, message: Message) -> None:
        """Count one body message, feed it to the parser and dispatch the events.

        Hot path: one call per chunk. File data (nearly every event) goes straight to the
        open stream's buffer through ``_sink``.
        """
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            self._size += len(chunk)
            if self._max_body_size is not None and self._size > self._max_body_size:
                raise HTTPError(413, _TOO_LARGE)
            for event in self._parser.parse(chunk):
                if event.__class__ is bytes:
                    self._sink(event)
                elif event is None:
                    self._end_part()
                elif isinstance(event, MultipartSegment):
                    self._start_part(event)
                else:
                    self._sink(event)
        if message.get("more_body", False):
            self._budget -= len(chunk) + MESSAGE_COST
        else:
            self._parser.close()  # raises ParserError if the closing boundary never came
            self._body_complete()

    def _start_part(self, segment: Any) -> None:
        self._parts += 1
        if self._max_parts is not None and self._parts > self._max_parts:
            raise HTTPError(413, _TOO_MANY_PARTS)
        name: str = segment.name
        if not segment.filename:  # MicroPie: filename="" (an empty file input) is a text field
            text = _TextField(name, self._max_field_size)
            self._part, self._sink = text, text.add
            return
        self._files += 1
        if self._max_files is not None and self._files > self._max_files:
            raise HTTPError(413, _TOO_MANY_FILES)
        stream = UploadStream(self)
        self._part, self._sink = stream, stream._chunks.append
        self._request.files[name] = {
            "filename": segment.filename,
            "content_type": segment.header("Content-Type") or "application/octet-stream",
            "content": stream,
        }

    def _end_part(self) -> None:
        part, self._part, self._sink = self._part, None, _no_part
        if isinstance(part, UploadStream):
            part._finish()
        elif part is not None:
            self._request.body_params.setdefault(part.name, []).append(part.value())

    def _body_complete(self) -> None:
        self.ended = True
        self._request.body_parsed = True
        self._connection.start_watching()  # from now on a client that leaves cancels the scope

    def _close_part(self, cause: BaseException) -> None:
        part, self._part, self._sink = self._part, None, _no_part
        if isinstance(part, UploadStream):
            part._abort(cause)

    def _fail(self, error: HTTPError) -> None:
        if self.error is None:
            self.error = error
        self.ended = True
        self._close_part(error)

    def _client_gone(self) -> None:
        """The client left mid-body: fail the open file, cancel the user code after a grace."""
        self.client_left = True
        self.ended = True
        self._close_part(ClientDisconnected("The client left during the upload"))
        self._connection.client_gone(DISCONNECT_GRACE)


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


def open_form(
    app: App, request: Request, receive: Receive, connection: ConnectionScope
) -> MultipartForm:
    """The form of a multipart request that runs in ``connection`` (``HTTPError`` if hopeless).

    Raises ``HTTPError`` for a request that cannot be parsed at all (no boundary, package
    missing); nothing is read until someone needs a field or a file.
    """
    return MultipartForm(app, request, receive, connection, _open_parser(request))
