import os
import tempfile
from pathlib import Path

import anyio

from micropie import App, MultipartFileError

UPLOADS = Path(os.environ.get("UPLOAD_DIR") or tempfile.mkdtemp())


class SaveApp(App):
    async def save(self, file):
        name = Path(file["filename"]).name  # never trust a client's path
        if not name:
            return 400, "No file name"
        target = anyio.Path(UPLOADS / name)
        try:
            async with await anyio.open_file(target, "wb") as out:
                while (chunk := await file["content"].get()) is not None:  # MicroPie's way
                    await out.write(chunk)
        except MultipartFileError:
            await target.unlink(missing_ok=True)  # do not keep half a file
            return 400, "The upload did not complete"
        return 201, f"Saved {name}"


app = SaveApp()
