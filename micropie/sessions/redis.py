"""Sessions in Redis, shared by every worker and machine of an app (through coredis).

::

    sessions = RedisSessionBackend("redis://127.0.0.1:6379/0")
    app = MyApp(session_backend=sessions, lifespan=sessions.lifespan)

It implements the ``SessionBackend`` contract: a session is stored as one JSON string under
``prefix + session_id`` with the app's ``session_timeout`` as the key's TTL, renewed by every
save (the framework saves after each successful request that has a session, so the timeout
is one of inactivity, as with the in-memory backend). Saving an empty session, or with a
timeout of 0, deletes the key.

Session ids come from cookies, that is from anyone: each one is checked with
``session_id_validator`` (canonical UUIDv4 by default, like the app's) *before* any Redis call.
``load`` answers ``{}`` for an id it rejects; ``save`` raises ``ValueError``, so an invalid id can
never become a key. A stored value that is not a JSON object (written by something else) loads
as ``{}`` and is logged.

Values must be JSON-serialisable (``TypeError`` at save otherwise, which the app answers with a
logged 500). When Redis is unreachable or slower than ``timeout`` seconds, ``load`` and ``save``
raise ``SessionStoreUnavailable``; the app answers that request with a logged 500, and the next
request tries again (coredis reconnects on its own).

The connection pool is opened by ``async with backend:`` or ``lifespan=backend.lifespan`` (at
app startup) and closed when that ends; using the backend outside raises ``RuntimeError``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from micropie.core import json_codec
from micropie.core.concurrency import collapse_excgroups
from micropie.sessions import SessionBackend, validate_session_id

if TYPE_CHECKING:
    import coredis

__all__ = ["DEFAULT_PREFIX", "RedisSessionBackend", "SessionStoreUnavailable", "redis_client"]

logger = logging.getLogger("micropie")

#: Prepended to session ids to make Redis keys, so sessions do not collide with other data.
DEFAULT_PREFIX = "micropie:session:"
#: Seconds a load or save may take before ``SessionStoreUnavailable``.
DEFAULT_TIMEOUT = 2.0


def redis_client(url: str, **options: Any) -> coredis.Redis[str]:
    """A coredis client for ``url`` (decoding responses to ``str``), not yet entered.

    Its connections close their internal buffers when connecting fails: coredis 6 leaves them
    open then, which shows as ``ResourceWarning``s for every failed attempt while Redis is down.
    """
    try:
        import coredis
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "Redis support needs coredis: pip install 'micropie-anyio[redis]'"
        ) from error
    client: coredis.Redis[str] = coredis.Redis.from_url(url, decode_responses=True, **options)
    pool = client.connection_pool
    pool.connection_class = _closing_connection_class(pool.connection_class)
    return client


_CONNECTION_BUFFERS = (
    "_write_buffer_in",
    "_write_buffer_out",
    "_push_message_buffer_in",
    "_push_message_buffer_out",
    "_streamed_message_buffer_in",
    "_streamed_message_buffer_out",
)
_closing_classes: dict[type[Any], type[Any]] = {}


def _closing_connection_class(base: type[Any]) -> type[Any]:
    """``base`` with a ``run`` that always closes the connection's memory streams."""
    if base in _closing_classes.values():
        return base
    if base not in _closing_classes:

        class ClosingConnection(base):  # type: ignore[misc]
            async def run(self, *args: Any, **kwargs: Any) -> None:
                try:
                    await super().run(*args, **kwargs)
                finally:
                    for name in _CONNECTION_BUFFERS:
                        stream = getattr(self, name, None)
                        if stream is not None:
                            stream.close()

        ClosingConnection.__name__ = ClosingConnection.__qualname__ = f"Closing{base.__name__}"
        _closing_classes[base] = ClosingConnection
    return _closing_classes[base]


class SessionStoreUnavailable(Exception):
    """Redis could not be reached (or did not answer in time) to load or save a session."""


class RedisSessionBackend(SessionBackend):
    """A ``SessionBackend`` on Redis; see the module docstring for the rules it follows."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = DEFAULT_PREFIX,
        session_id_validator: Callable[[str], str | None] = validate_session_id,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.url = url
        self.prefix = prefix
        self.session_id_validator = session_id_validator
        self.timeout = timeout
        self._client: coredis.Redis[str] | None = None
        self._exit: Callable[..., Any] | None = None

    # --- lifetime --------------------------------------------------------------------------

    async def __aenter__(self) -> RedisSessionBackend:
        """Open the connection pool (connections are made on first use)."""
        if self._client is not None:
            raise RuntimeError("this session backend is already open")
        client = redis_client(self.url, connect_timeout=self.timeout)
        with collapse_excgroups():
            await client.__aenter__()
        self._client = client
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the pool."""
        client, self._client = self._client, None
        if client is not None:
            with collapse_excgroups():
                await client.__aexit__(exc_type, exc, traceback)

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[Mapping[str, Any]]:
        """``App(lifespan=backend.lifespan)``: open at startup, close at shutdown."""
        async with self:
            yield {}

    # --- the SessionBackend contract -------------------------------------------------------

    def _key(self, session_id: str) -> str | None:
        """The Redis key for a client-supplied id, or ``None`` if the validator rejects it."""
        try:
            valid = self.session_id_validator(session_id)
        except Exception:
            logger.exception("Session ID validator failed")
            return None
        return self.prefix + valid if isinstance(valid, str) and valid else None

    def _running(self) -> coredis.Redis[str]:
        if self._client is None:
            raise RuntimeError(
                "RedisSessionBackend is not open: pass lifespan=backend.lifespan to the App "
                "(or enter 'async with backend:')"
            )
        return self._client

    async def load(self, session_id: str) -> dict[str, Any]:
        """The stored session, or ``{}`` (unknown, expired, invalid id, unreadable value)."""
        key = self._key(session_id)
        if key is None:
            return {}
        client = self._running()
        async with self._reaching_redis("load"):
            raw = await client.get(key)
        if raw is None:
            return {}
        try:
            data = json_codec.loads(raw.encode("utf-8"))
        except ValueError:
            data = None
        if not isinstance(data, dict):
            logger.warning("Session %s in Redis is not a JSON object; ignoring it", key)
            return {}
        return data

    async def save(self, session_id: str, data: dict[str, Any], timeout: int) -> None:  # noqa: ASYNC109
        """Store ``data`` for ``timeout`` seconds (the key's TTL); empty data deletes it."""
        key = self._key(session_id)
        if key is None:
            raise ValueError("refusing to save a session under an invalid session id")
        client = self._running()
        if not data or timeout <= 0:
            async with self._reaching_redis("delete"):
                await client.delete([key])
            return
        value = json_codec.dumps(data)  # TypeError for what JSON cannot hold, before Redis
        async with self._reaching_redis("save"):
            await client.set(key, value, ex=int(timeout))

    @asynccontextmanager
    async def _reaching_redis(self, action: str) -> AsyncIterator[None]:
        """Bound a Redis call by ``timeout``; turn connection trouble into one clear error."""
        from coredis.exceptions import ConnectionError as RedisConnectionError

        try:
            with anyio.fail_after(self.timeout):
                yield
        except (RedisConnectionError, TimeoutError, OSError) as error:
            raise SessionStoreUnavailable(
                f"cannot {action} a session: Redis at {self.url} is unreachable ({error})"
            ) from error
