import pytest
from app import app

from micropie.testing import TestClient, WebSocketRejected

pytestmark = pytest.mark.anyio  # each test runs on asyncio and on trio (conftest.py)


# --8<-- [start:login]
async def test_login():
    async with TestClient(app) as client:  # https://testserver: the Secure cookie comes back
        await client.post("/login", data={"username": "alice"})
        response = await client.get("/me")
        assert response.text == "alice"


async def test_no_session_over_plain_http():
    # What a browser sees over plain http: the Secure cookie is never sent back.
    async with TestClient(app, base_url="http://testserver") as client:
        await client.post("/login", data={"username": "bob"})
        response = await client.get("/me")
        assert response.text == "nobody"


# --8<-- [end:login]


# --8<-- [start:stream]
async def test_stream_stops_when_the_client_leaves():
    async with TestClient(app) as client:
        async with client.stream("GET", "/numbers") as response:
            lines = []
            async for line in response.aiter_lines():
                lines.append(line)
                if len(lines) == 3:
                    break  # leaving the block disconnects: the generator is closed
        assert lines == ["0", "1", "2"]


# --8<-- [end:stream]


# --8<-- [start:websocket]
async def test_websocket():
    async with TestClient(app) as client:
        async with client.websocket_connect("/shout") as ws:
            await ws.send_text("hello")
            assert await ws.receive_text() == "HELLO"
        # leaving the block closes the connection with 1000


async def test_unknown_websocket_route_is_refused():
    async with TestClient(app) as client:
        with pytest.raises(WebSocketRejected) as refused:
            async with client.websocket_connect("/nowhere"):
                pass
        assert refused.value.code == 1008
        assert refused.value.reason == "No matching WebSocket route"


# --8<-- [end:websocket]
