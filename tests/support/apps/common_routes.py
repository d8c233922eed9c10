"""HTTP routes that several end-to-end apps serve alike: a JSON echo, an upload, a stream."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel


class CommonRoutes:
    """Mixed into an ``App`` subclass: its methods are routes like any other."""

    request: Any  # App.request

    async def echo(self) -> dict[str, Any]:
        return {"json": self.request.json()}

    async def upload(self, title: str, doc: dict[str, Any]) -> dict[str, Any]:
        """The uploaded file's name, size and SHA-256, read chunk by chunk."""
        digest = hashlib.sha256()
        size = 0
        async for chunk in doc["content"]:
            digest.update(chunk)
            size += len(chunk)
        return {
            "title": title,
            "filename": doc["filename"],
            "size": size,
            "sha256": digest.hexdigest(),
        }

    async def count(self, n: int) -> AsyncIterator[bytes]:
        """A stream of ``n`` chunks, ``0;1;...``, with a checkpoint between them."""

        async def numbers() -> AsyncIterator[bytes]:
            for i in range(n):
                yield f"{i};".encode()
                await anyio.lowlevel.checkpoint()

        return numbers()
