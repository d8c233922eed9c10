"""``Work``: an app whose handlers wait for the test to release them and record how they ended.

The cancellation tests use it, and the time bounds below, in process
(tests/lifetimes/test_cancellation.py) and on hypercorn (tests/lifetimes/test_cancellation_e2e.py,
which adds the routes only a real server needs).
"""

from __future__ import annotations

from typing import Any

import anyio

from micropie import App, shielded

#: A client that leaves (or drops its connection) is seen within two 50 ms sweeps; generous
#: under load.
PROMPTLY = 1.0
#: The documented guarantee (docs/lifetimes.md): a handler learns within 100 ms that its
#: client left.
NOTICED_WITHIN = 0.1
#: What a loaded machine may add to a documented time (the tests assert "no later than").
LATE = 0.3
#: How early a deadline may seem to fire: the handler reads the clock a moment after it started.
EARLY = 0.05


class Work(App):
    """Handlers that wait for ``release`` and record how they ended.

    ``started`` is set once a handler runs; ``cancelled`` if it was cancelled while it waited;
    otherwise its name goes to ``done`` and ``finished`` is set. ``after_request`` is for a
    middleware that records which requests it saw end.
    """

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.started = anyio.Event()
        self.release = anyio.Event()
        self.finished = anyio.Event()
        self.cancelled = anyio.Event()
        self.done: list[str] = []
        self.after_request: list[str] = []

    async def _work(self, name: str) -> str:
        self.started.set()
        try:
            await self.release.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise
        self.done.append(name)
        self.finished.set()
        return name

    async def plain(self) -> str:
        return await self._work("plain")

    @shielded
    async def kept(self) -> str:
        return await self._work("kept")

    @shielded
    async def kept_session(self) -> str:
        self.request.session["paid"] = "yes"
        return await self._work("kept_session")

    async def login(self) -> str:
        self.request.session["user"] = "alice"
        return "in"
