"""One allocator setting for servers on glibc: socket receive buffers off ``mmap``.

asyncio's selector transport receives with ``sock.recv(256 KiB)``: CPython allocates a 256 KiB
bytes object, the kernel fills a few bytes of it, and CPython shrinks it. glibc serves blocks
above its mmap threshold (128 KiB when a process starts) with ``mmap``, shrinks them with
``mremap`` and frees them with ``munmap``: three system calls and a page fault for every message
a server receives. glibc raises the threshold by itself when it frees a large mapped block, but
these blocks are freed only after they were shrunk, so whether a process ever leaves that path
depends on what happened to be freed while it started: on this project's WebSocket echo
benchmark (hypercorn's asyncio worker) the same code cost about a third more server CPU per echo
in some processes than in others, depending on nothing but the directory it was installed in
(``strace -c``: one ``mmap``, ``mremap`` and ``munmap`` per echo in the slow processes, none in
the fast ones; the figures are in benchmarks/README.md, "WebSocket").

Freeing one large block once raises the threshold for good. Harmless elsewhere (other C
libraries, and trio, which receives 64 KiB at a time): one 1 MiB allocation per process.
"""

from __future__ import annotations

from functools import cache

__all__ = ["keep_receive_buffers_off_mmap"]

#: Larger than asyncio's 256 KiB receive buffer and glibc's default 128 KiB threshold, and far
#: below the 32 MiB up to which glibc adjusts it.
WARM_UP_BLOCK = 1024 * 1024


@cache
def keep_receive_buffers_off_mmap() -> None:
    """Allocate and free one large block (once per process; see the module docstring)."""
    block = bytearray(WARM_UP_BLOCK)
    del block
