"""The request objects handlers see, and the parsing of what arrives in the ASGI scope.

``Request(scope)`` works on its own, with a minimal scope (``type``, ``method``, ``path``,
``headers``; even ``query_string`` may be missing). Headers, cookies and the query string are
parsed on first use, so a request that never looks at them never pays for them.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Generic, Literal, Protocol, TypeVar, cast
from urllib.parse import parse_qs

from micropie.core.types import Scope

_V = TypeVar("_V")

__all__ = [
    "ClientPresence",
    "Headers",
    "MiddlewareHook",
    "Request",
    "WebSocketRequest",
    "attach_connection",
    "current_request",
    "parse_urlencoded",
    "set_by_middleware",
]

#: The request being handled by the current task. There is no default: ``get()`` outside a
#: request raises ``LookupError``, as in MicroPie.
current_request: ContextVar[Request] = ContextVar("current_request")


def parse_urlencoded(text: str) -> dict[str, list[str]]:
    """Parse a query string or urlencoded body as leniently as MicroPie does.

    Blank values and bare keys are dropped, bad ``%`` escapes are kept as they are, invalid
    UTF-8 in escapes becomes U+FFFD. This is ``urllib.parse.parse_qs`` with its defaults.
    """
    if not text:
        return {}
    return parse_qs(text)


class Headers(dict[str, str]):
    """Request headers: lower-case names, case-insensitive lookup.

    A header sent several times is combined into one value, ``cookie`` with ``"; "`` and every
    other header with ``", "`` (RFC 9110 §5.3; MicroPie 0.32 kept only the last one).
    """

    @classmethod
    def from_raw(cls, raw: list[tuple[bytes, bytes]] | Any) -> Headers:
        headers = cls()
        for raw_name, raw_value in raw:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("utf-8", "replace")
            previous = headers.get(name)
            if previous is None:
                dict.__setitem__(headers, name, value)
            else:
                separator = "; " if name == "cookie" else ", "
                dict.__setitem__(headers, name, previous + separator + value)
        return headers

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name.lower() if isinstance(name, str) else name)

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self, name.lower(), default)


def scan_headers(scope: Scope) -> tuple[bytes | None, str, bool]:
    """``(content-length, content-type lower-cased, has a cookie)`` in one pass over the headers.

    Every request needs these three before anything else, so they are read from the raw scope
    without building ``Headers``.
    """
    content_length: bytes | None = None
    media_type = ""
    has_cookie = False
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.lower()
        if name == b"content-length":
            content_length = raw_value
        elif name == b"content-type":
            media_type = raw_value.decode("latin-1").lower()
        elif name == b"cookie":
            has_cookie = True
    return content_length, media_type, has_cookie


def parse_cookies(header: str) -> dict[str, str]:
    """Split a ``Cookie`` header the way MicroPie does: no unquoting, the last duplicate wins."""
    cookies: dict[str, str] = {}
    for pair in header.split(";"):
        name, sep, value = pair.strip().partition("=")
        if sep:
            cookies[name] = value
    return cookies


class ClientPresence(Protocol):
    """What a request asks its connection (``lifetimes.disconnect.ConnectionScope``)."""

    async def is_disconnected(self) -> bool: ...

    async def wait_for_disconnect(self) -> None: ...


class _MadeOnFirstUse(Generic[_V]):
    """A request attribute that is a dict made on first use: what a parent app put in the
    scope under ``key`` for a sub-app, or else an empty dict.

    Most requests never touch most of these, and an open WebSocket keeps its request for as
    long as it lives. A non-data descriptor: once made (or assigned), the value sits in the
    instance's ``__dict__`` and is found there directly, at no cost.
    """

    __slots__ = ("key", "name")

    def __init__(self, key: str) -> None:
        self.key = key
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, request: Request | None, owner: type | None = None) -> _V:
        if request is None:
            raise AttributeError(self.name)
        value = request.scope.get(self.key)
        if value is None:
            value = {}
        request.__dict__[self.name] = value
        return cast(_V, value)


class Request:
    """An HTTP request: what the client sent, plus the session and the parsed body.

    MicroPie attributes: ``scope``, ``method``, ``path_params`` (list), ``query_params`` and
    ``body_params`` (dicts of lists), ``files``, ``session`` (dict), ``headers``. Beyond MicroPie:
    ``path``, ``body`` (the raw bytes, for signature checks and other payloads), ``cookies`` and
    ``client``. Middleware may set ``_route_handler``/``path_params`` to route explicitly and
    ``_subapp``/``_subapp_path`` to hand the request to another ASGI app (``MiddlewareHook``).
    """

    # Defaults shared by every instance until one sets its own (cheaper than setting each).
    body: bytes = b""
    _regenerate_session: bool = False
    _headers: Headers | None = None
    _query_params: dict[str, list[str]] | None = None
    _cookies: dict[str, str] | None = None
    _connection: ClientPresence | None = None

    body_params: _MadeOnFirstUse[dict[str, list[str]]] = _MadeOnFirstUse("body_params")
    files: _MadeOnFirstUse[dict[str, Any]] = _MadeOnFirstUse("files")
    session: _MadeOnFirstUse[dict[str, Any]] = _MadeOnFirstUse("session")
    _json: _MadeOnFirstUse[Any] = _MadeOnFirstUse("json_body")

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.method: str = scope.get("method", "")
        self.path_params: list[str] = []
        self.body_parsed: bool = scope.get("body_parsed", False)

    @property
    def path(self) -> str:
        """The path as the server decoded it (``%2F`` is already a ``/``)."""
        return str(self.scope.get("path", "/"))

    @property
    def state(self) -> dict[str, Any]:
        """What the app's ``lifespan=`` yielded (when the server supports lifespan state)."""
        state = self.scope.get("state")
        return state if isinstance(state, dict) else {}

    @property
    def client(self) -> tuple[str, int] | None:
        """The peer's ``(host, port)``, when the server tells."""
        client = self.scope.get("client")
        return (client[0], client[1]) if client else None

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = Headers.from_raw(self.scope.get("headers", ()))
        return self._headers

    @headers.setter
    def headers(self, value: Headers) -> None:
        self._headers = value

    @property
    def query_params(self) -> dict[str, list[str]]:
        if self._query_params is None:
            raw = self.scope.get("query_string", b"")
            self._query_params = parse_urlencoded(raw.decode("utf-8", "ignore")) if raw else {}
        return self._query_params

    @query_params.setter
    def query_params(self, value: dict[str, list[str]]) -> None:
        self._query_params = value

    @property
    def cookies(self) -> dict[str, str]:
        if self._cookies is None:
            self._cookies = self._sent_cookies() or {}
        return self._cookies

    def _sent_cookies(self) -> dict[str, str] | None:
        """The cookies, or ``None`` when the request has no ``Cookie`` header: then neither
        ``headers`` nor an empty dict is made and kept (sessions look for their cookie on every
        request and every WebSocket connection, which stays open with its request)."""
        if self._cookies is None:
            if self._headers is None and not scan_headers(self.scope)[2]:
                return None
            header = self.headers.get("cookie")
            if not header:
                return None
            self._cookies = parse_cookies(header)
        return self._cookies

    def query(self, name: str, default: Any = None) -> Any:
        """The first value of query parameter ``name``, or ``default``."""
        values = self.query_params.get(name)
        return values[0] if values else default

    def form(self, name: str, default: Any = None) -> Any:
        """The first value of form field ``name`` (urlencoded or multipart text, never JSON)."""
        values = self.body_params.get(name)
        return values[0] if values else default

    def json(self, name: str | None = None, default: Any = None) -> Any:
        """The parsed JSON body (``{}`` when there was none), or one key of a JSON object."""
        if name is None:
            return self._json
        if isinstance(self._json, dict):
            return self._json.get(name, default)
        return default

    def regenerate_session(self) -> None:
        """Give the session a fresh id when it is saved (do this after a login)."""
        self._regenerate_session = True

    async def is_disconnected(self) -> bool:
        """Whether the client has left, without reading anything the handler has not read.

        Cheap enough to poll in a loop (no task per call; it is a checkpoint). Useful in a
        ``@shielded`` handler, or inside a shield, to stop early: in a plain handler the client
        leaving cancels the handler at its next checkpoint, this one included. While a
        multipart upload is still arriving, the upload's reader is what reads from the client:
        this tells what it has seen (the part being read fails when the client leaves).
        """
        return await self._presence().is_disconnected()

    async def wait_for_disconnect(self) -> None:
        """Return when the client has left (for a ``@shielded`` handler that can stop early).

        Reads nothing the handler has not read (see ``is_disconnected``). In a plain handler
        the client leaving cancels the wait itself, with the rest of the handler.
        """
        await self._presence().wait_for_disconnect()

    def _presence(self) -> ClientPresence:
        if self._connection is None:
            raise RuntimeError(
                "is_disconnected() and wait_for_disconnect() work only in an HTTP request the"
                " app is handling"
            )
        return self._connection


