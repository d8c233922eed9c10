import pytest
from app import app

from micropie.testing import TestClient

pytestmark = pytest.mark.anyio  # every test in this file, on both backends (see conftest.py)


async def test_greet():
    async with TestClient(app) as client:
        response = await client.get("/greet/Alice")
        assert response.status_code == 200
        assert response.text == "Hello, Alice!"

        response = await client.get("/greet", params={"name": "Bob"})
        assert response.text == "Hello, Bob!"


async def test_add():
    async with TestClient(app) as client:
        response = await client.get("/add/1/2")
        assert response.json() == {"sum": 3}

        response = await client.get("/add/1/two")
        assert response.status_code == 400


async def test_echo():
    async with TestClient(app) as client:
        async with client.websocket_connect("/echo") as ws:
            await ws.send_text("hi")
            assert await ws.receive_text() == "Echo: hi"
