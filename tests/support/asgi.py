"""Drive an ASGI app directly, the way MicroPie 0.32's own tests did.

The compat tests call ``app(scope, receive, send)`` with:

* a minimal scope (only ``type``, ``method``, ``path``, ``headers``, ``query_string``),
  like 0.32's ``create_mock_scope``;
* a scripted ``receive``: it hands out the given messages in order and then behaves like a
  client that is waiting for its answer. It blocks until the app has finished its response
  (or sent ``websocket.close``) and only then reports the client gone. Once it has delivered
  a disconnect it repeats it, as servers do;
* a recording ``send`` that keeps a copy of every message, so the tests can compare the exact
  ASGI dicts (no extra keys).

Every call runs under a deadline, so a framework that hangs fails the test instead of the run.

Comparing against the original MicroPie 0.32: 0.32 has no ``__version__`` (micropie has
one), so ``REFERENCE_032`` is true when the suite runs against it. Two things use
it, and nothing else should:

* ``plain_response`` leaves out the ``content-length`` header that our plain responses add
  (``# differs: Content-Length``), so the rest of each assertion is still checked on 0.32;
* ``differs_from_032(*rows)`` marks a test that must fail on 0.32 (a difference documented in
  docs/migration.md, "Every difference") as a strict xfail there; on our framework it is an
  ordinary test.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import pytest

import micropie

Message = dict[str, Any]
Scope = dict[str, Any]
#: A scripted step that is not a message: ``receive()`` awaits it before going on, e.g. to hold
#: the client's next message back until the app has answered (see ``after_sent``).
Gate = Callable[["Connection"], Awaitable[None]]
Header = tuple[bytes, bytes]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]
F = TypeVar("F", bound=Callable[..., Any])

REFERENCE_032: bool = not hasattr(micropie, "__version__")

HTML: Header = (b"Content-Type", b"text/html; charset=utf-8")
JSON: Header = (b"Content-Type", b"application/json")

VALID_SESSION_ID = "00000000-0000-4000-8000-000000000001"
ATTACKER_SESSION_ID = "00000000-0000-4000-8000-000000000002"

#: Upper bound for one ASGI call in these tests; generous so a slow CI machine never flakes,
#: small enough that a hang fails quickly.
DEFAULT_DEADLINE = 5.0


def differs_from_032(*rows: str) -> pytest.MarkDecorator:
    """Mark a test for a deliberate difference from 0.32.

    ``rows`` name the rows of docs/migration.md ("Every difference") that document it, as
    ``"<table heading>: <row>"``, e.g. ``"Routing and binding: ws_index"``. Against 0.32 the
    test is a strict xfail (it must fail there, which proves it can detect the old behaviour);
    against our framework it must pass.
    """
    if not rows:
        raise TypeError("differs_from_032() needs the docs/migration.md row of the difference")
    reason = "differs from 0.32, see docs/migration.md: " + "; ".join(rows)
    return pytest.mark.xfail(REFERENCE_032, reason=reason, strict=True)


def http_scope(
    path: str = "/index",
    method: str = "GET",
    headers: Sequence[Header] | None = None,
    query_string: bytes = b"",
    **extra: Any,
) -> Scope:
    """A minimal HTTP scope, exactly like 0.32's ``create_mock_scope``."""
    return {
        "type": "http",
        "method": method,
        "path": path,
        "headers": list(headers or []),
        "query_string": query_string,
        **extra,
    }


def ws_scope(
    path: str = "/",
    headers: Sequence[Header] | None = None,
    query_string: bytes = b"",
    **extra: Any,
) -> Scope:
    """A minimal WebSocket scope (0.32's ``create_mock_scope(scope_type="websocket")``)."""
    return http_scope(path, "GET", headers, query_string, type="websocket", **extra)


def body(data: bytes, more_body: bool = False) -> Message:
    """One ``http.request`` message."""
    return {"type": "http.request", "body": data, "more_body": more_body}


def cookie_header(session_id: str) -> Header:
    return (b"cookie", f"session_id={session_id}".encode("latin-1"))


