"""A chat room on micropie.broadcast: rooms from the path, nicknames from the session.

One process, in-memory fan-out (nothing to install)::

    python -m micropie examples.chat.app:app --backend trio --port 8000

Several workers sharing Redis (messages and sessions go through Redis)::

    CHAT_REDIS_URL=redis://127.0.0.1:6379/0 \\
        python -m micropie examples.chat.app:app --backend trio --workers 2 --port 8000

Then open http://127.0.0.1:8000/room/lobby in two browser windows. See README.md.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from micropie import App, WebSocket
from micropie.backends.redis import RedisSessionBackend
from micropie.broadcast import Broadcast, BroadcastUnavailable

STATIC = Path(__file__).parent / "static"
ASSETS = {"chat.js": "text/javascript; charset=utf-8", "chat.css": "text/css; charset=utf-8"}
ROOM = re.compile(r"[A-Za-z0-9_-]{1,40}")
MAX_NICK = 24
MAX_TEXT = 500
#: Close code for "try again later" (RFC 6455 registry): Redis is unreachable right now.
TRY_AGAIN_LATER = 1013


class ChatApp(App):
    def __init__(self, broadcast: Broadcast, **settings: Any) -> None:
        super().__init__(**settings)
        self.broadcast = broadcast

    async def index(self) -> tuple[int, str, list[tuple[str, str]]]:
        return self._redirect("/room/lobby")

    async def room(self, name: str = "lobby") -> Any:
        if not ROOM.fullmatch(name):
            return 404, "No such room (letters, digits, - and _ only)"
        return (STATIC / "chat.html").read_text("utf-8")

    async def static(self, filename: str) -> Any:
        if filename not in ASSETS:
            return 404, "Not found"
        return 200, (STATIC / filename).read_text("utf-8"), [("Content-Type", ASSETS[filename])]

    async def nick(self, nick: str = "") -> Any:
        """POST /nick (form field ``nick``): remember the nickname in the session."""
        if self.request.method != "POST":
            return 405, "Use POST"
        nick = " ".join(nick.split())[:MAX_NICK]
        if not nick:
            return 400, {"error": "a nickname cannot be empty"}
        self.request.session["nick"] = nick
        return {"nick": nick}

    async def ws_chat(self, ws: WebSocket, room: str = "lobby") -> None:
        if not ROOM.fullmatch(room):
            await ws.close(1008, "bad room name")  # before accept: the handshake is refused
            return
        nick = ws.request.session.get("nick") or f"guest-{(ws.session_id or '0000')[:4]}"
        channel = f"chat:{room}"
        await ws.accept()
        try:
            # Everything published in the room goes to this client while the block runs, sent
            # by the broadcast's delivery workers (a slow client drops the oldest messages).
            async with self.broadcast.forward(channel, ws, start=False) as forward:
                # In the room now, so the client misses nothing from here on; the welcome goes
                # first, then what was published meanwhile and everything after.
                await ws.send_json(
                    {"type": "welcome", "nick": nick, "room": room, "worker": os.getpid()}
                )
                forward.start()
                await self._say(ws, channel, {"type": "join", "nick": nick})
                await self._relay(ws, channel, nick)
        except BroadcastUnavailable:
            await ws.close(TRY_AGAIN_LATER, "chat is unavailable, try again later")

    async def _relay(self, ws: WebSocket, channel: str, nick: str) -> None:
        """Publish what this client types until it leaves."""
        async for data in ws:
            text = data if isinstance(data, str) else data.decode("utf-8", "replace")
            text = text.strip()[:MAX_TEXT]
            if text:
                await self._say(ws, channel, {"type": "message", "nick": nick, "text": text})

    async def _say(self, ws: WebSocket, channel: str, event: Mapping[str, Any]) -> None:
        try:
            await self.broadcast.publish(channel, json.dumps(event))
        except BroadcastUnavailable:
            # Redis is restarting: tell this client, keep the connection; the broadcast
            # reconnects on its own and delivery resumes.
            await ws.send_json({"type": "error", "text": "message not sent: chat unavailable"})


def create_app(redis_url: str | None = None) -> ChatApp:
    """The chat on Redis when ``redis_url`` is given (messages and sessions), else in memory."""
    broadcast = Broadcast(redis_url or "memory://")
    sessions = RedisSessionBackend(redis_url) if redis_url else None

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(broadcast)
            if sessions is not None:
                await stack.enter_async_context(sessions)
            yield {"broadcast": broadcast}

    # Plain http:// on 127.0.0.1 for the demo; behind HTTPS keep the default (Secure cookies).
    return ChatApp(
        broadcast, session_backend=sessions, lifespan=lifespan, session_cookie_secure=False
    )


app = create_app(os.environ.get("CHAT_REDIS_URL"))
