"""``UploadStream``: an uploaded file's content, read while the upload is still arriving."""

from __future__ import annotations

from collections import deque
from typing import Protocol

import anyio

from micropie.core.errors import MultipartFileError


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

    ``get()`` reads the request body itself when nothing is buffered (see the package doc), so
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

    # --- the form's side (``_form`` fills the stream; handlers only read it) ------------------

    def _put(self, chunk: bytes) -> None:
        """A chunk of the file's data arrived (the form's sink for this part)."""
        self._chunks.append(chunk)

    def _finish(self) -> None:
        self._finished = True

    def _abort(self, cause: BaseException) -> None:
        """Fail an incomplete upload (a complete one stays readable)."""
        if self._finished or self._error is not None:
            return
        self._error = cause
        self._chunks.clear()
