"""The Socket.IO example end to end: hypercorn serves ``socketio.ASGIApp`` around a micropie app.

Asyncio only, on purpose: python-socketio (server and client) is written on asyncio and cannot
run on trio, which is what the example's README says. So this module pins the ``anyio_backend``
fixture to asyncio instead of the suite's usual pair; trio users get ``micropie.broadcast``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
import socketio
from anyio.streams.memory import MemoryObjectReceiveStream

from examples.socketio.app import create_app
from tests.support.servers import running_server

pytestmark = pytest.mark.anyio

DEADLINE = 15.0


@pytest.fixture
def anyio_backend() -> str:
    """python-socketio is asyncio-only (see the module docstring)."""
    return "asyncio"


@asynccontextmanager
async def chat_client(
    url: str, name: str, transports: list[str]
) -> AsyncIterator[tuple[Any, MemoryObjectReceiveStream[dict[str, str]]]]:
    """A connected python-socketio client and the stream of ``chat`` events it receives."""
    client = socketio.AsyncClient(reconnection=False)
    inbox_send, inbox = anyio.create_memory_object_stream[dict[str, str]](16)

    @client.on("chat")
    async def on_chat(message: dict[str, str]) -> None:
        await inbox_send.send(message)

    await client.connect(url, auth={"name": name}, transports=transports, wait_timeout=5)
    try:
        with inbox_send, inbox:
            yield client, inbox
    finally:
        await client.disconnect()


async def test_chat_message_is_broadcast_and_the_micropie_part_answers() -> None:
    with anyio.fail_after(DEADLINE):
        async with running_server(create_app(), graceful_timeout=1) as url:
            async with (
                chat_client(url, "alice", ["websocket"]) as (alice, alice_inbox),
                chat_client(url, "bob", ["polling", "websocket"]) as (_, bob_inbox),
            ):
                await alice.emit("chat", "hello, bob")
                expected = {"name": "alice", "text": "hello, bob"}
                assert await bob_inbox.receive() == expected
                assert await alice_inbox.receive() == expected  # the sender too

            async with httpx.AsyncClient(base_url=url) as http:
                history = await http.get("/history")
                page = await http.get("/")
    assert history.status_code == 200
    assert history.json() == [{"name": "alice", "text": "hello, bob"}]
    assert page.status_code == 200
    assert "socket.io.min.js" in page.text
