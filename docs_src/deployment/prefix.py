from micropie import App, url_path


class ShopApp(App):
    async def index(self):
        # Links carry the prefix the proxy serves the app under ("/shop/cart" at /shop).
        return f'<a href="{url_path(self.request, "/cart")}">cart</a>'

    async def cart(self):
        return {"items": [], "root_path": self.request.scope["root_path"]}

    async def checkout(self):
        return self._redirect(url_path(self.request, "/cart"))

    async def ws_updates(self, ws):
        await ws.accept()
        await ws.send_text(f"updates for {url_path(self.request, '/cart')}")


app = ShopApp()
