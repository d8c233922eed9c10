from micropie import App


class Differences(App):
    async def ws_index(self, ws):  # 0.32 never reached this at "/"
        await ws.accept()
        await ws.send_text("root")
        await ws.close()

    async def nothing(self):  # 0.32 sent the text "None"
        return None

    async def host(self):  # 0.32: None unless spelled "host"
        return self.request.headers.get("Host")

    async def double(self, n: int):  # 0.32 passed the string "21"
        return {"n": n * 2}

    async def fail(self):  # 0.32 kept this session change although the handler failed
        self.request.session["touched"] = True
        raise RuntimeError("boom")

    async def touched(self):
        return {"touched": self.request.session.get("touched", False)}

    async def seen(self):
        self.request.session["seen"] = True
        return "ok"


app = Differences(session_cookie_secure=False)
