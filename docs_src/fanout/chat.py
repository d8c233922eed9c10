from micropie import App
from micropie.broadcast import Broadcast

broadcast = Broadcast("memory://")


class ChatApp(App):
    # --8<-- [start:chat]
    async def ws_chat(self, ws, room):
        await ws.accept()
        async with broadcast.forward(room, ws):
            async for text in ws:
                await broadcast.publish(room, text)

    # --8<-- [end:chat]

    async def ws_lobby(self, ws, nick="guest"):
        await ws.accept()
        room = "lobby"
        # --8<-- [start:welcome]
        async with broadcast.forward(room, ws, start=False) as forward:
            await ws.send_json({"type": "welcome", "nick": nick})
            forward.start()
            async for text in ws:
                await broadcast.publish(room, text)
        # --8<-- [end:welcome]


app = ChatApp(lifespan=broadcast.lifespan)
