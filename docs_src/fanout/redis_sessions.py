import os

from micropie import App

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


class MyApp(App):
    async def index(self):
        visits = self.request.session.get("visits", 0) + 1
        self.request.session["visits"] = visits
        return f"Visit number {visits}"


# --8<-- [start:sessions]
from micropie.backends.redis import RedisSessionBackend  # noqa: E402

sessions = RedisSessionBackend(REDIS_URL)
app = MyApp(session_backend=sessions, lifespan=sessions.lifespan)
# --8<-- [end:sessions]
