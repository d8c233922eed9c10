"""MicroPie 0.32 compatibility: HTTP sessions (docs/guides/sessions.md).

Ported from 0.32's ``TestSession`` and the session half of ``TestFastPaths``. Backend internals
(``last_access``, ``timeouts``, ``_cleanup``, ``_parse_cookies``) are private and not tested;
``InMemorySessionBackend.sessions`` is a supported hook.
"""

from __future__ import annotations

import uuid

import pytest

from micropie import SESSION_TIMEOUT, App, InMemorySessionBackend
from tests.support.asgi import (
    ATTACKER_SESSION_ID,
    VALID_SESSION_ID,
    CountingSessionBackend,
    attach,
    body,
    cookie_header,
    cookie_session_id,
    http_scope,
    run_app,
)

pytestmark = pytest.mark.anyio


async def test_in_memory_session_backend() -> None:
    backend = InMemorySessionBackend()
    session_id = str(uuid.uuid4())
    data = {"user_id": "123", "name": "Test User"}

    await backend.save(session_id, data, SESSION_TIMEOUT)
    assert await backend.load(session_id) == data
    assert backend.sessions[session_id] == data
    assert await backend.load(str(uuid.uuid4())) == {}

    await backend.save(session_id, {}, SESSION_TIMEOUT)
    assert await backend.load(session_id) == {}
    assert session_id not in backend.sessions


async def test_nonpositive_timeout_deletes_in_memory_session() -> None:
    backend = InMemorySessionBackend()
    await backend.save("abc", {"user": "alice"}, 10)
    await backend.save("abc", {"user": "alice"}, 0)
    assert await backend.load("abc") == {}
    assert "abc" not in backend.sessions


async def test_session_management() -> None:
    app = App(session_backend=InMemorySessionBackend())

    @attach(app)
    async def set_session(self: App) -> tuple[int, str]:
        self.request.session["user"] = "test_user"
        return 200, "Session set"

    conn = await run_app(app, http_scope("/set_session"), [body(b"")])
    assert conn.status == 200
    cookie = conn.set_cookie()
    assert cookie.startswith(b"session_id=")
    assert cookie.endswith(b"; Path=/; SameSite=Lax; HttpOnly; Secure;")
    assert b"; Secure;" in cookie
    assert uuid.UUID(cookie_session_id(cookie)).version == 4


async def test_app_session_configuration_controls_save_and_cookie() -> None:
    backend = CountingSessionBackend()
    app = App(session_backend=backend, session_timeout=123, session_cookie_secure=False)

    @attach(app)
    async def set_session(self: App) -> str:
        self.request.session["user"] = "alice"
        return "OK"

    conn = await run_app(app, http_scope("/set_session"), [body(b"")])
    assert backend.save_calls[-1][2] == 123
    cookie = conn.set_cookie()
    assert b"HttpOnly" in cookie
    assert b"Secure" not in cookie
    assert (
        cookie
        == f"session_id={cookie_session_id(cookie)}; Path=/; SameSite=Lax; HttpOnly;".encode()
    )


async def test_empty_session_transition_rotates_client_supplied_id() -> None:
    """A login never persists under an unknown id chosen by the client."""
    backend = CountingSessionBackend()
    app = App(session_backend=backend)

    @attach(app)
    async def login(self: App) -> str:
        self.request.session["user_id"] = 42
        return "logged in"

    conn = await run_app(
        app, http_scope("/login", headers=[cookie_header(ATTACKER_SESSION_ID)]), [body(b"")]
    )
    assert backend.load_calls == [ATTACKER_SESSION_ID]
    assert (ATTACKER_SESSION_ID, {}, 0) in backend.save_calls
    new_session_id = cookie_session_id(conn.set_cookie())
    assert new_session_id != ATTACKER_SESSION_ID
    assert uuid.UUID(new_session_id).version == 4
    assert ATTACKER_SESSION_ID not in backend.sessions
    assert backend.sessions[new_session_id] == {"user_id": 42}


async def test_invalid_session_cookie_never_reaches_backend() -> None:
    backend = CountingSessionBackend()
    app = App(session_backend=backend)

    @attach(app)
    async def login(self: App) -> str:
        self.request.session["user_id"] = 42
        return "logged in"

    await run_app(
        app,
        http_scope("/login", headers=[(b"cookie", b"session_id=../../tmp/attacker-session")]),
        [body(b"")],
    )
    assert backend.load_calls == []
    assert backend.save_calls
    saved_session_id = backend.save_calls[-1][0]
    assert uuid.UUID(saved_session_id).version == 4
    assert saved_session_id != "../../tmp/attacker-session"


async def test_explicit_session_regeneration_rotates_existing_session() -> None:
    backend = CountingSessionBackend()
    await backend.save(VALID_SESSION_ID, {"cart": "item"}, SESSION_TIMEOUT)
    backend.load_calls.clear()
    backend.save_calls.clear()
    app = App(session_backend=backend)

    @attach(app)
    async def reauthenticate(self: App) -> str:
        self.request.session["user_id"] = 42
        self.request.regenerate_session()
        return "reauthenticated"

    conn = await run_app(
        app, http_scope("/reauthenticate", headers=[cookie_header(VALID_SESSION_ID)]), [body(b"")]
    )
    assert (VALID_SESSION_ID, {}, 0) in backend.save_calls
    assert VALID_SESSION_ID not in backend.sessions
    new_session_id = backend.save_calls[-1][0]
    assert new_session_id != VALID_SESSION_ID
    assert backend.sessions[new_session_id] == {"cart": "item", "user_id": 42}
    assert f"session_id={new_session_id}".encode() in conn.set_cookie()


