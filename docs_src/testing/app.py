import anyio

from micropie import App


class NotesApp(App):
    async def login(self, username):
        self.request.regenerate_session()
        self.request.session["user"] = username
        return "Logged in"

    async def me(self):
        return self.request.session.get("user", "nobody")

    async def numbers(self):
        async def count():
            n = 0
            while True:  # endless: the client decides when to stop
                yield f"{n}\n"
                n += 1
                await anyio.sleep(0)

        return count()

    async def ws_shout(self, ws):
        await ws.accept()
        async for text in ws:
            await ws.send_text(text.upper())


app = NotesApp()
