"""RedisSessionBackend against a real redis-server: the SessionBackend contract and an app."""

from __future__ import annotations

import uuid

import anyio
import coredis
import pytest

from micropie import App
from micropie.sessions.redis import DEFAULT_PREFIX, RedisSessionBackend, SessionStoreUnavailable
from micropie.testing import TestClient
from tests.support.redis_server import RedisServer, redis_server  # noqa: F401 - the fixture
from tests.support.servers import free_port

pytestmark = pytest.mark.anyio


async def raw(url: str, command: str, key: str) -> object:
    """Ask Redis directly (``get`` or ``ttl``), bypassing the backend."""
    async with coredis.Redis.from_url(url, decode_responses=True) as client:
        return await getattr(client, command)(key)


async def test_save_load_ttl_and_delete(redis_server: RedisServer) -> None:  # noqa: F811
    session_id = str(uuid.uuid4())
    key = DEFAULT_PREFIX + session_id
    async with RedisSessionBackend(redis_server.url) as backend:
        assert await backend.load(session_id) == {}
        await backend.save(session_id, {"user": "ada", "n": [1, 2]}, 600)
        assert await backend.load(session_id) == {"user": "ada", "n": [1, 2]}
        assert 590 <= int(await raw(redis_server.url, "ttl", key)) <= 600  # type: ignore[call-overload]

        await backend.save(session_id, {"user": "ada"}, 0)  # timeout 0 deletes
        assert await raw(redis_server.url, "get", key) is None
        await backend.save(session_id, {"user": "ada"}, 600)
        await backend.save(session_id, {}, 600)  # an empty session deletes
        assert await raw(redis_server.url, "get", key) is None
        assert await backend.load(session_id) == {}


async def test_the_ttl_expires_the_session(redis_server: RedisServer) -> None:  # noqa: F811
    session_id = str(uuid.uuid4())
    async with RedisSessionBackend(redis_server.url) as backend:
        await backend.save(session_id, {"short": True}, 1)
        for _ in range(50):  # Redis expires it after ~1 s; give up after 5 s
            if not await backend.load(session_id):
                break
            await anyio.sleep(0.1)
        else:
            pytest.fail("the session outlived its TTL")


@pytest.mark.parametrize(
    "bad_id",
    ["", "not-a-uuid", "../../etc", "*", "a" * 10_000, "12345678-1234-1234-1234-123456789012"],
)
async def test_invalid_ids_never_reach_redis(bad_id: str) -> None:
    # Never entered: any Redis call would raise RuntimeError("... not open").
    backend = RedisSessionBackend("redis://127.0.0.1:1/0")
    assert await backend.load(bad_id) == {}
    with pytest.raises(ValueError, match="invalid session id"):
        await backend.save(bad_id, {"x": 1}, 60)
    with pytest.raises(RuntimeError, match="not open"):
        await backend.load(str(uuid.uuid4()))


async def test_a_value_that_is_not_a_json_object_loads_empty(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    session_id = str(uuid.uuid4())
    async with coredis.Redis.from_url(redis_server.url, decode_responses=True) as client:
        await client.set(DEFAULT_PREFIX + session_id, "[1, 2]")
    async with RedisSessionBackend(redis_server.url) as backend:
        assert await backend.load(session_id) == {}


async def test_unreachable_redis_is_a_clear_error_within_the_timeout() -> None:
    async with RedisSessionBackend(f"redis://127.0.0.1:{free_port()}/0", timeout=1) as backend:
        with anyio.fail_after(5), pytest.raises(SessionStoreUnavailable, match="unreachable"):
            await backend.load(str(uuid.uuid4()))


class CounterApp(App):
    async def index(self) -> str:
        self.request.session["visits"] = self.request.session.get("visits", 0) + 1
        return str(self.request.session["visits"])

    async def logout(self) -> str:
        self.request.session.clear()
        return "bye"


async def test_an_app_keeps_its_sessions_in_redis_with_its_timeout(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    backend = RedisSessionBackend(redis_server.url)
    app = CounterApp(
        session_backend=backend,
        lifespan=backend.lifespan,
        session_timeout=1234,
        session_cookie_secure=False,
    )
    async with TestClient(app) as client:
        assert (await client.get("/")).text == "1"
        assert (await client.get("/")).text == "2"
        session_id = client.cookies["session_id"]
        key = DEFAULT_PREFIX + session_id
        assert 1200 <= int(await raw(redis_server.url, "ttl", key)) <= 1234  # type: ignore[call-overload]
        assert (await client.get("/logout")).text == "bye"
        assert await raw(redis_server.url, "get", key) is None
    assert backend._client is None  # closed at shutdown


async def test_an_app_answers_500_when_redis_is_down() -> None:
    with RedisServer.start() as redis:
        backend = RedisSessionBackend(redis.url, timeout=1)
        app = CounterApp(
            session_backend=backend, lifespan=backend.lifespan, session_cookie_secure=False
        )
        async with TestClient(app) as client:
            assert (await client.get("/")).text == "1"
            redis.kill()
            with anyio.fail_after(5):
                response = await client.get("/")
            assert response.status_code == 500
            redis.restart()
            with anyio.fail_after(5):
                response = await client.get("/")  # a fresh Redis: the session is gone
            assert (response.status_code, response.text) == (200, "1")
