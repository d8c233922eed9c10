"""Serving static files from a folder, without ever serving anything outside it.

Run it:  python -m micropie examples.static_content.app:app
Then:    curl http://127.0.0.1:8000/static/hello.txt

``/static/css/site.css`` calls ``static("css", "site.css")``. The requested path is resolved
(symlinks and ``..`` included) and must stay inside the folder, or the answer is 403; a
missing file is 404. Files are streamed in chunks through ``anyio.open_file`` (a worker thread),
so neither memory nor the event loop suffers for large files.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio

from micropie import App

CHUNK_SIZE = 64 * 1024
STATIC_DIR = Path(__file__).parent / "static"


async def read_file(path: anyio.Path) -> AsyncIterator[bytes]:
    async with await path.open("rb") as source:
        while chunk := await source.read(CHUNK_SIZE):
            yield chunk


class StaticApp(App):
    def __init__(self, static_dir: str | os.PathLike[str] = STATIC_DIR, **settings: Any) -> None:
        super().__init__(**settings)
        self.static_dir = Path(static_dir).resolve()

    async def index(self) -> str:
        return '<link rel="stylesheet" href="/static/css/site.css"><p>Hello, World!</p>'

    async def static(self, *parts: str) -> tuple[int, Any, list[tuple[str, str]]]:
        path = anyio.Path(self.static_dir.joinpath(*parts))
        try:
            resolved = await path.resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            return 404, "Not Found", []
        except (OSError, RuntimeError, ValueError):  # symlink loops, NUL bytes
            return 403, "Forbidden", []
        if not Path(resolved).is_relative_to(self.static_dir):
            return 403, "Forbidden", []
        if not await resolved.is_file():
            return 404, "Not Found", []
        media_type = mimetypes.guess_type(str(resolved))[0] or "application/octet-stream"
        return 200, read_file(resolved), [("Content-Type", media_type)]


app = StaticApp()
