from micropie import App


class ShopApp(App):
    async def index(self, *path):  # "/" and every path no other handler takes
        if path:
            return 404, f"No page at /{'/'.join(path)}"
        return "Welcome to the shop"

    async def item(self, item_id: int, colour="any"):  # /item/7?colour=red
        return {"id": item_id, "colour": colour}

    async def files(self, *parts):  # /files/a/b/c → parts == ("a", "b", "c")
        return "/".join(parts)

    async def search(self, q, **filters):  # /search?q=tea&sort=price
        return {"q": q, "filters": filters}

    async def cart(self):  # one handler for every method: look at the request
        if self.request.method == "POST":
            return 201, "added"
        return "your cart"

    async def _helper(self):  # private: never a route
        return "secret"


app = ShopApp()
