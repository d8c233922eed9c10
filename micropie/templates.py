"""Jinja2 templates, rendered asynchronously on either backend.

Templates load from a folder (``templates/`` by default, relative to the working directory at
start-up, as in MicroPie) through Jinja's ``FileSystemLoader``, which refuses names that climb
out of the folder (``../``), so a template name taken from user input cannot read other files.
Loading and compiling happen in a worker thread; rendering uses Jinja's async mode. Without
jinja2 installed, rendering logs an error and returns MicroPie's fallback text.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio.to_thread

try:
    import jinja2

    JINJA_INSTALLED = True
except ImportError:  # pragma: no cover - depends on the environment
    jinja2 = None  # type: ignore[assignment]
    JINJA_INSTALLED = False

__all__ = ["JINJA_INSTALLED", "create_environment", "render"]

logger = logging.getLogger("micropie")

_NOT_INSTALLED = "500 Internal Server Error: Jinja2 not installed."


def create_environment(folder: str) -> Any:
    """A Jinja2 environment for ``folder`` with html/xml autoescaping, or ``None``."""
    if not JINJA_INSTALLED:
        return None
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        autoescape=jinja2.select_autoescape(["html", "xml"]),
        enable_async=True,
    )


async def render(environment: Any, name: str, context: dict[str, Any]) -> str:
    """Render template ``name`` with ``context``; MicroPie's fallback text without jinja2."""
    if not JINJA_INSTALLED or environment is None:
        logger.error("Template rendering requires the 'jinja2' package")
        return _NOT_INSTALLED
    template = await anyio.to_thread.run_sync(environment.get_template, name)
    return str(await template.render_async(**context))