def attach(app: Any, name: str | None = None) -> Callable[[F], F]:
    """Attach ``fn`` to ``app`` as a bound instance method, like 0.32's tests do.

    ``@attach(app)`` over ``async def greet(self, ...)`` is
    ``setattr(app, "greet", greet.__get__(app, App))``.
    """

    def decorator(fn: F) -> F:
        setattr(app, name or fn.__name__, fn.__get__(app, type(app)))
        return fn

    return decorator


class Connection:
    """One ASGI call's ``receive`` and ``send``, scripted and recorded."""

    def __init__(self, scope: Scope, messages: Iterable[Message | Gate] = ()) -> None:
        self.scope = scope
        self.script: list[Message | Gate] = list(messages)
        self.sent: list[Message] = []
        #: how many times receive() was called / is still running / was cancelled
        self.receive_calls = 0
        self.receives_pending = 0
        self.receives_cancelled = 0
        self.receive_called = anyio.Event()
        self.finished = anyio.Event()
        self._disconnect: Message | None = None
        self._activity = anyio.Event()

    # -- the ASGI callables -------------------------------------------------------------
    async def receive(self) -> Message:
        self.receive_calls += 1
        self.receives_pending += 1
        self.receive_called.set()
        try:
            await anyio.lowlevel.checkpoint()
            if self._disconnect is not None:
                return dict(self._disconnect)
            while self.script and callable(self.script[0]):
                gate = self.script.pop(0)
                assert callable(gate)
                await gate(self)
            if self.script:
                message = self.script.pop(0)
                assert isinstance(message, dict)
                if message["type"] in ("http.disconnect", "websocket.disconnect"):
                    self._disconnect = message
                return message
            # The client has said everything; it waits for the answer, then leaves.
            await self.finished.wait()
            self._disconnect = self._goodbye()
            return dict(self._disconnect)
        except anyio.get_cancelled_exc_class():
            self.receives_cancelled += 1
            raise
        finally:
            self.receives_pending -= 1

    async def send(self, message: Message) -> None:
        recorded = copy.deepcopy(message)
        self.sent.append(recorded)
        kind = message.get("type")
        if (kind == "http.response.body" and not message.get("more_body", False)) or (
            kind == "websocket.close"
        ):
            self.finished.set()
        self._activity.set()
        self._activity = anyio.Event()
        await anyio.lowlevel.checkpoint()

    async def wait_sent(self, kind: str, count: int = 1) -> None:
        """Wait until the app has sent ``count`` messages of type ``kind``."""
        while len([m for m in self.sent if m["type"] == kind]) < count:
            await self._activity.wait()

    def _goodbye(self) -> Message:
        if self.scope["type"] == "websocket":
            close = next((m for m in self.sent if m["type"] == "websocket.close"), None)
            return {"type": "websocket.disconnect", "code": close["code"] if close else 1000}
        return {"type": "http.disconnect"}

    # -- what the tests read ------------------------------------------------------------
    @property
    def start(self) -> Message:
        """The single ``http.response.start`` message."""
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        assert len(starts) == 1, f"expected one http.response.start, got {self.sent!r}"
        return starts[0]

    @property
    def status(self) -> int:
        return int(self.start["status"])

    @property
    def body(self) -> bytes:
        """All ``http.response.body`` chunks joined."""
        return b"".join(m["body"] for m in self.sent if m["type"] == "http.response.body")

    def header_values(self, name: bytes) -> list[bytes]:
        """Values of response header ``name`` (compared case-insensitively)."""
        return [v for k, v in self.start["headers"] if k.lower() == name.lower()]

    def ws_sent(self, kind: str) -> list[Message]:
        return [m for m in self.sent if m["type"] == kind]

    @property
    def accept(self) -> Message:
        accepts = self.ws_sent("websocket.accept")
        assert len(accepts) == 1, f"expected one websocket.accept, got {self.sent!r}"
        return accepts[0]

    def set_cookie(self, message: Message | None = None) -> bytes:
        """The ``Set-Cookie`` value of the response start (or of ``message``)."""
        headers = (message or self.start)["headers"]
        values = [v for k, v in headers if k == b"Set-Cookie"]
        assert len(values) == 1, f"expected one Set-Cookie header, got {headers!r}"
        return values[0]


