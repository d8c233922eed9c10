from contextlib import asynccontextmanager

import anyio

from micropie import App


async def tick(counter):
    while True:  # runs as long as the app: cancelled at shutdown
        counter["ticks"] += 1
        await anyio.sleep(0.01)


@asynccontextmanager
async def lifespan(app):
    # startup: what is yielded becomes app.state and request.state
    counter = {"ticks": 0}
    app.start_soon(tick, counter)  # a task in the app's own task group
    yield {"counter": counter}
    # shutdown: close what you opened (background tasks are cancelled after this)


class ClockApp(App):
    async def index(self):
        return {"ticks": self.request.state["counter"]["ticks"]}

    async def slow(self):
        try:
            await anyio.sleep(60)  # a client that leaves cancels this
            return "done"
        finally:
            self.state["slow_finished"] = True  # runs either way


app = ClockApp(lifespan=lifespan)
