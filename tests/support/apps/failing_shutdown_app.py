"""An app whose shutdown handler fails, for the graceful shutdown tests."""

from __future__ import annotations

from micropie import App


class Fragile(App):
    async def index(self) -> str:
        return "up"


async def broken_shutdown() -> None:
    raise RuntimeError("flush to disk failed")


app = Fragile()
app.shutdown_handlers.append(broken_shutdown)
