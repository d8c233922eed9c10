from micropie import App


class HelloApp(App):
    async def index(self):
        return "Hello from behind the proxy"


app = HelloApp()
