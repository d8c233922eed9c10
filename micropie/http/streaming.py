"""Sending a streamed body while watching for the client to leave.

A stream gets its own task group at once (streams are long-lived, so the cost does not
matter): a watcher task reads ``receive()`` and, when the client leaves, cancels the stream.
Then the body's iterator is closed, so an async generator's ``finally`` runs (``aclose()`` is
awaited, with a bounded grace period) and a sync generator's ``close()`` runs in its worker
thread. Sync iterables are advanced with ``anyio.to_thread`` so that a blocking ``next()`` never
stalls the event loop.

A body that raises mid-stream is logged once and the response is left unfinished (no final
empty chunk), so the client sees a broken stream rather than a clean but truncated end. A
``send()`` that fails means the client is gone: the stream ends as if it had said so (DEBUG log).

A ``HEAD`` request gets the stream's status and headers at once and no body: the body is closed
without being advanced (``answer_head``), so an endless event stream costs a HEAD nothing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from micropie.core.concurrency import collapse_excgroups
from micropie.core.errors import ClientDisconnected, is_send_failure
from micropie.core.types import Message, RawHeaders, Receive, Send
from micropie.lifetimes.disconnect import watch_for_disconnect

__all__ = ["CLOSE_GRACE", "answer_head", "iterate", "send_stream"]

logger = logging.getLogger("micropie")

#: Seconds an async generator's cleanup may take after its client left.
CLOSE_GRACE = 5.0

_EXHAUSTED: Any = object()


def _encode_chunk(chunk: Any) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, str):
        return chunk.encode("utf-8")
    if isinstance(chunk, bytearray | memoryview):
        return bytes(chunk)
    raise TypeError(f"a streamed chunk must be str or bytes, not {type(chunk).__name__}")


async def iterate(body: Any) -> AsyncGenerator[Any, None]:
    """Iterate an async or sync iterable; sync ``next()`` runs in a worker thread."""
    if hasattr(body, "__aiter__"):
        async for chunk in body:
            yield chunk
        return
    iterator: Iterator[Any] = iter(body)
    while True:
        chunk = await anyio.to_thread.run_sync(next, iterator, _EXHAUSTED)
        if chunk is _EXHAUSTED:
            return
        yield chunk


async def _close(body: Any) -> None:
    """Close the body's generator so its ``finally`` runs, whatever ended the stream."""
    with anyio.move_on_after(CLOSE_GRACE, shield=True):
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()
            return
        close = getattr(body, "close", None)
        if close is not None:
            await anyio.to_thread.run_sync(close)


async def _with_keepalive(
    body: Any, interval: float, comment: bytes, task_group: anyio.abc.TaskGroup
) -> AsyncGenerator[Any, None]:
    """The body's chunks, with ``comment`` after every ``interval`` seconds of silence.

    The body is iterated by a producer task in the stream's task group and handed over through
    an unbuffered stream, so a slow client still holds the producer back (backpressure).
    """
    sender, receiver = anyio.create_memory_object_stream[Any](0)
    failures: list[Exception] = []

    async def produce() -> None:
        async with sender:
            try:
                async for chunk in iterate(body):
                    await sender.send(chunk)
            except Exception as error:
                failures.append(error)

    task_group.start_soon(produce)
    with receiver:
        while True:
            chunk: Any = comment
            with anyio.move_on_after(interval):
                try:
                    chunk = await receiver.receive()
                except anyio.EndOfStream:
                    if failures:
                        raise failures[0] from None
                    return
            yield chunk


async def _send(send: Send, message: Message) -> None:
    """``send(message)``; a failure that means the client is gone is ``ClientDisconnected``."""
    try:
        await send(message)
    except Exception as error:
        if is_send_failure(error):
            raise ClientDisconnected from error
        raise


async def _send_chunks(send: Send, body: Any, task_group: anyio.abc.TaskGroup) -> None:
    keepalive = getattr(body, "keepalive", None)
    if keepalive is None:
        chunks = iterate(body)
    else:
        chunks = _with_keepalive(body, keepalive[0], keepalive[1], task_group)
    try:
        async for chunk in chunks:
            data = _encode_chunk(chunk)
            if data:
                await _send(send, {"type": "http.response.body", "body": data, "more_body": True})
    finally:
        await chunks.aclose()


async def _end_on(server_stopping: anyio.Event, sending: anyio.CancelScope) -> None:
    await server_stopping.wait()
    sending.cancel()


async def send_stream(
    send: Send,
    receive: Receive,
    status: int,
    headers: RawHeaders,
    body: Any,
    path: str,
    server_stopping: anyio.Event | None = None,
) -> None:
    """Send ``body`` chunk by chunk; stop at once when the client leaves.

    When ``server_stopping`` is set (graceful shutdown), the stream ends cleanly instead: the
    body is closed and the response finished, so that an ``EventSource`` reconnects later.
    """
    with collapse_excgroups():
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(watch_for_disconnect, receive, task_group.cancel_scope)
            try:
                await _send(
                    send, {"type": "http.response.start", "status": status, "headers": headers}
                )
                # The producers (keep-alive, shutdown watch) end before the body is closed: a
                # generator cannot be closed while another task is still iterating it.
                with collapse_excgroups():
                    async with anyio.create_task_group() as producers:
                        if server_stopping is not None:
                            producers.start_soon(_end_on, server_stopping, producers.cancel_scope)
                        await _send_chunks(send, body, producers)
                        producers.cancel_scope.cancel()
                await _send(send, {"type": "http.response.body", "body": b"", "more_body": False})
            except ClientDisconnected as gone:
                logger.debug("The client left while %s was streamed: %r", path, gone.__cause__)
            except Exception:
                logger.exception("Streaming response for %s failed mid-stream", path)
            finally:
                await _close(body)
                task_group.cancel_scope.cancel()


async def answer_head(send: Send, status: int, headers: RawHeaders, body: Any) -> None:
    """Answer ``HEAD`` for a streamed body: its status and headers, no body, the body closed.

    The body is never advanced: what a generator would yield is no part of a ``HEAD`` answer,
    and an endless one would hold the connection forever. It is closed all the same, so a
    generator that the handler already started runs its ``finally`` now.
    """
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        await _close(body)
