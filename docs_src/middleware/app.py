import time

from micropie import App, HttpMiddleware, WebSocketMiddleware

API_KEY = "let-me-in"


class RequireApiKey(HttpMiddleware):
    async def before_request(self, request):
        if request.path.startswith("/admin") and request.headers.get("x-api-key") != API_KEY:
            return {"status_code": 401, "body": "Missing or wrong API key"}  # answered here
        request.scope["started"] = time.perf_counter()  # the scope carries it along
        return None  # go on to the handler

    async def after_request(self, request, status_code, response_body, extra_headers):
        elapsed = time.perf_counter() - request.scope["started"]
        extra_headers.append(("Server-Timing", f"app;dur={elapsed * 1000:.1f}"))
        return None  # keep status and body


class OnlyFromLocalhost(WebSocketMiddleware):
    async def before_websocket(self, request):
        if request.client is None or request.client[0] != "127.0.0.1":
            return {"code": 1008, "reason": "local clients only"}
        return None

    async def after_websocket(self, request):
        pass


class AdminApp(App):
    async def index(self):
        return "public"

    async def admin(self):
        return "the admin page"

    async def ws_console(self, ws):
        await ws.accept()
        await ws.send_text("console ready")
        await ws.close()


app = AdminApp()
app.middlewares.append(RequireApiKey())
app.ws_middlewares.append(OnlyFromLocalhost())
