from contextlib import asynccontextmanager

from micropie import App
from micropie.broadcast import Broadcast

broadcast = Broadcast("memory://")


class Database:  # a stand-in for your database client
    def __init__(self):
        self.connected = False

    @asynccontextmanager
    async def connect(self):
        self.connected = True
        try:
            yield self
        finally:
            self.connected = False


database = Database()


# --8<-- [start:lifespan]
@asynccontextmanager
async def lifespan(app):
    async with broadcast, database.connect() as db:
        yield {"broadcast": broadcast, "db": db}


# --8<-- [end:lifespan]


class StatusApp(App):
    async def index(self):
        return {"db": self.request.state["db"].connected}


app = StatusApp(lifespan=lifespan)
