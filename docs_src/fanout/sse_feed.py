from micropie import App
from micropie.broadcast import Broadcast
from micropie.sse import sse

broadcast = Broadcast("memory://")


class EventsApp(App):
    # --8<-- [start:events]
    async def events(self, topic):
        async def stream():
            async with broadcast.subscribe(topic) as messages:
                async for message in messages:
                    yield message.data

        return sse(stream())

    # --8<-- [end:events]

    async def publish(self, topic, text):
        await broadcast.publish(topic, text)
        return "sent"


app = EventsApp(lifespan=broadcast.lifespan)
