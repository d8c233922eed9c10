import anyio

from micropie import App


class TickerApp(App):
    async def ws_ticker(self, ws, every: float = 1.0):
        await ws.accept()

        async def tick():  # lives exactly as long as the connection
            n = 0
            while True:
                await ws.send_json({"tick": n})
                n += 1
                await anyio.sleep(every)

        ws.start_soon(tick)
        async for message in ws:  # meanwhile, answer what the client sends
            if message == "stop":
                await ws.close(1000, "bye")
                return
            await ws.send_json({"echo": message})

    async def ws_index(self, ws):  # the WebSocket at /
        await ws.accept()
        await ws.send_text("root")
        await ws.close()


app = TickerApp()
