"""What a ``Broadcast`` needs from a backend, and the memory backend (this process only)."""

from __future__ import annotations

from typing import Protocol

import anyio
import anyio.abc
import anyio.lowlevel

from micropie.broadcast._local import _Hub


class _Backend(Protocol):
    """How a ``Broadcast`` reaches the other subscribers (see the two implementations)."""

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None: ...

    def stop(self) -> None: ...

    async def publish(self, channel: str, data: str) -> None: ...

    async def listen(self, channel: str) -> None: ...

    async def unlisten(self, channel: str) -> None: ...


class _MemoryBackend:
    """This process only: publishing is local delivery."""

    def __init__(self, hub: _Hub) -> None:
        self._hub = hub

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()

    def stop(self) -> None:
        pass

    async def publish(self, channel: str, data: str) -> None:
        self._hub.deliver(channel, data)
        await anyio.lowlevel.checkpoint()

    async def listen(self, channel: str) -> None:
        pass

    async def unlisten(self, channel: str) -> None:
        pass
