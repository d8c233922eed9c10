"""``plain_app`` with the documented one-line fix for plain ``hypercorn --worker-class trio``."""

from __future__ import annotations

from micropie.serving import fix_hypercorn_trio_send_eof

fix_hypercorn_trio_send_eof()

from plain_app import app  # noqa: E402

__all__ = ["app"]
