"""A tiny pastebin: a form, a redirect after POST, and autoescaped Jinja2 templates.

Run it:  python -m micropie examples.pastebin.app:app
Then:    open http://127.0.0.1:8000/

Pastes live in memory (MicroPie's original used MongoDB). Whatever a visitor pastes is shown
through ``{{ paste_content }}`` in an ``.html`` template, so it is HTML-escaped: a pasted
``<script>`` is displayed, never run.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from micropie import App

TEMPLATES = Path(__file__).parent / "templates"


class PastebinApp(App):
    def __init__(self, **settings: Any) -> None:
        settings.setdefault("template_dir", str(TEMPLATES))
        super().__init__(**settings)
        self.pastes: dict[str, str] = {}

    async def index(self, paste_content: str | None = None) -> Any:
        if self.request.method == "POST":
            if not paste_content:
                return 400, "Nothing to paste"
            paste_id = uuid.uuid4().hex
            self.pastes[paste_id] = paste_content
            return self._redirect(f"/paste/{paste_id}")
        return await self._render_template("index.html")

    async def paste(self, paste_id: str) -> Any:
        content = self.pastes.get(paste_id)
        if content is None:
            return 404, "404: Paste Not Found"
        return await self._render_template("paste.html", paste_id=paste_id, paste_content=content)


app = PastebinApp()
