import logging
from functools import partial

import anyio

from micropie import App

logger = logging.getLogger("myprogram")


class Status(App):
    def __init__(self):
        super().__init__()
        self.heartbeats = 0

    async def index(self):
        return {"heartbeats": self.heartbeats}


app = Status()


async def heartbeat():
    """The program's own work, beside the server."""
    while True:
        app.heartbeats += 1
        await anyio.sleep(1)


async def main(port=8000, *, task_status=anyio.TASK_STATUS_IGNORED):
    async with anyio.create_task_group() as group:
        host, port = await group.start(partial(app.serve, host="127.0.0.1", port=port))
        logger.info("serving on http://%s:%d", host, port)  # port=0 picks a free one
        group.start_soon(heartbeat)
        task_status.started((host, port))
        # Cancelling this task group (Ctrl-C, or group.cancel_scope.cancel()) stops the
        # server gracefully, and everything else with it.


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    anyio.run(main, backend="trio")  # or backend="asyncio"
