"""What the app sees of a connection: its ASGI scope, made the way hypercorn makes it.

For a WebSocket that includes the upgrade request the scope is built from.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import httpx

from micropie.core.types import Scope

#: 2.3: ``send()`` after a disconnect is dropped silently (2.4 would make it raise ``OSError``).
_ASGI = {"version": "3.0", "spec_version": "2.3"}
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _build_scope(
    scope_type: str,
    url: httpx.URL,
    headers: httpx.Headers,
    *,
    client: tuple[str, int],
    root_path: str,
    state: dict[str, Any],
) -> Scope:
    """The connection scope common to ``http`` and ``websocket``.

    ``path`` is the whole (percent-decoded) request path, ``root_path`` only says where the app is
    mounted, as hypercorn does it: request ``/sub/x`` to reach ``/x`` of an app mounted at ``/sub``.
    ``state`` is a shallow copy of the lifespan state, per the ASGI lifespan-state extension.
    """
    return {
        "type": scope_type,
        "asgi": dict(_ASGI),
        "http_version": "1.1",
        "scheme": url.scheme,
        "server": (url.host, url.port or _DEFAULT_PORTS.get(url.scheme, 80)),
        "client": client,
        "root_path": root_path,
        "path": url.path,
        "raw_path": url.raw_path.split(b"?", 1)[0],
        "query_string": url.query,
        "headers": [(key.lower(), value) for key, value in headers.raw],
        "state": dict(state),
    }


def _websocket_request(
    client: httpx.AsyncClient, path: str, subprotocols: list[str] | None, headers: Any
) -> httpx.Request:
    """The handshake as an httpx request: the client's base URL, headers and cookies, plus the
    headers a browser sends to upgrade (so the app's scope looks like hypercorn's)."""
    request = client.build_request("GET", path, headers=headers)
    handshake = {
        "connection": "upgrade",
        "upgrade": "websocket",
        "sec-websocket-version": "13",
    }
    for key, value in handshake.items():
        request.headers[key] = value
    request.headers.setdefault("sec-websocket-key", base64.b64encode(os.urandom(16)).decode())
    if subprotocols:
        request.headers["sec-websocket-protocol"] = ", ".join(subprotocols)
    return request


def _websocket_scope(
    request: httpx.Request,
    offered: list[str],
    *,
    client: tuple[str, int],
    root_path: str,
    state: dict[str, Any],
) -> Scope:
    """The ``websocket`` scope of the handshake ``request``, offering ``offered``
    subprotocols (the other arguments as for ``_build_scope``)."""
    scheme = {"http": "ws", "https": "wss"}.get(request.url.scheme, request.url.scheme)
    scope = _build_scope(
        "websocket",
        request.url.copy_with(scheme=scheme),
        request.headers,
        client=client,
        root_path=root_path,
        state=state,
    )
    scope["subprotocols"] = offered
    return scope