async def test_custom_session_id_policy_supports_non_uuid_backends() -> None:
    backend = CountingSessionBackend()
    await backend.save("signed.existing", {"user": "alice"}, SESSION_TIMEOUT)
    backend.load_calls.clear()
    backend.save_calls.clear()
    app = App(
        session_backend=backend,
        session_id_factory=lambda: "signed.fresh",
        session_id_validator=lambda value: value if value.startswith("signed.") else None,
    )

    @attach(app)
    async def profile(self: App) -> str:
        return str(self.request.session["user"])

    conn = await run_app(
        app,
        http_scope("/profile", headers=[(b"cookie", b"session_id=signed.existing")]),
        [body(b"")],
    )
    assert backend.load_calls == ["signed.existing"]
    assert backend.save_calls[-1][0] == "signed.existing"
    assert conn.body == b"alice"


async def test_request_without_cookie_skips_session_load() -> None:
    backend = CountingSessionBackend()
    app = App(session_backend=backend)

    @attach(app)
    async def index(self: App) -> str:
        return "OK"

    conn = await run_app(app, http_scope("/index"), [body(b"")])
    assert conn.body == b"OK"
    assert backend.load_calls == []
    assert backend.save_calls == []
    assert conn.header_values(b"Set-Cookie") == []


async def test_request_with_session_cookie_loads_and_persists() -> None:
    backend = CountingSessionBackend()
    await backend.save(VALID_SESSION_ID, {"user": "alice"}, SESSION_TIMEOUT)
    backend.load_calls.clear()
    backend.save_calls.clear()
    app = App(session_backend=backend)

    @attach(app)
    async def index(self: App) -> str:
        self.request.session["seen"] = "1"
        return str(self.request.session["user"])

    conn = await run_app(
        app, http_scope("/index", headers=[cookie_header(VALID_SESSION_ID)]), [body(b"")]
    )
    assert backend.load_calls == [VALID_SESSION_ID]
    assert backend.save_calls[-1][0] == VALID_SESSION_ID
    assert backend.sessions[VALID_SESSION_ID] == {"user": "alice", "seen": "1"}
    assert conn.body == b"alice"
    # An existing session keeps its id: no new cookie.
    assert conn.header_values(b"Set-Cookie") == []


async def test_session_cookie_is_found_among_other_cookies() -> None:
    backend = CountingSessionBackend()
    await backend.save(VALID_SESSION_ID, {"user": "alice"}, SESSION_TIMEOUT)
    backend.load_calls.clear()
    app = App(session_backend=backend)

    @attach(app)
    async def whoami(self: App) -> str:
        return str(self.request.session.get("user"))

    header = f"theme=dark; session_id={VALID_SESSION_ID}; user=john".encode()
    conn = await run_app(app, http_scope("/whoami", headers=[(b"cookie", header)]))
    assert backend.load_calls == [VALID_SESSION_ID]
    assert conn.body == b"alice"


async def test_upper_case_session_id_is_normalised() -> None:
    backend = CountingSessionBackend()
    await backend.save(VALID_SESSION_ID, {"user": "alice"}, SESSION_TIMEOUT)
    backend.load_calls.clear()
    app = App(session_backend=backend)

    @attach(app)
    async def whoami(self: App) -> str:
        return str(self.request.session.get("user"))

    conn = await run_app(
        app, http_scope("/whoami", headers=[cookie_header(VALID_SESSION_ID.upper())])
    )
    assert backend.load_calls == [VALID_SESSION_ID]
    assert conn.body == b"alice"


async def test_emptied_session_is_deleted() -> None:
    """Logout: an empty session with a valid cookie is deleted with ``save(id, {}, 0)``."""
    backend = CountingSessionBackend()
    await backend.save(VALID_SESSION_ID, {"user": "alice"}, SESSION_TIMEOUT)
    backend.save_calls.clear()
    app = App(session_backend=backend)

    @attach(app)
    async def logout(self: App) -> str:
        self.request.session.clear()
        return "bye"

    conn = await run_app(
        app, http_scope("/logout", headers=[cookie_header(VALID_SESSION_ID)]), [body(b"")]
    )
    assert conn.body == b"bye"
    assert backend.save_calls == [(VALID_SESSION_ID, {}, 0)]
    assert VALID_SESSION_ID not in backend.sessions


async def test_session_survives_between_requests() -> None:
    app = App(session_backend=InMemorySessionBackend())

    @attach(app)
    async def count(self: App) -> str:
        self.request.session["n"] = self.request.session.get("n", 0) + 1
        return str(self.request.session["n"])

    first = await run_app(app, http_scope("/count"))
    session_id = cookie_session_id(first.set_cookie())
    second = await run_app(app, http_scope("/count", headers=[cookie_header(session_id)]))
    assert (first.body, second.body) == (b"1", b"2")
    assert second.header_values(b"Set-Cookie") == []
