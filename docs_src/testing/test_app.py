import pytest
from app import NotesApp, app

from micropie.testing import TestClient, WebSocketRejected

pytestmark = pytest.mark.anyio  # each test runs on asyncio and on trio (conftest.py)


# --8<-- [start:login]
async def test_login_over_https():
    # The session cookie is Secure, so the client sends it back over https only.
    async with TestClient(app, base_url="https://testserver") as client:
        await client.post("/login", data={"username": "alice"})
        response = await client.get("/me")
        assert response.text == "alice"


async def test_login_without_secure_cookies():
    # Or turn Secure off for the app under test.
    insecure = NotesApp(session_cookie_secure=False)
    async with TestClient(insecure) as client:  # http://testserver
        await client.post("/login", data={"username": "bob"})
        response = await client.get("/me")
        assert response.text == "bob"


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
