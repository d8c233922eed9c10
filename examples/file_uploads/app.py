"""Streaming file uploads to disk: the handler writes each chunk as it arrives.

Run it:  python -m micropie examples.file_uploads.app:app --backend trio
Then:    curl -F "file=@some.bin" http://127.0.0.1:8000/upload

What it shows:

* ``file["content"]`` is read while the upload is still arriving (``async for chunk in ...``),
  and the framework stops reading from the client while this handler is behind
  (backpressure), so memory stays flat however large the file is.
* Disk writes go through ``anyio.open_file`` (a worker thread): the event loop never blocks.
* The client's file name is untrusted input (``../../etc/passwd``): only its last component
  is used, and hidden or empty names are refused.
* The file is written under a temporary name and renamed only when complete. An upload that
  fails (client gone, too large, truncated) raises ``MultipartFileError``: the partial file is
  removed, and the framework answers with the real cause (413, 400, or nothing at all).
"""

from __future__ import annotations

import os
from typing import Any

import anyio

from micropie import App, MultipartFileError

#: Largest accepted request (the whole multipart body).
MAX_UPLOAD = 100 * 1024 * 1024

FORM = """<form action="/upload" method="post" enctype="multipart/form-data">
  <input type="file" name="file" required>
  <input type="submit" value="Upload">
</form>"""


def safe_name(filename: str) -> str | None:
    """The last path component of a client's file name, or ``None`` if it is unusable."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not name or name.startswith(".") or any(ord(c) < 32 for c in name):
        return None
    return name


class UploadApp(App):
    def __init__(self, upload_dir: str | os.PathLike[str] = "uploads", **settings: Any) -> None:
        super().__init__(**settings)
        self.upload_dir = anyio.Path(upload_dir)

    async def index(self) -> str:
        return FORM

    async def upload(self, file: dict[str, Any]) -> tuple[int, str]:
        name = safe_name(file["filename"])
        if name is None:
            return 400, "Bad file name"
        await self.upload_dir.mkdir(parents=True, exist_ok=True)
        target = self.upload_dir / name
        partial = self.upload_dir / f".{name}.part"
        try:
            size = await self._save(file["content"], partial)
        except MultipartFileError:
            await partial.unlink(missing_ok=True)
            return 400, "Upload did not complete"  # the framework answers the real cause
        except BaseException:  # cancelled (the client left) or a disk error
            with anyio.CancelScope(shield=True):
                await partial.unlink(missing_ok=True)
            raise
        await partial.rename(target)
        return 200, f"Uploaded {name} ({size} bytes)"

    @staticmethod
    async def _save(content: Any, path: anyio.Path) -> int:
        size = 0
        async with await anyio.open_file(path, "wb") as out:
            async for chunk in content:
                await out.write(chunk)
                size += len(chunk)
        return size


app = UploadApp(os.environ.get("UPLOAD_DIR", "uploads"), max_body_size=MAX_UPLOAD)
