"""``App(session_backend=...)`` refuses what is not a backend, when the app is made.

Otherwise the mistake shows up as a 500 on every request, with a traceback far from its cause.
"""

from __future__ import annotations

from typing import Any

import pytest

from micropie import App, InMemorySessionBackend
from micropie.testing import TestClient

EXPECTED = "session_backend must be a session backend object with async load(session_id) and"


class OnlyLoads:
    async def load(self, session_id: str) -> dict[str, Any]:
        return {}


class DuckTyped:
    """Like MicroPie 0.32's own backends: no base class, just the two methods."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def __len__(self) -> int:  # an empty backend is falsy: it must still be used
        return len(self.rows)

    async def load(self, session_id: str) -> dict[str, Any]:
        return dict(self.rows.get(session_id, {}))

    async def save(self, session_id: str, data: dict[str, Any], timeout: int) -> None:  # noqa: ASYNC109
        self.rows[session_id] = dict(data)


@pytest.mark.parametrize(
    ("backend", "explanation"),
    [
        (
            InMemorySessionBackend,
            "got the class InMemorySessionBackend itself: pass InMemorySessionBackend()",
        ),
        (
            "redis://x",
            "got the string 'redis://x' (for Redis: session_backend=RedisSessionBackend('redis://x'))",
        ),
        (OnlyLoads(), "which has no save()"),
        (object(), "which has no load or save()"),
    ],
)
def test_a_backend_that_is_not_one_is_refused_with_what_is_expected(
    backend: object, explanation: str
) -> None:
    with pytest.raises(TypeError) as refused:
        App(session_backend=backend)  # type: ignore[arg-type]
    message = str(refused.value)
    assert message.startswith(EXPECTED)
    assert "InMemorySessionBackend()" in message
    assert explanation in message


def test_none_means_the_in_memory_default() -> None:
    assert isinstance(App(session_backend=None).session_backend, InMemorySessionBackend)


@pytest.mark.anyio
async def test_a_duck_typed_backend_is_used_even_when_empty() -> None:
    backend = DuckTyped()

    class Counter(App):
        async def index(self) -> str:
            self.request.session["n"] = self.request.session.get("n", 0) + 1
            return str(self.request.session["n"])

    app = Counter(session_backend=backend)  # type: ignore[arg-type]
    assert app.session_backend is backend
    async with TestClient(app) as client:
        assert (await client.get("/")).text == "1"
        assert (await client.get("/")).text == "2"
    assert list(backend.rows.values()) == [{"n": 2}]
