"""An asyncio program that serves a micropie app in its own task group.

Run it:  python -m examples.embed.asyncio_program    (then open http://127.0.0.1:8000/)
"""

from __future__ import annotations

import asyncio
import logging

import anyio
import anyio.abc

from micropie import App

logger = logging.getLogger("examples.embed")


class Hello(App):
    async def index(self) -> str:
        return "Hello from inside an asyncio program"


app = Hello()


async def main(
    *,
    port: int = 8000,
    task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    async with anyio.create_task_group() as task_group:
        host, bound_port = await task_group.start(
            lambda task_status: app.serve(host="127.0.0.1", port=port, task_status=task_status)
        )
        logger.info("serving on http://%s:%d", host, bound_port)
        task_status.started((host, bound_port))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main())
