"""Jinja2 templates, rendered asynchronously on either backend.

Templates load from a folder (``templates/`` by default). The folder is resolved against the
working directory once, when the app is created (so a later ``chdir`` does not move it); the
environment is made on first use (``app.env``, or the first render, which makes it in a worker
thread since that imports jinja2). Templates are read through Jinja's ``FileSystemLoader``,
which refuses names that climb out of the folder (``../x``; an absolute name is looked up
*inside* the folder). So a template name taken from user input can only ever pick a file in the
folder: anything else is ``TemplateNotFound``, which the handler sees as an ordinary exception
(a logged 500).

Loading and compiling touch the disk, so they run in a worker thread; rendering uses Jinja's
async mode on the event loop (it works under asyncio and trio alike). Autoescaping is on for
``.html``, ``.htm`` and ``.xml`` templates. Users may replace ``app.env`` with their own
environment; one created without ``enable_async`` is rendered in a worker thread instead.

Without jinja2 installed, rendering logs one line that says so and raises
``TemplatesNotInstalled``, an ``HTTPError`` the app answers with a real 500 (MicroPie 0.32
returned the text "500 Internal Server Error: Jinja2 not installed." with status 200, so
monitoring saw a success).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

import anyio.to_thread

from micropie.core.errors import HTTPError

#: Whether jinja2 can be imported. It is imported when the first environment is made, not with
#: micropie: jinja2 and markupsafe add memory and start-up time to every worker process (figures
#: in benchmarks/README.md), and most apps never render a template.
JINJA_INSTALLED = importlib.util.find_spec("jinja2") is not None

__all__ = ["JINJA_INSTALLED", "TemplatesNotInstalled", "create_environment", "render"]

logger = logging.getLogger("micropie")

_INSTALL_HINT = "pip install 'micropie-anyio[templates]'"


class TemplatesNotInstalled(HTTPError):
    """A template was rendered without jinja2 installed: answered 500 (the log says why)."""

    def __init__(self) -> None:
        super().__init__(500, "500 Internal Server Error")


def create_environment(folder: str | os.PathLike[str]) -> Any:
    """A Jinja2 environment for ``folder`` (async, html/xml autoescaped), or ``None``.

    ``None`` when jinja2 is not installed; rendering then raises ``TemplatesNotInstalled``.
    """
    if not JINJA_INSTALLED:
        return None
    import jinja2  # on first use (see JINJA_INSTALLED)

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(os.path.abspath(folder)),
        autoescape=jinja2.select_autoescape(["html", "htm", "xml"]),
        enable_async=True,
    )


async def render(environment: Any, name: str, context: dict[str, Any]) -> str:
    """Render template ``name`` with ``context``.

    Raises what Jinja raises (``TemplateNotFound`` for a name outside the folder, syntax and
    undefined-variable errors). Without jinja2: logs one error line and raises
    ``TemplatesNotInstalled`` (a 500 from a handler, with no traceback in the log).
    """
    if not JINJA_INSTALLED or environment is None:
        logger.error(
            "Template %r not rendered: jinja2 is not installed (%s); answering 500",
            name,
            _INSTALL_HINT,
        )
        raise TemplatesNotInstalled
    template = await anyio.to_thread.run_sync(environment.get_template, name)
    if environment.is_async:
        return str(await template.render_async(**context))
    return str(await anyio.to_thread.run_sync(lambda: template.render(**context)))
