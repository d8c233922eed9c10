"""``MultipartForm``: a multipart body parsed on demand, its limits and failures (see the
package docstring), and ``open_form``, which checks a request can be parsed at all."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from micropie.core.errors import ClientDisconnected, HTTPError, MultipartFileError
from micropie.http.bodies import BODY_TIMED_OUT
from micropie.http.multipart._boundary import _MALFORMED, MAX_BOUNDARY_LENGTH, parse_boundary
from micropie.http.multipart._upload import UploadStream
from micropie.routing import MISSING

try:
    from multipart import MultipartError, MultipartSegment, PushMultipartParser

    MULTIPART_INSTALLED = True
except ImportError:  # pragma: no cover - depends on the environment
    MULTIPART_INSTALLED = False

if TYPE_CHECKING:
    from micropie.core.types import Message, Receive
    from micropie.http.request import Request
    from micropie.lifetimes.disconnect import ConnectionScope

logger = logging.getLogger("micropie")

#: Seconds a handler has to clean up after its client left mid-upload; then it is cancelled.
ABANDONED_UPLOAD_GRACE = 0.1
#: Body bytes read between two checkpoints (a ``receive()`` that never blocks must not starve).
CHECKPOINT_EVERY = 4 * 1024 * 1024
#: What one body message adds to its size towards ``CHECKPOINT_EVERY`` (for tiny messages).
MESSAGE_COST = 16 * 1024

_MISSING_BOUNDARY = "400 Bad Request: Missing boundary"
_TOO_LARGE = "413 Payload Too Large"
_FIELD_TOO_LARGE = "413 Payload Too Large: Multipart form field"
_TOO_MANY_PARTS = "413 Payload Too Large: Too many multipart parts"
_TOO_MANY_FILES = "413 Payload Too Large: Too many multipart files"

#: What the user code may end with that a recorded upload failure (or a client gone) replaces.
_REPLACEABLE = (ClientDisconnected, HTTPError, MultipartFileError)


@dataclass(frozen=True, slots=True)
class MultipartLimits:
    """The app's settings a form reads (``body_timeout`` and the limits; ``None`` disables one),
    taken when the request starts."""

    body_timeout: float | None
    max_body_size: int | None
    max_field_size: int | None
    max_parts: int | None
    max_files: int | None


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
    """A multipart body, parsed on demand by whichever task needs more of it (package doc).

    For binding (``routing.PendingForm``): ``field(name)`` returns the first value of text field
    ``name`` or the file dict as soon as it exists, ``MISSING`` once the form ended without it;
    ``complete()`` waits for the whole form. Both raise the upload's ``HTTPError`` if it failed
    (so the handler never runs on a bad form) and ``ClientDisconnected`` if the client left.
    ``answering()`` wraps the user code: when it ends, the form stops and a recorded failure
    decides the answer.
    """

    def __init__(
        self,
        limits: MultipartLimits,
        request: Request,
        receive: Receive,
        connection: ConnectionScope,
        parser: Any,
    ) -> None:
        self._request = request
        self._receive = receive
        self._connection = connection
        self._parser = parser
        self._timeout = limits.body_timeout
        self._max_body_size = limits.max_body_size
        self._max_field_size = limits.max_field_size
        self._max_parts = limits.max_parts
        self._max_files = limits.max_files
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
                self._fail(HTTPError(408, BODY_TIMED_OUT))  # the body deadline cancelled us
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
        self._part, self._sink = stream, stream._put
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
        self._connection.client_gone(ABANDONED_UPLOAD_GRACE)


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
    limits: MultipartLimits, request: Request, receive: Receive, connection: ConnectionScope
) -> MultipartForm:
    """The form of a multipart request that runs in ``connection`` (``HTTPError`` if hopeless).

    Raises ``HTTPError`` for a request that cannot be parsed at all (no boundary, package
    missing); nothing is read until someone needs a field or a file.
    """
    return MultipartForm(limits, request, receive, connection, _open_parser(request))
