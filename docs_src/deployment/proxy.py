from hypercorn.middleware import ProxyFixMiddleware

from micropie import App


class HelloApp(App):
    async def whoami(self):
        host = self.request.client[0] if self.request.client else "unknown"
        return {"client": host, "scheme": self.request.scope["scheme"]}


# Trust one proxy in front: X-Forwarded-For and X-Forwarded-Proto become the scope's
# client and scheme. Serve `app`; lifespan events pass through to HelloApp.
app = ProxyFixMiddleware(HelloApp(), mode="legacy", trusted_hops=1)
