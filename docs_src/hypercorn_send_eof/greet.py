"""MicroPie's documented ``ws_greet`` example as a micropie App: accept, greet, close at once."""

from __future__ import annotations

from micropie import App, WebSocket


class Greeter(App):
    async def index(self) -> str:
        return "up"

    async def ws_greet(self, ws: WebSocket, name: str = "Guest") -> None:
        await ws.accept()
        await ws.send_text(f"Hello {name}!")
        await ws.close()


app = Greeter()
