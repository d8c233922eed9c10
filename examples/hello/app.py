"""The smallest micropie app: routes are methods.

Run it:  python -m micropie examples.hello.app:app --backend trio
    or:  hypercorn --worker-class trio examples.hello.app:app
Then:    curl http://127.0.0.1:8000/greet/Alice
"""

from __future__ import annotations

import anyio

from micropie import App


class HelloApp(App):
    async def index(self) -> str:
        visits = self.request.session.get("visits", 0) + 1
        self.request.session["visits"] = visits
        return f"<h1>Hello from micropie</h1><p>Visits this session: {visits}</p>"

    async def greet(self, first_name: str = "World", last_name: str | None = None) -> str:
        name = f"{first_name} {last_name}" if last_name else first_name
        return f"Hello, {name}!"

    async def add(self, a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    async def slow(self, seconds: float = 1.0) -> str:
        await anyio.sleep(seconds)  # a client that leaves before this ends cancels it
        return "done"


app = HelloApp(session_cookie_secure=False)
