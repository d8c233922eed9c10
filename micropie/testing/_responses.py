"""The ``httpx.Response`` and body streams the transport hands back to httpx."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from types import AsyncGeneratorType
from typing import Any, TypeVar

import httpx

_T = TypeVar("_T")


class _ResponseStream(httpx.AsyncByteStream):
    """The response body as httpx reads it; closing it early is the client disconnecting.

    A plain async iterator, not an async generator: nothing for trio to find abandoned.
    ``read_chunk`` gives the next chunk (``None`` at the end), ``close`` ends the exchange;
    both come from the transport (``_http``), which this module does not import.
    """

    def __init__(
        self,
        read_chunk: Callable[[], Awaitable[bytes | None]],
        close: Callable[[], Awaitable[None]],
    ) -> None:
        self._read_chunk = read_chunk
        self._close = close

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._read_chunk()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        await self._close()


class _BufferedStream(httpx.AsyncByteStream):
    """A body read in full already (outside ``async with``), as one chunk."""

    def __init__(self, body: bytes) -> None:
        self._body: bytes | None = body

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        body, self._body = self._body, None
        if not body:
            raise StopAsyncIteration
        return body


class _DirectStream(httpx.AsyncByteStream):
    """Iterates the body itself, closes through the stream httpx wrapped around it."""

    def __init__(self, body: httpx.AsyncByteStream, wrapper: httpx.AsyncByteStream) -> None:
        self._body = body
        self._wrapper = wrapper

    def __aiter__(self) -> AsyncIterator[bytes]:
        return aiter(self._body)

    async def aclose(self) -> None:
        await self._wrapper.aclose()


class _TestResponse(httpx.Response):
    """An ``httpx.Response`` whose body iterators may be left early, on trio too.

    httpx reads a body through a chain of async generators (``aiter_lines`` → ``aiter_text`` →
    ``aiter_bytes`` → ``aiter_raw`` → the client's ``BoundAsyncStream``). Leaving an ``async for``
    over one of them early abandons the chain, and trio warns (``ResourceWarning``) about each
    abandoned generator when it is garbage collected. This response keeps the generators it
    hands out and closes them when it is closed, and lets ``aiter_raw`` read the body directly
    rather than through the client's generator.
    """

    def __init__(
        self, status_code: int, headers: list[tuple[bytes, bytes]], body: httpx.AsyncByteStream
    ) -> None:
        self._body = body
        self._iterators: list[AsyncGenerator[Any, None]] = []
        super().__init__(status_code, headers=headers, stream=body)

    @property
    def stream(self) -> httpx.SyncByteStream | httpx.AsyncByteStream:
        return self._stream

    @stream.setter
    def stream(self, stream: httpx.SyncByteStream | httpx.AsyncByteStream) -> None:
        if stream is not self._body and isinstance(stream, httpx.AsyncByteStream):
            stream = _DirectStream(self._body, stream)
        self._stream = stream

    def _track(self, iterator: AsyncIterator[_T]) -> AsyncIterator[_T]:
        if isinstance(iterator, AsyncGeneratorType):
            self._iterators.append(iterator)
        return iterator

    def aiter_raw(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        return self._track(super().aiter_raw(chunk_size))

    def aiter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        return self._track(super().aiter_bytes(chunk_size))

    def aiter_text(self, chunk_size: int | None = None) -> AsyncIterator[str]:
        return self._track(super().aiter_text(chunk_size))

    def aiter_lines(self) -> AsyncIterator[str]:
        return self._track(super().aiter_lines())

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            # Outermost first; skip those on the stack right now (aiter_raw closes the response
            # when the body ends, from inside the chain): they are finishing anyway.
            for iterator in reversed(self._iterators):
                if not iterator.ag_running:
                    await iterator.aclose()
