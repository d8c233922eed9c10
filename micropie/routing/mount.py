"""Apps mounted under a path prefix: routing below ``root_path``, and URLs under it.

Behind a proxy that serves the app at ``/api`` (``hypercorn --root-path /api``, uvicorn's
``--root-path``, a sub-app mount), the ASGI scope says so in ``root_path``. Servers differ in
what they put in ``path``: hypercorn and uvicorn pass the whole path (``/api/greet/alice``),
a proxy that strips the prefix leaves only ``/greet/alice``. ``route_path`` follows Starlette's
rule, which works with both: when ``path`` starts with ``root_path`` (followed by ``/`` or
nothing), routing uses what comes after it; otherwise the whole ``path``.

Links and redirects a handler sends must carry the prefix again: ``url_path(request, "/x")``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["route_path", "url_path"]


class _HasScope(Protocol):
    @property
    def scope(self) -> Mapping[str, Any]: ...


def route_path(scope: Mapping[str, Any]) -> str:
    """The path routing sees: ``scope["path"]`` below ``scope["root_path"]`` when it is there.

    ``/api/greet/alice`` under root ``/api`` → ``/greet/alice``; ``/api`` → ``/``;
    ``/apiary`` or ``/greet/alice`` under ``/api`` → unchanged.
    """
    path = str(scope.get("path", "/"))
    root = str(scope.get("root_path") or "").rstrip("/")
    if not root or not path.startswith(root):
        return path
    rest = path[len(root) :]
    if not rest:
        return "/"
    return rest if rest.startswith("/") else path


def url_path(request: _HasScope, path: str) -> str:
    """``path`` (an app path such as ``"/greet/alice"``) as the client must request it: under
    the prefix the app is mounted at (``"/api/greet/alice"`` behind ``--root-path /api``).

    For links, redirects and WebSocket URLs a handler sends::

        return self._redirect(url_path(self.request, "/login"))
    """
    root = str(request.scope.get("root_path") or "").rstrip("/")
    return root + (path if path.startswith("/") else "/" + path)
