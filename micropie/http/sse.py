"""Server-sent events: formatting, ids, retry hints and keep-alive comments.

Return ``sse(generator)`` from a handler (or ``(200, EventStream(generator), headers)``)::

    async def clock(self):
        async def ticks():
            n = 0
            while True:
                yield ServerSentEvent({"tick": n}, event="tick", id=str(n))
                n += 1
                await anyio.sleep(1)
        return sse(ticks(), ping=15)

Each item the generator yields becomes one event: a ``ServerSentEvent``, a ``str`` (its lines
become ``data:`` lines), or a ``dict``/``list`` (sent as JSON). While the generator is quiet, a
comment line is sent every ``ping`` seconds so that proxies keep the connection open. When the
client leaves, the generator is closed at once: its ``finally`` blocks run.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Iterable
from dataclasses import dataclass
from typing import Any

from micropie.core import json_codec
from micropie.http.streaming import iterate

__all__ = ["EventStream", "ServerSentEvent", "sse"]

#: Seconds of silence after which a keep-alive comment is sent (sse-starlette uses 15 too).
DEFAULT_PING_INTERVAL = 15.0


def _single_line(name: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"an SSE {name} cannot contain a line break")
    return value


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One event. ``data`` may be text (several lines are fine), a dict or a list (JSON)."""

    data: Any = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comment: str | None = None

    def encode(self) -> bytes:
        lines: list[str] = []
        if self.comment is not None:
            lines += [f": {line}" for line in self.comment.splitlines() or [""]]
        if self.event is not None:
            lines.append(f"event: {_single_line('event', self.event)}")
        if self.id is not None:
            if "\0" in self.id:
                raise ValueError("an SSE id cannot contain NUL")
            lines.append(f"id: {_single_line('id', self.id)}")
        if self.retry is not None:
            lines.append(f"retry: {int(self.retry)}")
        if self.data is not None:
            text = self.data if isinstance(self.data, str) else json_codec.dumps(self.data)
            lines += [f"data: {line}" for line in text.splitlines() or [""]]
        return ("\n".join(lines) + "\n\n").encode("utf-8")


def _event_bytes(item: Any) -> bytes:
    if isinstance(item, ServerSentEvent):
        return item.encode()
    if isinstance(item, bytes):
        return item
    return ServerSentEvent(item).encode()


class EventStream:
    """A ``text/event-stream`` body: formats what ``source`` yields, with keep-alive pings."""

    def __init__(
        self, source: AsyncIterable[Any] | Iterable[Any], *, ping: float | None = None
    ) -> None:
        self.source = source
        interval = DEFAULT_PING_INTERVAL if ping is None else ping
        #: ``(seconds, comment)`` read by the streaming code: what to send after silence.
        self.keepalive = (interval, b": ping\n\n") if interval > 0 else None

    async def __aiter__(self) -> AsyncGenerator[bytes, None]:
        async for item in iterate(self.source):  # sync sources advance in a worker thread
            yield _event_bytes(item)

    async def aclose(self) -> None:
        """Close the source generator so that its ``finally`` blocks run."""
        aclose = getattr(self.source, "aclose", None)
        if aclose is not None:
            await aclose()
            return
        close = getattr(self.source, "close", None)
        if close is not None:
            close()


def sse(
    source: AsyncIterable[Any] | Iterable[Any],
    *,
    ping: float | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> tuple[int, EventStream, list[tuple[str, str]]]:
    """A handler result that streams ``source`` as server-sent events."""
    return (
        200,
        EventStream(source, ping=ping),
        [
            ("Content-Type", "text/event-stream; charset=utf-8"),
            ("Cache-Control", "no-cache"),
            ("X-Accel-Buffering", "no"),
            *headers,
        ],
    )
