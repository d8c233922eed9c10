"""Streaming responses: an async generator, and a video (or any file) with Range requests.

Run it:  MEDIA_PATH=video.mp4 python -m micropie examples.streaming.app:app
Then:    curl -N http://127.0.0.1:8000/slow_stream
         curl -r 0-99 http://127.0.0.1:8000/stream -o first-100-bytes

A handler returns an async generator and each item is sent as it is produced. When the client
leaves, the generator is closed (its ``finally`` runs) and nothing keeps running. File reads go
through ``anyio.open_file`` (a worker thread), so a slow disk never blocks the event loop.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import AsyncIterator
from typing import Any

import anyio

from micropie import App

CHUNK_SIZE = 1024 * 1024

PAGE = """<html><body><center>
  <video width="640" height="360" controls><source src="/stream" type="video/mp4"></video>
</center></body></html>"""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (inclusive) for a single ``bytes=`` range, or ``None`` for all of it."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[len("bytes=") :].partition("-")
    try:
        if not first:  # "bytes=-N": the last N bytes
            start, end = max(size - int(last), 0), size - 1
        else:
            start, end = int(first), int(last) if last else size - 1
    except ValueError:
        return None
    if start > end or start >= size:
        return None
    return start, min(end, size - 1)


async def read_file(path: str, start: int, end: int) -> AsyncIterator[bytes]:
    """The bytes ``start``..``end`` of ``path``, a chunk at a time."""
    async with await anyio.open_file(path, "rb") as media:
        await media.seek(start)
        remaining = end - start + 1
        while remaining > 0:
            data = await media.read(min(CHUNK_SIZE, remaining))
            if not data:
                break
            remaining -= len(data)
            yield data


class StreamingApp(App):
    def __init__(self, media_path: str = "video.mp4", **settings: Any) -> None:
        super().__init__(**settings)
        self.media_path = media_path

    def index(self) -> str:
        return PAGE

    async def slow_stream(self, delay: float = 1.0) -> AsyncIterator[str]:
        async def chunks() -> AsyncIterator[str]:
            for i in range(1, 6):
                yield f"Chunk {i} "
                await anyio.sleep(float(delay))

        return chunks()

    async def stream(self) -> tuple[int, Any, list[tuple[str, str]]]:
        try:
            size = (await anyio.Path(self.media_path).stat()).st_size
        except FileNotFoundError:
            return 404, "No media", []
        media_type = mimetypes.guess_type(self.media_path)[0] or "application/octet-stream"
        headers = [("Accept-Ranges", "bytes"), ("Content-Type", media_type)]
        wanted = parse_range(self.request.headers.get("range"), size)
        if wanted is None:
            start, end, status = 0, size - 1, 200
        else:
            (start, end), status = wanted, 206
            headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
        headers.append(("Content-Length", str(end - start + 1)))
        return status, read_file(self.media_path, start, end), headers


app = StreamingApp(os.environ.get("MEDIA_PATH", "video.mp4"))