def attach_connection(request: Request, connection: ClientPresence) -> None:
    """The connection ``request`` arrived on: the one its disconnect checks ask."""
    request._connection = connection


class WebSocketRequest(Request):
    """The request behind a WebSocket connection (``self.request`` inside a ``ws_`` handler)."""

    def regenerate_session(self) -> None:
        raise RuntimeError("Session regeneration is only available for HTTP requests")


#: The attributes a ``before_request`` (or ``before_websocket``) middleware sets on a request to
#: steer it, under MicroPie's names so that its middleware runs unchanged:
#: ``_route_handler`` names the HTTP handler to call (a ``_private`` one too),
#: ``_ws_route_handler`` the WebSocket one, ``_subapp`` an ASGI app to hand the request to, at
#: ``_subapp_path`` (default ``/``) and mounted under ``_subapp_mount_path`` (optional).
MiddlewareHook = Literal[
    "_route_handler", "_ws_route_handler", "_subapp", "_subapp_path", "_subapp_mount_path"
]


def set_by_middleware(request: Request, hook: MiddlewareHook) -> Any:
    """What middleware set as ``request.<hook>``, or ``None``: the one way the framework reads
    these attributes.

    ``Request`` does not define them (not even as ``None`` class defaults), so ``hasattr`` in
    user middleware still tells whether an earlier middleware set one, as in MicroPie.
    """
    return request.__dict__.get(hook)
