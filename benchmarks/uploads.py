"""Multipart upload throughput: micropie against the ``multipart`` parser fed directly.

micropie parses ``multipart/form-data`` with ``multipart.PushMultipartParser`` while the body
arrives, and hands each file to the handler as a stream. This script asks how much of the
parser's own throughput survives the trip through the framework, in process (no server, no
network), on anyio's asyncio and trio backends:

* **direct** (the baseline): the body, in 64 KiB chunks, fed to ``PushMultipartParser`` with
  every event consumed and the file bytes counted. No event-loop round trips at all: it is the
  ceiling.
* **raw**: the smallest ASGI app that does the same (``receive()`` until the body ends, every
  message fed to the parser, the count sent back), called exactly like micropie. It costs what
  any ASGI app pays in this harness (a task per upload, ``receive``/``send`` round trips) and
  nothing else, so ``raw / direct`` is the best ratio a framework could reach here and
  ``micropie / raw`` is what micropie itself costs.
* **micropie**: ``await app(scope, receive, send)`` on an ``App`` whose ``upload(self, file)``
  drains ``file["content"]`` and returns the byte count; ``receive`` hands out the same chunks
  as ``http.request`` messages. The app's lifespan runs in a task group around the whole
  measurement, so the real code path (with the app's disconnect sweeper) is used.

Two cases: one 64 MiB file, and 200 uploads of 1 MiB at once (200 app calls in one task group,
against 200 direct parses one after the other). Every raw and micropie case is checked (status
200, the right count) before it is timed. Rounds interleave the three sides, rotating which
goes first; the scores are the median MiB/s of file content and the medians of the per-round
ratios. The issue's target is micropie / direct at least 0.8x.

Run: ``python benchmarks/uploads.py`` (about a minute) or ``--quick`` (a few seconds).
Prints markdown; writes JSON to ``benchmarks/results/multipart-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio
from multipart import PushMultipartParser

from micropie import App
from micropie.core.types import ASGIApp, Message, Receive, Send

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

BACKENDS = ("asyncio", "trio")
CHUNK = 64 * 1024  # bytes per http.request message / parser feed
MIB = 1024 * 1024
BOUNDARY = "----micropie-bench-boundary-7MA4YWxkTrZu0gW"
TARGET = 0.8  # from the issue: micropie at least 0.8x the parser alone

Chunks = list[bytes]


@dataclass(frozen=True)
class Case:
    """One workload: ``uploads`` requests at once, each carrying one file of ``file_size``."""

    name: str
    uploads: int
    file_size: int

    @property
    def total(self) -> int:
        return self.uploads * self.file_size


SIDES = ("direct", "raw", "micropie")


@dataclass
class Cell:
    """The samples of one case on one backend, in MiB/s of file content."""

    backend: str
    case: str
    direct: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    micropie: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """micropie / direct, the issue's score."""
        return self.ratio_of(self.micropie, self.direct)

    @staticmethod
    def ratio_of(upper: list[float], lower: list[float]) -> float:
        """The median of the per-round ratios: a round's samples share the machine's mood."""
        return statistics.median(a / b for a, b in zip(upper, lower, strict=True))


# --------------------------------------------------------------------------- the request body


