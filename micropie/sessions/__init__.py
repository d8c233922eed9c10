"""Cookie sessions: the backend contract, the in-memory backend and the session id policy.

How a session lives through a request (MicroPie 0.32's rules, which users rely on):

* The id comes from the ``session_id`` cookie and must pass the app's validator (canonical
  UUIDv4 by default) before any backend sees it. No valid cookie: an empty session and no
  backend call at all.
* After the handler and ``after_request``, a populated session is saved with the app's
  ``session_timeout``; an empty one whose cookie was valid is deleted (``save(id, {}, 0)``).
* A session that was empty when loaded and is populated now gets a fresh id, so an id planted
  by an attacker is never adopted (fixation defence); ``request.regenerate_session()`` forces a
  fresh id, e.g. after login. The old id is deleted first.
* Error answers never save: a handler that fails does not persist its changes, because the
  handler works on a copy of what the backend stored.
"""

from __future__ import annotations

import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from micropie.core.types import Scope
    from micropie.http.request import Request

__all__ = [
    "SESSION_TIMEOUT",
    "InMemorySessionBackend",
    "SessionBackend",
    "SessionState",
    "carries_session",
    "format_session_cookie",
    "generate_session_id",
    "has_session",
    "load_sent_session",
    "load_session",
    "save_session",
    "validate_session_id",
]

logger = logging.getLogger("micropie")

#: Sliding inactivity timeout of a session, in seconds (8 hours, as in MicroPie).
SESSION_TIMEOUT = 8 * 3600

SessionIdFactory = Callable[[], str]
SessionIdValidator = Callable[[str], "str | None"]


def generate_session_id() -> str:
    """A fresh random session id: a UUIDv4 in canonical form."""
    return str(uuid.uuid4())


def validate_session_id(value: str) -> str | None:
    """Accept a canonical UUIDv4 (upper case is normalised); reject anything else with ``None``."""
    try:
        parsed = uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return None
    if parsed.version != 4 or str(parsed) != value.lower():
        return None
    return str(parsed)


def format_session_cookie(session_id: str, *, secure: bool) -> str:
    """The ``Set-Cookie`` value MicroPie sends, byte for byte (note the trailing ``;``)."""
    attributes = "Path=/; SameSite=Lax; HttpOnly;"
    if secure:
        attributes += " Secure;"
    return f"session_id={session_id}; {attributes}"


class SessionBackend(ABC):
    """Where sessions are stored. Implement both methods; both may raise (→ a logged 500)."""

    @abstractmethod
    async def load(self, session_id: str) -> dict[str, Any]:
        """Return the session stored under ``session_id``, or ``{}``."""

    @abstractmethod
    async def save(self, session_id: str, data: dict[str, Any], timeout: int) -> None:  # noqa: ASYNC109
        """Store ``data`` for ``timeout`` seconds; empty ``data`` or ``timeout <= 0`` deletes."""


class InMemorySessionBackend(SessionBackend):
    """Sessions in a dict of this process, expiring after ``timeout`` seconds of inactivity.

    Good for development and single-process apps; use a shared backend (Redis) with several
    workers. Expired sessions are dropped on access and by a scan at most once a minute.
    ``clock`` is monotonic by default so that wall-clock jumps neither expire nor revive sessions.
    """

    _cleanup_interval = 60.0

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.sessions: dict[str, dict[str, Any]] = {}
        self.last_access: dict[str, float] = {}
        self.timeouts: dict[str, float] = {}
        self._clock = clock
        self._last_cleanup = clock()

    def _expired(self, session_id: str, now: float) -> bool:
        timeout = self.timeouts.get(session_id, SESSION_TIMEOUT)
        return now - self.last_access.get(session_id, now) >= timeout

    def _delete(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)
        self.last_access.pop(session_id, None)
        self.timeouts.pop(session_id, None)

    def _cleanup(self, now: float | None = None, *, force: bool = False) -> None:
        now = self._clock() if now is None else now
        if not force and now - self._last_cleanup < self._cleanup_interval:
            return
        self._last_cleanup = now
        for session_id in [sid for sid in self.sessions if self._expired(sid, now)]:
            self._delete(session_id)

    async def load(self, session_id: str) -> dict[str, Any]:
        now = self._clock()
        self._cleanup(now)
        if session_id not in self.sessions:
            return {}
        if self._expired(session_id, now):
            self._delete(session_id)
            return {}
        self.last_access[session_id] = now
        return dict(self.sessions[session_id])

    async def save(self, session_id: str, data: dict[str, Any], timeout: int) -> None:  # noqa: ASYNC109
        now = self._clock()
        self._cleanup(now)
        if not data or timeout <= 0:
            self._delete(session_id)
            return
        self.sessions[session_id] = dict(data)
        self.last_access[session_id] = now
        self.timeouts[session_id] = timeout


@dataclass(slots=True)
class SessionState:
    """What the framework remembers about one request's session between load and save.

    ``session_id`` is the validated id from the cookie (``None`` when there was none or it was
    rejected); ``was_empty`` records whether the backend had nothing for it, which triggers the
    fixation defence on save.
    """

    backend: SessionBackend
    session_id: str | None = None
    was_empty: bool = True


