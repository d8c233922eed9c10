"""Reading request bodies within limits, and parsing JSON and urlencoded forms.

Every limit is enforced while the bytes arrive, never after buffering them: ``Content-Length``
is checked before anything is read (and never trusted for framing), the body is counted as it
streams in, and each ``receive()`` may wait at most ``body_timeout`` seconds (the only defence
against a client that trickles a body: servers have no body timeout of their own).

An urlencoded body is parsed while it arrives (``urlencoded.UrlencodedParser``: each message is
split into fields, each field decoded in bounded steps, the field limits checked at once). A JSON
body is parsed once it is whole; bodies above ``OFFLOAD_THRESHOLD`` in a worker thread, with the
cyclic garbage collector paused (``_paused_gc``). The thread does not spare the event loop the
parse itself: the parser holds the GIL for the whole document, which is why JSON bodies have a
limit of their own (``App.max_json_size``).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

from micropie.core import json_codec
from micropie.core.errors import ClientDisconnected, HTTPError
from micropie.core.types import Receive
from micropie.http.request import Request
from micropie.http.urlencoded import UrlencodedParser

__all__ = [
    "BODY_METHODS",
    "BODY_TIMED_OUT",
    "check_content_length",
    "is_json",
    "parse_body",
    "read_body",
]

#: Methods whose body MicroPie reads and parses before the handler runs.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

#: The answer to a body message that came later than ``body_timeout`` (status 408).
BODY_TIMED_OUT = "408 Request Timeout: Failed to receive body"

#: Bodies larger than this are parsed off the event loop thread (bytes).
OFFLOAD_THRESHOLD = 64 * 1024


def check_content_length(content_length: bytes | None, max_body_size: int | None) -> None:
    """Reject a malformed or oversized ``Content-Length`` before reading a single byte."""
    if content_length is None:
        return
    if not content_length.isdigit():
        raise HTTPError(400, "400 Bad Request: Invalid Content-Length")
    if max_body_size is not None and int(content_length) > max_body_size:
        raise HTTPError(413, "413 Payload Too Large")


class BodyDeadlines(Protocol):
    """Something that cancels the reader when a body message is late (``ConnectionScope``):
    the caller then answers ``BODY_TIMED_OUT``. One deadline moved per message, instead of a
    cancel scope (and a loop timer) per message."""

    def expect_body_within(self, seconds: float | None) -> None: ...


async def read_body(
    receive: Receive,
    *,
    max_size: int | None,
    idle_timeout: float | None,
    deadlines: BodyDeadlines,
    on_chunk: Callable[[bytes], Awaitable[None]] | None = None,
) -> bytes:
    """The whole body, counted against ``max_size`` as it arrives (the limit is inclusive).

    A client that leaves mid-body raises ``ClientDisconnected``: a partial body is never
    mistaken for a complete one. Each ``receive()`` may take ``idle_timeout`` seconds: past it,
    ``deadlines`` cancels the reader and the caller answers 408 (``ConnectionScope.timed_out``).
    ``on_chunk`` is awaited with each chunk as it arrives (a parser that works as data comes).
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        deadlines.expect_body_within(idle_timeout)
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if max_size is not None and size > max_size:
                raise HTTPError(413, "413 Payload Too Large")
            chunks.append(chunk)
            if on_chunk is not None:
                await on_chunk(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_gc_pause_lock = threading.Lock()
_gc_pauses = 0  # parses running with the collector paused
_gc_resume = False  # whether the last of them turns it back on


@contextmanager
def _paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while a large JSON document is built.

    Building a document of many small lists or objects triggers a collection every few hundred
    containers, each one walking the containers made so far, all inside the parser's single
    call, under the GIL, so the event loop waits for all of it. A parsed document has no
    cycles; the collector need not look at it while it is built, nor right after: the last
    parse to finish hands everything the collector has not seen yet (the documents, and
    whatever else was allocated meanwhile) straight to the oldest generation
    (``_skip_young_collections``), instead of a young collection that would walk every
    container of the document once more, holding the GIL again. The collector is
    process-wide: the first of concurrent parses pauses it and the last resumes it, only if it
    was enabled to begin with; while a parse runs the GIL is held by the parser, so no other
    code runs without the collector for long.
    """
    global _gc_pauses, _gc_resume
    with _gc_pause_lock:
        if _gc_pauses == 0:
            _gc_resume = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_pause_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_resume:
                _skip_young_collections()
                gc.enable()


def _skip_young_collections() -> None:
    """Move every object the collector tracks into its oldest generation, in constant time.

    ``gc.freeze()`` then ``gc.unfreeze()`` splice the generations' lists into the permanent
    generation and back into the oldest one, without visiting an object. What was young is
    then looked at only by the next full collection, which the collector runs when enough
    objects have survived its middle generation, as always; a document freed when its request
    ends leaves the lists then, as any object does. An application that froze objects itself
    (``gc.freeze()`` before forking workers, say) keeps them frozen: then a young collection
    runs instead, as it would have at the next allocation.
    """
    if gc.get_freeze_count():
        gc.collect(0)
    else:
        gc.freeze()
        gc.unfreeze()


#: One large JSON parse at a time per event loop (see ``_parse_json``).
_json_parse_slot: RunVar[anyio.CapacityLimiter] = RunVar("micropie_json_parse_slot")


def _json_parse_limiter() -> anyio.CapacityLimiter:
    try:
        return _json_parse_slot.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(1)
        _json_parse_slot.set(limiter)
        return limiter


def _parse_large_json(body: bytes) -> Any:
    with _paused_gc():
        return json_codec.loads(body)


async def _parse_json(body: bytes) -> Any:
    """Parse a JSON body: a small one here, a large one in a worker thread, one at a time.

    Parses in several threads would gain nothing, since each holds the GIL for its whole
    document, and would cost the event loop dearly: each time the loop thread gives up the GIL
    it queues behind every waiting parse. One at a time, the loop waits for one parse at most;
    the others wait their turn on the loop, as any awaiting task does (and a client that leaves
    cancels its wait).
    """
    if len(body) > OFFLOAD_THRESHOLD:
        return await anyio.to_thread.run_sync(
            _parse_large_json, body, limiter=_json_parse_limiter()
        )
    return json_codec.loads(body)


def is_json(media_type: str) -> bool:
    """Whether a body of this media type is JSON; as in MicroPie, any other is a form."""
    return "application/json" in media_type


async def parse_body(
    request: Request, body: bytes, media_type: str, form: UrlencodedParser | None
) -> None:
    """Fill ``request._json`` (``application/json``) or ``request.body_params`` (anything else).

    As in MicroPie, every type but JSON is parsed as an urlencoded form: ``form`` has been fed
    the body as it arrived. Invalid or empty JSON is ``HTTPError(400, "Bad JSON")``.
    """
    request.body = body
    if form is None:
        try:
            request._json = await _parse_json(body)
        except ValueError:
            raise HTTPError(400, "400 Bad Request: Bad JSON") from None
    else:
        request.body_params = await form.close()
    request.body_parsed = True
