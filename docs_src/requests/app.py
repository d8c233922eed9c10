from micropie import App


class Api(App):
    async def info(self):
        request = self.request
        return {
            "method": request.method,
            "path": request.path,
            "agent": request.headers.get("User-Agent"),  # any case works
            "page": request.query("page", "1"),  # the first value, or a default
            "tags": request.query_params.get("tag", []),  # every value
            "theme": request.cookies.get("theme"),
        }

    async def echo(self):  # POST a JSON body
        return {"you sent": self.request.json()}

    async def signup(self, email, newsletter="no"):  # form fields or JSON keys bind by name
        return 201, f"{email} (newsletter: {newsletter})"

    async def raw(self):  # the body as bytes, e.g. to check a webhook's signature
        return 200, self.request.body, [("Content-Type", "application/octet-stream")]

    async def teapot(self):  # (status, body, headers)
        return 418, "I'm a teapot", [("Content-Type", "text/plain"), ("X-Brew", "earl grey")]

    async def nothing(self):  # None: an empty body
        return None

    async def old(self):  # a 302 to a percent-encoded Location
        return self._redirect("/new place?x=1")


app = Api()
