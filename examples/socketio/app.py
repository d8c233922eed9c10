"""A tiny chat: the page and the history from micropie, the messages through Socket.IO.

``socketio.ASGIApp`` is the outer app: it answers Socket.IO's traffic under ``/socket.io/``
(long polling and WebSocket) and hands everything else to the micropie app, lifespan included.
python-socketio runs on asyncio only, so serve it with hypercorn's asyncio worker:

    python -m micropie examples.socketio.app:app --backend asyncio
    # or: hypercorn examples.socketio.app:app

then open http://127.0.0.1:8000/ in two browser tabs. See README.md beside this file.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import socketio

from micropie import App

#: Messages the HTTP side remembers for ``/history`` (new visitors see the recent ones).
HISTORY_SIZE = 50

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>micropie + Socket.IO chat</title>
<ul id="messages"></ul>
<form id="form"><input id="text" autocomplete="off" autofocus><button>Send</button></form>
<script src="https://cdn.socket.io/4.7.5/socket.io.min.js"></script>
<script>
  const list = document.getElementById("messages");
  const show = (m) => {
    const item = document.createElement("li");
    item.textContent = `${m.name}: ${m.text}`;
    list.appendChild(item);
  };
  fetch("/history").then((r) => r.json()).then((messages) => messages.forEach(show));
  const socket = io({ auth: { name: prompt("Your name?") || "" } });
  socket.on("chat", show);
  document.getElementById("form").onsubmit = (event) => {
    event.preventDefault();
    const input = document.getElementById("text");
    if (input.value) socket.emit("chat", input.value);
    input.value = "";
  };
</script>
"""


class ChatApp(App):
    """The HTTP part: the page, and the recent messages as JSON."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: deque[dict[str, str]] = deque(maxlen=HISTORY_SIZE)

    async def index(self) -> str:
        return PAGE

    async def history(self) -> list[dict[str, str]]:
        return list(self.messages)


def create_app() -> socketio.ASGIApp:
    """A fresh chat: one Socket.IO server and one micropie app sharing the history."""
    web = ChatApp()
    sio = socketio.AsyncServer(async_mode="asgi")

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        name = auth.get("name") if isinstance(auth, dict) else None
        await sio.save_session(sid, {"name": str(name or f"guest-{sid[:4]}")[:40]})

    @sio.on("chat")
    async def relay(sid: str, text: Any) -> None:
        session = await sio.get_session(sid)
        message = {"name": session["name"], "text": str(text)[:1000]}
        web.messages.append(message)
        await sio.emit("chat", message)  # to everyone, the sender included

    return socketio.ASGIApp(sio, other_asgi_app=web)


app = create_app()