def build_body(file_size: int) -> Chunks:
    """A ``multipart/form-data`` body with one file part, already cut into ``CHUNK`` pieces.

    Cutting happens here, outside the timing, so both sides are handed the very same bytes
    objects. The content is not all one byte value, so the parser's boundary search cannot
    take a shortcut that real files would not allow.
    """
    pattern = bytes(range(256))
    content = (pattern * (file_size // len(pattern) + 1))[:file_size]
    body = (
        (
            f"--{BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="file"; filename="data.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    return [body[start : start + CHUNK] for start in range(0, len(body), CHUNK)]


# --------------------------------------------------------------------------- direct parsing


def parse_directly(chunks: Chunks) -> int:
    """Feed ``chunks`` to the parser, consume every event, return the file bytes seen."""
    size = 0
    parser = PushMultipartParser(BOUNDARY)
    for chunk in chunks:
        for event in parser.parse(chunk):
            if isinstance(event, (bytes, bytearray)):
                size += len(event)
    parser.close()  # raises if the closing boundary never came
    return size


async def run_direct(case: Case, chunks: Chunks) -> float:
    """``case.uploads`` parses one after the other (no I/O, so no concurrency to gain)."""
    start = time.perf_counter()
    for _ in range(case.uploads):
        size = parse_directly(chunks)
    elapsed = time.perf_counter() - start
    if size != case.file_size:
        raise RuntimeError(f"direct parse counted {size} bytes, expected {case.file_size}")
    return elapsed


# --------------------------------------------------------------------------- a raw ASGI app


async def raw_upload_app(scope: Message, receive: Receive, send: Send) -> None:
    """The least an ASGI app can do with the upload: parse every message, answer the count."""
    parser = PushMultipartParser(BOUNDARY)
    size = 0
    more_body = True
    while more_body:
        message = await receive()
        more_body = message.get("more_body", False)
        for event in parser.parse(message.get("body", b"")):
            if isinstance(event, (bytes, bytearray)):
                size += len(event)
    parser.close()
    body = str(size).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- through micropie


class UploadApp(App):
    async def upload(self, file: dict[str, Any]) -> str:
        size = 0
        while (chunk := await file["content"].get()) is not None:
            size += len(chunk)
        return str(size)


def build_app() -> App:
    # No body timeout: a busy shared machine must not turn into 408s mid-benchmark.
    return UploadApp(max_body_size=None, body_timeout=None)


def upload_scope(body_size: int) -> Message:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/upload",
        "raw_path": b"/upload",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
            (b"content-length", str(body_size).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def post_upload(app: ASGIApp, chunks: Chunks, scope: Message) -> tuple[int, bytes]:
    """One request: returns the status and body the app sent.

    ``receive`` hands out the chunks back to back; after the last one it waits until the
    response is complete and then reports ``http.disconnect``, as a server does for a client
    that keeps its connection open.
    """
    position = 0
    done = anyio.Event()
    status = 0
    body = bytearray()

    async def receive() -> Message:
        nonlocal position
        if position < len(chunks):
            chunk = chunks[position]
            position += 1
            return {"type": "http.request", "body": chunk, "more_body": position < len(chunks)}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    await app(dict(scope), receive, send)
    return status, bytes(body)


async def check_app(side: str, app: ASGIApp, case: Case, chunks: Chunks, scope: Message) -> None:
    status, body = await post_upload(app, chunks, scope)
    if status != 200 or body != str(case.file_size).encode():
        raise RuntimeError(f"{case.name}: {side} answered {status} {body[:200]!r}")


async def run_app(app: ASGIApp, case: Case, chunks: Chunks, scope: Message) -> float:
    """``case.uploads`` requests at once in one task group; every answer is checked after."""
    answers: list[tuple[int, bytes]] = []

    async def one() -> None:
        answers.append(await post_upload(app, chunks, scope))

    start = time.perf_counter()
    async with anyio.create_task_group() as task_group:
        for _ in range(case.uploads):
            task_group.start_soon(one)
    elapsed = time.perf_counter() - start
    expected = (200, str(case.file_size).encode())
    if len(answers) != case.uploads or any(answer != expected for answer in answers):
        raise RuntimeError(f"{case.name}: an answer was wrong during timing")
    return elapsed


@asynccontextmanager
async def lifespan(app: App) -> AsyncIterator[None]:
    """Run the app's lifespan (startup, then shutdown on exit) around the block."""
    to_app_send, to_app = anyio.create_memory_object_stream[Message](2)
    from_app_send, from_app = anyio.create_memory_object_stream[Message](2)

    async def run() -> None:
        async with to_app, from_app_send:
            await app(
                {"type": "lifespan", "asgi": {"version": "3.0"}}, to_app.receive, from_app_send.send
            )

    async with anyio.create_task_group() as task_group, to_app_send, from_app:
        task_group.start_soon(run)
        await to_app_send.send({"type": "lifespan.startup"})
        if (await from_app.receive())["type"] != "lifespan.startup.complete":
            raise RuntimeError("lifespan startup failed")
        yield
        await to_app_send.send({"type": "lifespan.shutdown"})
        if (await from_app.receive())["type"] != "lifespan.shutdown.complete":
            raise RuntimeError("lifespan shutdown failed")


# --------------------------------------------------------------------------- the measurement


async def measure_backend(backend: str, cases: list[Case], rounds: int) -> list[Cell]:
    """All rounds of all cases on the running backend, the three sides interleaved."""
    bodies = {case.file_size: build_body(case.file_size) for case in cases}
    cells = [Cell(backend, case.name) for case in cases]
    app = build_app()
    apps: dict[str, ASGIApp] = {"raw": raw_upload_app, "micropie": app}
    async with lifespan(app):
        for case in cases:  # check, and warm up, before anything is timed
            chunks = bodies[case.file_size]
            scope = upload_scope(sum(map(len, chunks)))
            for side, asgi_app in apps.items():
                await check_app(side, asgi_app, case, chunks, scope)
            parse_directly(chunks)
        for number in range(rounds):
            for case, cell in zip(cases, cells, strict=True):
                chunks = bodies[case.file_size]
                scope = upload_scope(sum(map(len, chunks)))
                shift = number % len(SIDES)
                for side in SIDES[shift:] + SIDES[:shift]:
                    gc.collect()  # no sample pays for the garbage of the one before
                    if side == "direct":
                        elapsed = await run_direct(case, chunks)
                    else:
                        elapsed = await run_app(apps[side], case, chunks, scope)
                    getattr(cell, side).append(case.total / MIB / elapsed)
    return cells


def versions() -> dict[str, str]:
    names = ("anyio", "trio", "multipart")
    found = {name: metadata.version(name) for name in names}
    found["python"] = platform.python_version()
    return found


def report(cells: list[Cell], cases: list[Case]) -> list[str]:
    sizes = {case.name: case for case in cases}
    lines = [
        "| backend | case | direct MiB/s | raw ASGI MiB/s | micropie MiB/s"
        " | raw / direct | micropie / raw | **micropie / direct** |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in cells:
        median = statistics.median
        lines.append(
            f"| {cell.backend} | {sizes[cell.case].name} | {median(cell.direct):,.0f}"
            f" | {median(cell.raw):,.0f} | {median(cell.micropie):,.0f}"
            f" | {cell.ratio_of(cell.raw, cell.direct):.2f}x"
            f" | {cell.ratio_of(cell.micropie, cell.raw):.2f}x | **{cell.ratio:.2f}x** |"
        )
    worst = min(cells, key=lambda cell: cell.ratio)
    verdict = "meets" if worst.ratio >= TARGET else "misses"
    lines.append("")
    lines.append(
        f"Worst micropie / direct: {worst.ratio:.2f}x ({worst.backend}, {worst.case}): "
        f"{verdict} the >= {TARGET}x target."
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per case")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="anyio backends")
    parser.add_argument("--quick", action="store_true", help="3 rounds, 8 MiB and 20 x 1 MiB")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 3
        cases = [Case("one 8 MiB file", 1, 8 * MIB), Case("20 x 1 MiB at once", 20, MIB)]
    else:
        cases = [Case("one 64 MiB file", 1, 64 * MIB), Case("200 x 1 MiB at once", 200, MIB)]
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]

    cells: list[Cell] = []
    for backend in backends:
        cells += anyio.run(measure_backend, backend, cases, args.rounds, backend=backend)

    lines = report(cells, cases)
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"multipart-{stamp}.json"
    record = {
        "settings": {"rounds": args.rounds, "chunk": CHUNK, "quick": args.quick},
        "cases": [asdict(case) for case in cases],
        "versions": versions(),
        "loadavg": list(os.getloadavg()),
        "cells": [
            {
                **asdict(cell),
                "ratio": cell.ratio,
                "raw_ratio": cell.ratio_of(cell.raw, cell.direct),
                "micropie_to_raw": cell.ratio_of(cell.micropie, cell.raw),
            }
            for cell in cells
        ],
        "target": TARGET,
    }
    path.write_text(json.dumps(record, indent=2))
    print(f"\nWrote {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