def after_sent(kind: str, count: int = 1) -> Gate:
    """A script step: hold the next client message until the app sent ``count`` × ``kind``."""

    async def gate(conn: Connection) -> None:
        await conn.wait_sent(kind, count)

    return gate


def ws_text(text: str) -> Message:
    """A ``websocket.receive`` text frame, shaped as hypercorn sends it."""
    return {"type": "websocket.receive", "text": text, "bytes": None}


def ws_bytes(data: bytes) -> Message:
    """A ``websocket.receive`` binary frame, shaped as hypercorn sends it."""
    return {"type": "websocket.receive", "bytes": data, "text": None}


CONNECT: Message = {"type": "websocket.connect"}


def cookie_session_id(cookie: bytes) -> str:
    """``b"session_id=abc; Path=/; ..."`` → ``"abc"``."""
    first = cookie.decode("latin-1").split(";", 1)[0]
    name, _, value = first.partition("=")
    assert name == "session_id", cookie
    return value


async def run_app(
    app: ASGIApp,
    scope: Scope,
    messages: Iterable[Message | Gate] = (),
    *,
    receive: Callable[[], Awaitable[Message]] | None = None,
    deadline: float = DEFAULT_DEADLINE,
) -> Connection:
    """Call ``app(scope, receive, send)`` once and return the recorded connection.

    ``receive`` replaces the scripted one (for tests that time or block their input).
    """
    conn = Connection(scope, messages)
    with anyio.fail_after(deadline):
        await app(scope, receive or conn.receive, conn.send)
    conn.finished.set()
    return conn


def plain_response(status: int, body: bytes, headers: Sequence[Header] = (HTML,)) -> list[Message]:
    """The exact messages of a non-streamed response.

    Our plain responses carry ``content-length`` as the last header (after the user's headers
    and the default content type); 0.32 sends none.
    """
    expected_headers = list(headers)
    if not REFERENCE_032:  # differs: Content-Length
        expected_headers.append((b"content-length", str(len(body)).encode("ascii")))
    return [
        {"type": "http.response.start", "status": status, "headers": expected_headers},
        {"type": "http.response.body", "body": body, "more_body": False},
    ]


def plain_start(status: int, body: bytes, headers: Sequence[Header] = (HTML,)) -> Message:
    """Just the start message of ``plain_response``."""
    return plain_response(status, body, headers)[0]


def elapsed_since(start: float) -> float:
    return anyio.current_time() - start


class CountingSessionBackend(micropie.InMemorySessionBackend):
    """The in-memory backend, recording every ``load`` and ``save`` (0.32's test helper)."""

    def __init__(self) -> None:
        super().__init__()
        self.load_calls: list[str] = []
        self.save_calls: list[tuple[str, dict[str, Any], float]] = []

    async def load(self, session_id: str) -> dict[str, Any]:
        self.load_calls.append(session_id)
        return await super().load(session_id)

    async def save(self, session_id: str, data: dict[str, Any], timeout: float) -> None:  # noqa: ASYNC109
        self.save_calls.append((session_id, dict(data), timeout))
        await super().save(session_id, data, timeout)


__all__ = [
    "ATTACKER_SESSION_ID",
    "CONNECT",
    "DEFAULT_DEADLINE",
    "HTML",
    "JSON",
    "REFERENCE_032",
    "VALID_SESSION_ID",
    "Connection",
    "CountingSessionBackend",
    "after_sent",
    "attach",
    "body",
    "cookie_header",
    "cookie_session_id",
    "differs_from_032",
    "elapsed_since",
    "http_scope",
    "plain_response",
    "plain_start",
    "run_app",
    "ws_bytes",
    "ws_scope",
    "ws_text",
]
