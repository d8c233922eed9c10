"""A trio program that serves a micropie app in its own nursery, beside its other work.

Run it:  python -m examples.embed.trio_program    (then open http://127.0.0.1:8000/)
Ctrl-C cancels the nursery: the server shuts down gracefully, and so does everything else.
"""

from __future__ import annotations

import logging
from functools import partial

import trio

from micropie import App

logger = logging.getLogger("examples.embed")


class Status(App):
    def __init__(self) -> None:
        super().__init__()
        self.heartbeats = 0

    async def index(self) -> dict[str, int]:
        return {"heartbeats": self.heartbeats}


app = Status()


async def heartbeat() -> None:
    """The program's own work, running beside the server in the same nursery."""
    while True:
        app.heartbeats += 1
        await trio.sleep(1)


async def main(
    *, port: int = 8000, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
) -> None:
    async with trio.open_nursery() as nursery:
        host, bound_port = await nursery.start(partial(app.serve, host="127.0.0.1", port=port))
        logger.info("serving on http://%s:%d", host, bound_port)
        nursery.start_soon(heartbeat)
        task_status.started((host, bound_port))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    trio.run(main)
