import anyio

from micropie import App, shielded, time_limit


class Shop(App):
    def __init__(self):
        super().__init__(request_timeout=30)  # no handler runs longer, unless it says so
        self.ledger = []  # stands in for a database

    async def _write(self, *entry):
        await anyio.sleep(0.2)  # a database round trip
        self.ledger.append(entry)

    # --8<-- [start:shield]
    async def transfer(self, amount: int):
        with anyio.CancelScope(shield=True):  # this write completes even if the client leaves
            await self._write("transfer", amount)
        await self._write("notify", amount)  # a client that left cancels the handler here
        return "done"

    # --8<-- [end:shield]
    # --8<-- [start:shielded]
    @shielded
    async def checkout(self, order: str):
        await self._write("charge", order)
        await self._write("ship", order)  # runs to the end, even if the client has left
        return "ordered"

    # --8<-- [end:shielded]
    # --8<-- [start:start_soon]
    async def receipt(self, order: str):
        self.start_soon(self._write, "receipt", order)  # outlives the request, not the app
        return "queued"

    # --8<-- [end:start_soon]
    # --8<-- [start:deadlines]
    @time_limit(0.2)  # overrides request_timeout for this handler
    async def report(self):
        await anyio.sleep(60)  # a slow query: the client gets 503 after 0.2 s
        return "never sent"

    @shielded
    async def export(self, rows: int = 1000):
        done = 0
        while done < rows and not await self.request.is_disconnected():
            await self._write("row", done)  # stops early when nobody waits for it
            done += 1
        return f"{done} rows"

    # --8<-- [end:deadlines]


app = Shop()
