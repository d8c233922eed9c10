"""The README's embedding examples: a trio program and an asyncio program serve an app.

Each example is a program for one event loop, so each runs on its own backend: this is the
point of the examples, not a gap in backend coverage.
"""

from __future__ import annotations

from functools import partial

import anyio
import httpx
import pytest

from examples.embed import asyncio_program, trio_program


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_a_trio_program_serves_the_app_in_its_nursery() -> None:
    with anyio.fail_after(10):
        async with anyio.create_task_group() as nursery:
            host, port = await nursery.start(partial(trio_program.main, port=0))
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://{host}:{port}/")
            assert response.status_code == 200
            assert "heartbeats" in response.json()
            nursery.cancel_scope.cancel()  # the program ends: the server with it


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_an_asyncio_program_serves_the_app_in_its_task_group() -> None:
    with anyio.fail_after(10):
        async with anyio.create_task_group() as task_group:
            host, port = await task_group.start(partial(asyncio_program.main, port=0))
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://{host}:{port}/")
            assert response.text == "Hello from inside an asyncio program"
            task_group.cancel_scope.cancel()
