import anyio

from micropie import App


class FeedApp(App):
    def __init__(self, **settings):
        super().__init__(**settings)
        self.open_feeds = 0

    async def feed(self):
        async def lines():
            self.open_feeds += 1
            try:
                n = 0
                while True:  # endless: stops when the client leaves
                    yield f"line {n}\n"
                    n += 1
                    await anyio.sleep(0.01)
            finally:
                self.open_feeds -= 1  # runs when the client leaves

        return lines()


app = FeedApp()
