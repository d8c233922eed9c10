"""A micropie App for the CLI serving tests: a route, and a startup handler that must run."""

from __future__ import annotations

import sniffio

from micropie import App


class ServedApp(App):
    started = False

    async def index(self) -> str:
        return f"micropie on {sniffio.current_async_library()}"

    async def ready(self) -> str:
        return "started" if self.started else "not started"


app = ServedApp()


async def _note_startup() -> None:
    app.started = True


app.startup_handlers.append(_note_startup)
