"""Loading the app that ``python -m micropie APP`` names: in the CLI and in every worker.

Apart from the command line so that the supervisor's workers (``serving.supervisor``) can load
the app without importing ``micropie.__main__``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, cast

from micropie.core.types import ASGIApp

__all__ = ["AppLoadError", "load_app"]


class AppLoadError(Exception):
    """The APP argument does not name an importable ASGI app."""


def load_app(target: str) -> ASGIApp:
    """Import MODULE:ATTRIBUTE (here, and in every worker process of the supervisor).

    Raises ``AppLoadError`` when it names no module, no attribute or nothing callable.
    """
    module_name, _, attribute = target.partition(":")
    attribute = attribute or "app"
    path = Path(module_name)
    if path.suffix == ".py" or path.is_file():
        sys.path.insert(0, str(path.resolve().parent))
        module_name = path.stem
    else:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name or module_name.startswith(f"{exc.name}."):
            raise AppLoadError(f"Cannot load {target!r}: no module named {exc.name!r}") from exc
        raise
    app: Any = module
    for name in attribute.split("."):
        try:
            app = getattr(app, name)
        except AttributeError:
            raise AppLoadError(f"Cannot load {target!r}: no attribute {attribute!r}") from None
    if not callable(app):
        raise AppLoadError(f"Cannot load {target!r}: {attribute!r} is not an ASGI app")
    return cast(ASGIApp, app)
