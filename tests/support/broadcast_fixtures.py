"""What the broadcast tests share: channel names, the backend parameter, Redis's own view, and
an app that serves a feed both ways (``subscribe`` and ``forward``).

``conftest.py`` imports the fixtures, so every test can take them; ``url`` needs the
``redis_server`` fixture imported into the test's module (``from redis_server import
redis_server``), which starts one Redis per module.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import coredis
import pytest

from micropie import App
from micropie.broadcast import Broadcast

_names = itertools.count()


@pytest.fixture
def channel() -> str:
    """A channel name no other test uses (a Redis server is shared by a module's tests)."""
    return f"test-channel-{next(_names)}"


@pytest.fixture(params=["memory", "redis"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test that takes ``url`` runs on both broadcast backends."""
    if request.param == "memory":
        yield "memory://"
    else:
        yield request.getfixturevalue("redis_server").url


async def redis_subscribers(url: str, channel: str) -> int:
    """How many connections Redis itself has subscribed to ``channel``."""
    async with coredis.Redis.from_url(url, decode_responses=True) as client:
        counts = await client.pubsub_numsub(channel)
    return int(counts[channel])


class FeedApp(App):
    """WebSocket feeds and an HTTP publisher on ``broadcast``, owned by the lifespan.

    ``/feed/<topic>`` reads a subscription in the handler; ``/forwarded/<topic>`` lets the
    broadcast's delivery workers send (``forward``). Each says "subscribed" first.
    """

    def __init__(self, broadcast: Broadcast) -> None:
        super().__init__(lifespan=broadcast.lifespan, session_cookie_secure=False)
        self.broadcast = broadcast

    async def ws_feed(self, ws, topic):  # type: ignore[no-untyped-def]
        await ws.accept()
        async with self.broadcast.subscribe(topic) as messages:
            await ws.send_text("subscribed")
            async for message in messages:
                await ws.send_text(message.data)

    async def ws_forwarded(self, ws, topic):  # type: ignore[no-untyped-def]
        await ws.accept()
        async with self.broadcast.forward(topic, ws):
            await ws.send_text("subscribed")
            async for _ in ws:
                pass

    async def post(self, topic: str, text: str) -> str:
        await self.broadcast.publish(topic, text)
        return "sent"
