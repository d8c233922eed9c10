"""The apps the load suite serves, and the script that serves one of them (``benchmarks/load.py``).

Two apps answer the same routes, so that every scenario can run against both in the same run:
**micropie** (``from micropie import App``) and **starlette**, the anchor.

| route | answer |
|---|---|
| `GET /` | `Hello, world!` |
| `GET /slow?seconds=S` | sleeps S seconds (a *live handler* meanwhile), then `done` |
| `GET /stats` | `{"live": N, "tasks": T}`: handlers running now, tasks on the event loop |
| `POST /upload` (multipart, field `file`) | `{"size": N, "sha256": "..."}` of the file's bytes |
| `POST /form` (urlencoded) | the number of fields |
| `POST /json` | the number of items in the JSON value |
| WebSocket `/echo` | every text message sent back (a *live handler* while open) |
| `GET /memory?action=...` | tracemalloc sites (``LOAD_TRACEMALLOC=1``), gc, ``malloc_trim`` |

"Live handlers" are counted by the handlers themselves (``counted()`` around their body), so
the count drops only once a handler has really ended (returned, raised or been cancelled): it
is the app's own view of what is still running, the counterpart of psutil's view from outside.

Run as a script, this module serves one app on hypercorn in this process through
``micropie.serving.run`` (SIGTERM or SIGINT stop it gracefully)::

    python benchmarks/load_apps.py micropie trio 8123 --graceful-timeout 5

Nothing here imports the load driver's clients; the driver imports nothing from here but names.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import os
import sys
import tempfile
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import sniffio

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run as a script: make the repository's package win
    sys.path.insert(0, str(HERE.parent))

APP_NAMES = ("micropie", "starlette")

#: Handlers running right now, counted by the handlers (see ``counted``).
_live = 0


@contextmanager
def counted() -> Iterator[None]:
    """Count the enclosed handler as live until it ends, however it ends."""
    global _live
    _live += 1
    try:
        yield
    finally:
        _live -= 1


def running_tasks() -> int:
    """How many tasks the event loop runs now (asyncio: all tasks; trio: the whole task tree)."""
    if sniffio.current_async_library() == "trio":
        import trio

        count = 0
        pending = [trio.lowlevel.current_root_task()]
        while pending:
            task = pending.pop()
            count += 1
            for nursery in task.child_nurseries:
                pending.extend(nursery.child_tasks)
        return count
    import asyncio

    return len(asyncio.all_tasks())


def stats() -> dict[str, int]:
    return {"live": _live, "tasks": running_tasks()}


# --------------------------------------------------------------------------- memory probes

_baseline: tracemalloc.Snapshot | None = None


def _malloc_trim() -> bool:
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def allocators() -> dict[str, Any]:
    """Where the process's memory sits: glibc's heap (used, free) and mmaps, pymalloc's arenas."""
    result: dict[str, Any] = {}
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        result["glibc_heap_mib"] = info.arena / 2**20
        result["glibc_heap_in_use_mib"] = info.uordblks / 2**20
        result["glibc_heap_free_mib"] = info.fordblks / 2**20
        result["glibc_mmapped_mib"] = info.hblkhd / 2**20
    except (OSError, AttributeError):
        pass
    # sys._debugmallocstats() writes to the C stderr: read it through a temporary file.
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        try:
            os.dup2(capture.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        for line in capture.read().decode(errors="replace").splitlines():
            for key, label in (
                ("pymalloc_arenas", "# arenas allocated current"),
                ("pymalloc_arenas_highwater", "# arenas highwater mark"),
                ("pymalloc_used_mib", "# bytes in allocated blocks"),
                ("pymalloc_free_mib", "# bytes in available blocks"),
            ):
                if line.startswith(label):
                    value = int(line.split("=")[-1].strip().replace(",", ""))
                    result[key] = value / 2**20 if key.endswith("mib") else value
    return result


def cyclic_garbage() -> dict[str, Any]:
    """The types of the objects that only the cycle collector would free now, most common first."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    counts: dict[str, int] = {}
    found = gc.collect()
    for thing in gc.garbage:
        name = f"{type(thing).__module__}.{type(thing).__qualname__}"
        counts[name] = counts.get(name, 0) + 1
    gc.garbage.clear()
    gc.set_debug(0)
    top = sorted(counts.items(), key=lambda item: -item[1])[:20]
    return {"objects": found, "types": dict(top)}


def memory_probe(action: str) -> dict[str, Any]:
    """What ``GET /memory?action=...`` answers.

    With tracemalloc on: ``baseline`` takes the snapshot later ones are compared with;
    ``sites`` answers the 15 allocation sites whose retained size grew most since then
    (file:line, KiB, count). Always: ``collect`` runs ``gc.collect()``; ``garbage`` names what
    the cycle collector would free now; ``allocators`` says where memory sits; ``trim`` asks
    glibc to give free heap pages back to the kernel.
    """
    global _baseline
    if action == "collect":
        return {"collected": gc.collect()}
    if action == "trim":
        return {"trimmed": _malloc_trim()}
    if action == "allocators":
        return allocators()
    if action == "garbage":
        return cyclic_garbage()
    if not tracemalloc.is_tracing():
        return {"error": "start the server with LOAD_TRACEMALLOC=1"}
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    if action == "baseline" or _baseline is None:
        _baseline = snapshot
        return {"traced_kib": tracemalloc.get_traced_memory()[0] // 1024}
    sites = []
    for diff in snapshot.compare_to(_baseline, "lineno")[:15]:
        frame = diff.traceback[0]
        sites.append(
            {
                "site": f"{frame.filename}:{frame.lineno}",
                "kib": round(diff.size / 1024, 1),
                "kib_diff": round(diff.size_diff / 1024, 1),
                "count_diff": diff.count_diff,
            }
        )
    return {"traced_kib": tracemalloc.get_traced_memory()[0] // 1024, "sites": sites}


# --------------------------------------------------------------------------- micropie


def build_micropie() -> Any:
    from micropie import App

    class LoadApp(App):
        async def index(self) -> str:
            return "Hello, world!"

        async def slow(self) -> str:
            with counted():
                await anyio.sleep(float(self.request.query("seconds", "30")))
            return "done"

        async def stats(self) -> dict[str, int]:
            return stats()

        async def upload(self, file: dict[str, Any]) -> dict[str, Any]:
            with counted():
                digest = hashlib.sha256()
                size = 0
                while (chunk := await file["content"].get()) is not None:
                    digest.update(chunk)
                    size += len(chunk)
            return {"size": size, "sha256": digest.hexdigest()}

        async def form(self) -> str:
            return str(len(self.request.body_params))

        async def json(self) -> str:
            value = self.request.json()
            return str(len(value)) if isinstance(value, (list, dict)) else "1"

        async def memory(self) -> dict[str, Any]:
            return memory_probe(self.request.query("action", "sites"))

        async def ws_echo(self, ws: Any) -> None:
            with counted():
                await ws.accept()
                async for message in ws:
                    await ws.send_text(message)

    # No per-receive body timeout: a loaded 2-core machine must not turn uploads into 408s.
    return LoadApp(body_timeout=None)


# --------------------------------------------------------------------------- starlette


def build_starlette() -> Any:
    from apps import _ensure_python_multipart  # this folder is on sys.path

    _ensure_python_multipart()
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    async def index(request: Request) -> PlainTextResponse:
        return PlainTextResponse("Hello, world!")

    async def slow(request: Request) -> PlainTextResponse:
        with counted():
            await anyio.sleep(float(request.query_params.get("seconds", "30")))
        return PlainTextResponse("done")

    async def stats_route(request: Request) -> JSONResponse:
        return JSONResponse(stats())

    async def upload(request: Request) -> JSONResponse:
        with counted():
            async with request.form(max_files=1000, max_fields=1000) as form:
                file = form["file"]
                digest = hashlib.sha256()
                size = 0
                while chunk := await file.read(64 * 1024):  # type: ignore[union-attr]
                    digest.update(chunk)
                    size += len(chunk)
        return JSONResponse({"size": size, "sha256": digest.hexdigest()})

    async def form(request: Request) -> PlainTextResponse:
        async with request.form() as fields:
            return PlainTextResponse(str(len(fields)))

    async def json_route(request: Request) -> PlainTextResponse:
        try:
            value = await request.json()
        except ValueError:
            return PlainTextResponse("Bad JSON", status_code=400)
        return PlainTextResponse(str(len(value)) if isinstance(value, (list, dict)) else "1")

    async def memory(request: Request) -> JSONResponse:
        return JSONResponse(memory_probe(request.query_params.get("action", "sites")))

    async def echo(websocket: WebSocket) -> None:
        with counted():
            await websocket.accept()
            try:
                async for message in websocket.iter_text():
                    await websocket.send_text(message)
            except WebSocketDisconnect:
                pass

    return Starlette(
        routes=[
            Route("/", index),
            Route("/slow", slow),
            Route("/stats", stats_route),
            Route("/upload", upload, methods=["POST"]),
            Route("/form", form, methods=["POST"]),
            Route("/json", json_route, methods=["POST"]),
            Route("/memory", memory),
            WebSocketRoute("/echo", echo),
        ]
    )


def build(name: str) -> Any:
    if name == "micropie":
        return build_micropie()
    if name == "starlette":
        return build_starlette()
    raise ValueError(f"unknown app {name!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app", choices=APP_NAMES)
    parser.add_argument("worker", choices=("asyncio", "trio"))
    parser.add_argument("port", type=int)
    parser.add_argument("--graceful-timeout", type=float, default=5.0)
    args = parser.parse_args()
    if os.environ.get("LOAD_TRACEMALLOC"):
        tracemalloc.start()
    from micropie.serving import run

    run(
        build(args.app),
        host="127.0.0.1",
        port=args.port,
        backend=args.worker,
        graceful_timeout=args.graceful_timeout,
        backlog=4096,
        loglevel="warning",
    )


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