class SessionSettings(Protocol):
    """The app settings the session functions read (``App`` has them as public attributes)."""

    session_backend: SessionBackend
    session_timeout: int
    session_cookie_secure: bool
    session_id_factory: SessionIdFactory
    session_id_validator: SessionIdValidator | None


def checked_session_id(settings: SessionSettings, value: str | None) -> str | None:
    """Run the app's validator on a client-supplied id; a validator that raises rejects it."""
    if not value:
        return None
    validator = settings.session_id_validator
    if validator is None:
        return value
    try:
        return validator(value)
    except Exception:
        logger.exception("Session ID validator failed")
        return None


def new_session_id(settings: SessionSettings) -> str:
    """Make a fresh id with the app's factory; it must pass the app's own validator."""
    candidate = settings.session_id_factory()
    session_id = checked_session_id(settings, candidate)
    if session_id is None:
        raise RuntimeError("session_id_factory returned a value rejected by session_id_validator")
    return session_id


async def load_session(settings: SessionSettings, request: Request) -> SessionState:
    """Attach the session to ``request`` and return what saving it will need.

    A parent app handing a request to a sub-app passes its ``SessionState`` in the scope, so
    both share one backend and one session (MicroPie 0.32 lost the session there).
    """
    inherited = request.scope.get("micropie.session_state")
    if isinstance(inherited, SessionState):
        return inherited
    state = SessionState(settings.session_backend)
    cookies = request._sent_cookies()
    if cookies:
        state.session_id = checked_session_id(settings, cookies.get("session_id"))
    if "session" in request.scope:
        state.was_empty = not request.session
    elif state.session_id is not None:
        request.session = await state.backend.load(state.session_id) or {}
        state.was_empty = not request.session
    return state


def carries_session(scope: Scope) -> bool:
    """Whether the scope brings a session along (a parent app's, or a test's)."""
    return "session" in scope or "micropie.session_state" in scope


def has_session(request: Request) -> bool:
    """Whether the handler has put anything in ``request.session`` (without making one)."""
    return bool(vars(request).get("session"))


async def load_sent_session(
    settings: SessionSettings, request: Request, has_cookie: bool
) -> SessionState | None:
    """``load_session`` for a request that can have a session: one with a cookie, or one whose
    scope carries a session (``carries_session``). ``None`` for the others, without making
    anything: a WebSocket connection keeps what this returns for as long as it is open.
    """
    if has_cookie or carries_session(request.scope):
        return await load_session(settings, request)
    return None


async def save_session(
    settings: SessionSettings,
    request: Request,
    state: SessionState | None,
    *,
    client_left: bool = False,
) -> str | None:
    """Persist ``request.session`` after a successful response; return a new cookie, if any.

    ``state`` is ``None`` when the request came without a session cookie (nothing was loaded).
    With ``client_left`` (a shielded handler finished after its client left) only a session
    the client already has is saved: one that needs a new cookie is not, since it would never
    reach the client.
    """
    if state is None:
        if client_left:
            return None
        state = SessionState(settings.session_backend)
    old_id = state.session_id
    if client_left and (
        old_id is None or (request.session and (request._regenerate_session or state.was_empty))
    ):
        return None
    if not request.session:
        if old_id is not None:
            await state.backend.save(old_id, {}, 0)
        return None
    session_id = old_id
    if old_id is not None and (request._regenerate_session or state.was_empty):
        await state.backend.save(old_id, {}, 0)
        session_id = None
    cookie = None
    if session_id is None:
        session_id = new_session_id(settings)
        cookie = format_session_cookie(session_id, secure=settings.session_cookie_secure)
        state.session_id = session_id
    await state.backend.save(session_id, request.session, settings.session_timeout)
    state.was_empty = False
    return cookie


async def assign_websocket_session(
    settings: SessionSettings, state: SessionState | None
) -> tuple[str, bool]:
    """The id a WebSocket connection uses, and whether ``accept()`` must send it as a cookie.

    MicroPie 0.32's rules: a cookie can only reach the browser on the handshake response, before
    the handler could say whether it needs a session, so a connection without a valid cookie
    gets a fresh id at once. A valid cookie whose session is unknown is replaced the same way
    (fixation defence). ``state`` is ``None`` when nothing was loaded (``load_sent_session``).
    """
    if state is None:
        return new_session_id(settings), True
    session_id = state.session_id
    if session_id is not None and state.was_empty:
        await state.backend.save(session_id, {}, 0)
        session_id = None
    if session_id is None:
        return new_session_id(settings), True
    return session_id, False


async def save_websocket_session(
    settings: SessionSettings, request: Request, session_id: str, state: SessionState | None
) -> None:
    """After the handler: save the session under the connection's id, or delete it if emptied."""
    backend = state.backend if state is not None else settings.session_backend
    if request.session:
        await backend.save(session_id, request.session, settings.session_timeout)
    elif state is not None and state.session_id is not None:
        await backend.save(session_id, {}, 0)
