import anyio

from micropie import App
from micropie.sse import ServerSentEvent, sse


class StreamApp(App):
    async def countdown(self, start: int = 3):
        async def numbers():
            for n in range(start, 0, -1):
                yield f"{n}\n"
                await anyio.sleep(0.01)
            yield "liftoff!\n"

        return 200, numbers(), [("Content-Type", "text/plain; charset=utf-8")]

    async def clock(self, ticks: int = 3):
        async def events():
            for n in range(ticks):
                yield ServerSentEvent({"tick": n}, event="tick", id=str(n))
                await anyio.sleep(0.01)

        return sse(events(), ping=15)  # a ": ping" comment after 15 s of silence


app = StreamApp()
