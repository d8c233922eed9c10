"""examples/chat end to end: real hypercorn, real WebSocket clients, a real redis-server.

* Two hypercorn worker processes (``python -m micropie ... --workers 2``) sharing Redis: a
  message sent by a client of one worker reaches a client of the other, with nicknames from
  sessions that are also in Redis.
* In one process: the memory backend, and Redis killed and restarted mid-chat.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, asynccontextmanager, contextmanager
from typing import Any

import anyio
import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from examples.chat.app import create_app
from tests.support.redis_server import RedisServer, redis_server  # noqa: F401 - the fixture
from tests.support.servers import CliServer, running_server

#: Rounds of connections tried before giving up on reaching both workers, and connections
#: opened at once per round. The workers share one listening socket, so which one accepts is up
#: to the scheduler: one at a time, a loaded machine can hand every connection to the same
#: worker (seen once in ~50 runs). A burst wakes both, and the one that lost the first accept
#: takes the next.
MAX_CONNECT_ROUNDS, CONNECTIONS_PER_ROUND = 8, 4


@contextmanager
def chat_server(*args: str, backend: str = "trio") -> Iterator[CliServer]:
    """``python -m micropie examples.chat.app:app *args``, stopped with SIGTERM at the end.

    A graceful stop matters with ``--workers``: killing the supervisor would orphan its
    workers, which keep the output pipe (and so the test) open.
    """
    with CliServer.start("examples.chat.app:app", *args, backend=backend) as server:
        try:
            yield server
        finally:
            if server.process.poll() is None:
                server.stop(signal.SIGTERM)


def nick_cookie(base: str, nick: str) -> str:
    """POST /nick and return the ``Cookie`` header that carries the new session."""
    response = httpx.post(f"{base}/nick", data={"nick": nick}, timeout=5)
    assert response.json() == {"nick": nick}
    return f"session_id={response.cookies['session_id']}"


@contextmanager
def chat_client(base: str, room: str, cookie: str) -> Iterator[tuple[ClientConnection, Any]]:
    """A connected client and its welcome message."""
    ws, welcome = open_chat(base, room, cookie)
    with ws:
        yield ws, welcome


def open_chat(base: str, room: str, cookie: str) -> tuple[ClientConnection, Any]:
    """Connect to ``room`` and read the welcome; the caller closes the connection."""
    url = base.replace("http://", "ws://", 1) + f"/chat/{room}"
    # Entered by hand: the burst opens several from threads and closes them in the caller.
    ws = connect(url, additional_headers={"Cookie": cookie}, open_timeout=5).__enter__()
    try:
        welcome = json.loads(ws.recv(timeout=5))
        assert welcome["type"] == "welcome"
    except BaseException:
        ws.close()
        raise
    return ws, welcome


def next_message(ws: ClientConnection) -> dict[str, Any]:
    """The next chat message (skipping join notices), within 5 s."""
    while True:
        event = json.loads(ws.recv(timeout=5))
        if event["type"] != "join":
            return event  # type: ignore[no-any-return]


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_message_crosses_workers_through_redis(
    redis_server: RedisServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
) -> None:
    monkeypatch.setenv("CHAT_REDIS_URL", redis_server.url)
    with chat_server("--workers", "2", backend=backend) as server:
        server.wait_until_serving(count=2)  # both workers are up
        base = server.url
        alice_cookie = nick_cookie(base, "alice")
        bob_cookie = nick_cookie(base, "bob")
        with chat_client(base, "e2e", alice_cookie) as (alice, alice_welcome):
            assert alice_welcome["nick"] == "alice"  # the session crossed workers too
            with client_on_another_worker(base, bob_cookie, alice_welcome) as bob:
                alice.send("hello from the other worker")
                event = next_message(bob)
                assert event == {
                    "type": "message",
                    "nick": "alice",
                    "text": "hello from the other worker",
                }


@contextmanager
def client_on_another_worker(
    base: str, cookie: str, other: dict[str, Any]
) -> Iterator[ClientConnection]:
    """A client in room "e2e" served by another worker than ``other`` (a welcome)."""
    for _ in range(MAX_CONNECT_ROUNDS):
        with ExitStack() as stack, ThreadPoolExecutor(CONNECTIONS_PER_ROUND) as pool:
            burst = [
                pool.submit(open_chat, base, "e2e", cookie) for _ in range(CONNECTIONS_PER_ROUND)
            ]
            opened = [future.result() for future in burst]
            for ws, _ in opened:
                stack.callback(ws.close)
            for ws, welcome in opened:
                if welcome["worker"] != other["worker"]:
                    assert welcome["nick"] == "bob"
                    yield ws
                    return
    pytest.fail("never reached a second worker")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_one_process_on_the_memory_backend(backend: str) -> None:
    with chat_server(backend=backend) as server:
        cookie = nick_cookie(server.url, "carol")
        with (
            chat_client(server.url, "solo", cookie) as (first, welcome),
            chat_client(server.url, "solo", "") as (second, guest),
            chat_client(server.url, "elsewhere", "") as (other_room, _),
        ):
            assert welcome["nick"] == "carol"
            assert guest["nick"].startswith("guest-")
            first.send("  hi  ")
            assert next_message(second) == {"type": "message", "nick": "carol", "text": "hi"}
            assert next_message(first)["text"] == "hi"  # the sender sees its own message
            assert json.loads(other_room.recv(timeout=5))["type"] == "join"  # its own
            with pytest.raises(TimeoutError):
                other_room.recv(timeout=0.3)  # rooms are separate: nothing else comes
            refused = httpx.get(f"{server.url}/room/..%2Fetc", timeout=5)
            assert refused.status_code == 404


# --- Redis restarted mid-chat (in process, both anyio backends) ----------------------------


@asynccontextmanager
async def async_chat_client(url: str, backend: str) -> AsyncIterator[Any]:
    """A WebSocket client with ``send``/``recv`` on the current backend's library."""
    url = url.replace("http://", "ws://", 1)
    if backend == "trio":
        import trio_websocket

        async with trio_websocket.open_websocket_url(url, disconnect_timeout=2) as ws:

            class Trio:
                send = ws.send_message
                recv = ws.get_message

            yield Trio
    else:
        import websockets

        async with websockets.connect(url) as ws:
            yield ws


async def next_event(ws: Any, kind: str) -> dict[str, Any]:
    with anyio.fail_after(5):
        while True:
            event: dict[str, Any] = json.loads(await ws.recv())
            if event["type"] == kind:
                return event


@pytest.mark.anyio
async def test_redis_killed_and_restarted_mid_chat(anyio_backend: str) -> None:
    with RedisServer.start() as redis:
        app = create_app(redis.url)
        async with (
            running_server(app) as base,
            async_chat_client(f"{base}/chat/restart", anyio_backend) as alice,
            async_chat_client(f"{base}/chat/restart", anyio_backend) as bob,
        ):
            await next_event(alice, "welcome")
            await next_event(bob, "welcome")
            await alice.send("before")
            assert (await next_event(bob, "message"))["text"] == "before"

            redis.kill()
            await alice.send("while down")  # the sender hears about it, promptly
            assert (await next_event(alice, "error"))["type"] == "error"

            redis.restart()
            # Delivery comes back within the reconnect backoff: keep talking until bob hears.
            with anyio.fail_after(10):
                while True:
                    await alice.send("after")
                    with anyio.move_on_after(0.3):
                        event = await next_event(bob, "message")
                        assert event["text"] == "after"
                        break
