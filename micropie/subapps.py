"""Handing a request over to another ASGI app (MicroPie's ``_subapp`` middleware hook).

A ``before_request`` that sets ``request._subapp`` (an ASGI app) and ``request._subapp_path``
(and optionally ``request._subapp_mount_path``) hands the request over. The sub-app sees the
parsed body (scope keys ``body_params``, ``json_body``, ``files``, ``body_parsed``), the raw
body once through ``receive()``, and shares the parent's session and session backend, so a
micropie sub-app saves the session where the parent loads it (MicroPie 0.32 lost it).
"""

from __future__ import annotations

from typing import Any

from micropie.core.types import ASGIApp, Message, Receive, Send
from micropie.http.request import Request, set_by_middleware
from micropie.sessions import SessionState

__all__ = ["hand_over"]


def _body_once(request: Request, receive: Receive) -> Receive:
    """``receive`` for the sub-app: the body already read, then the real connection's events."""
    pending: list[Message] = []
    if request.body_parsed:
        pending.append({"type": "http.request", "body": request.body, "more_body": False})

    async def sub_receive() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return sub_receive


async def hand_over(
    sub_app: ASGIApp, request: Request, session: SessionState, receive: Receive, send: Send
) -> None:
    """Call ``sub_app`` with the request's scope rewritten for it and the parent's ``session``
    (the state the parent loaded, or a fresh one on the parent's backend)."""
    scope: dict[str, Any] = dict(request.scope)
    path = str(set_by_middleware(request, "_subapp_path") or "/")
    scope["path"] = path if path.startswith("/") else "/" + path
    scope["raw_path"] = scope["path"].encode("utf-8")
    mount = set_by_middleware(request, "_subapp_mount_path")
    if mount:
        scope["root_path"] = scope.get("root_path", "") + "/" + str(mount).strip("/")
    scope.update(
        body_params=request.body_params,
        body_parsed=request.body_parsed,
        json_body=request._json,
        files=request.files,
        session=request.session,
    )
    scope["micropie.session_state"] = session
    await sub_app(scope, _body_once(request, receive), send)
