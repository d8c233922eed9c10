from micropie import App


class HelloApp(App):
    async def index(self):
        return "Hello, world!"

    async def greet(self, name="World"):  # /greet/Alice or /greet?name=Alice
        return f"Hello, {name}!"

    async def add(self, a: int, b: int):  # /add/1/2 → {"sum": 3}
        return {"sum": a + b}

    async def ws_echo(self, ws):  # a WebSocket at /echo
        await ws.accept()
        async for message in ws:  # ends when the client leaves
            await ws.send_text(f"Echo: {message}")


app = HelloApp()
