import os

from micropie import App
from micropie.broadcast import Broadcast

broadcast = Broadcast(os.environ.get("BROADCAST_URL", "memory://"))


class Live(App):
    async def ws_feed(self, ws, topic):
        await ws.accept()
        async with broadcast.forward(topic, ws):  # sends what is published to this client
            async for text in ws:  # until the client leaves
                ...

    async def ws_feed_filtered(self, ws, topic):
        await ws.accept()
        async with broadcast.subscribe(topic) as messages:  # any handler, any use
            async for message in messages:  # Message(channel, data)
                if not message.data.startswith("#"):
                    await ws.send_text(message.data)

    async def publish(self, topic, text):
        await broadcast.publish(topic, text)
        return "sent"


app = Live(lifespan=broadcast.lifespan)
