"""A ``GET /`` served beside concurrent worst-case request bodies: does any body stall the loop?

For each hypercorn worker (asyncio, trio) a micropie server runs in its own process
(``python -m micropie hostile_bodies:app``). Another process runs ``--attackers`` clients that
each post the same worst-case body again and again; this process sends a paced ``GET /`` every
``--interval`` seconds for ``--duration`` seconds and records each latency. The bodies, all at
the default ``max_body_size`` (16 MiB):

* ``urlencoded``: 16 fields of 1 MiB of ``%`` signs each (within every limit: parsed, 200);
* ``urlencoded-oversize``: one 8 MiB field of ``%`` signs (413 as soon as 1 MiB is in);
* ``json``: ``[0,0,...]`` at the default ``max_json_size`` (1 MiB; parsed, 200);
* ``json-lists``: ``[[],[],...]`` at 1 MiB, the costliest shape to build (parsed, 200);
* ``json-oversize``: ``[0,0,...]`` at ``max_body_size`` (413 from ``Content-Length``);
* ``multipart``: one 16 MiB file that the handler reads to the end (200);
* ``none``: no attackers, the baseline.

The target: GET p99 under 100 ms beside each body type. Loopback only; every loop is bounded
by ``--duration``. Run: ``python benchmarks/hostile_bodies.py`` (about 2 minutes), under
``flock -x /tmp/bench.lock`` on a shared machine. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import queue
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

from micropie import App

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024
BOUNDARY = "hostile-bodies-boundary"
TARGET_P99 = 0.100


class Hostile(App):
    async def index(self) -> str:
        return "up"

    async def sink(self) -> str:
        return "parsed"

    async def upload(self, file: Any) -> str:
        size = 0
        while chunk := await file["content"].get():
            size += len(chunk)
        return str(size)


app = Hostile()


def body_for(kind: str) -> tuple[str, bytes, str]:
    """``(path, body, content type)`` of one worst-case request."""
    if kind == "urlencoded":
        field = b"a=" + b"%" * (MIB - 2)
        return "/sink", b"&".join([field] * 16)[: 16 * MIB], "application/x-www-form-urlencoded"
    if kind == "urlencoded-oversize":
        return "/sink", b"a=" + b"%" * (8 * MIB), "application/x-www-form-urlencoded"
    if kind == "json":
        return "/sink", b"[" + b"0," * (MIB // 2 - 2) + b"0]", "application/json"
    if kind == "json-lists":
        return "/sink", b"[" + b"[]," * (MIB // 3 - 1) + b"[]]", "application/json"
    if kind == "json-oversize":
        return "/sink", b"[" + b"0," * (8 * MIB - 2) + b"0]", "application/json"
    if kind == "multipart":
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        content = b"x" * (16 * MIB - len(head) - len(tail) - 16)
        return "/upload", head + content + tail, f"multipart/form-data; boundary={BOUNDARY}"
    raise ValueError(kind)


def attack(url: str, kind: str, attackers: int, duration: float, answers: Any) -> None:
    """Post ``kind`` bodies from ``attackers`` concurrent clients until ``duration`` is up;
    put the count of each answer (status, or the error's class name) on ``answers``."""
    path, body, content_type = body_for(kind)
    counts: collections.Counter[str] = collections.Counter()

    async def one(client: httpx.AsyncClient, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                response = await client.post(
                    path, content=body, headers={"content-type": content_type}
                )
                counts[str(response.status_code)] += 1
            except httpx.HTTPError as error:
                counts[type(error).__name__] += 1  # a reset after an early 413: post again

    async def main() -> None:
        deadline = time.monotonic() + duration
        async with (
            httpx.AsyncClient(base_url=url, timeout=30) as client,
            anyio.create_task_group() as task_group,
        ):
            for _ in range(attackers):
                task_group.start_soon(one, client, deadline)

    anyio.run(main)
    answers.put(dict(counts))


async def measure(url: str, interval: float, duration: float) -> list[float]:
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            start = time.perf_counter()
            response = await client.get("/")
            latencies.append(time.perf_counter() - start)
            assert response.text == "up"
            await anyio.sleep(interval)
    return latencies


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(worker: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "micropie", "hostile_bodies:app", "--backend", worker,
         "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(200):  # up to 20 s
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the {worker} server did not start")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="asyncio,trio")
    parser.add_argument(
        "--kinds",
        default="none,urlencoded,urlencoded-oversize,json,json-lists,json-oversize,multipart",
    )
    parser.add_argument("--attackers", type=int, default=4)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--interval", type=float, default=0.02)
    args = parser.parse_args()
    rows = []
    for worker in args.workers.split(","):
        port = free_port()
        server = start_server(worker, port)
        url = f"http://127.0.0.1:{port}"
        try:
            for kind in args.kinds.split(","):
                attackers = None
                answers: Any = multiprocessing.Queue()
                if kind != "none":
                    attackers = multiprocessing.Process(
                        target=attack, args=(url, kind, args.attackers, args.duration + 1, answers)
                    )
                    attackers.start()
                    time.sleep(0.5)  # the attack is under way before the first GET
                latencies = anyio.run(measure, url, args.interval, args.duration)
                bodies = "-"
                if attackers is not None:
                    try:
                        counts = answers.get(timeout=60)
                        bodies = " ".join(f"{n}×{what}" for what, n in sorted(counts.items()))
                    except queue.Empty:
                        bodies = "attackers did not finish"
                    attackers.join(timeout=10)
                    if attackers.is_alive():
                        attackers.kill()
                p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
                verdict = "ok" if p99 < TARGET_P99 else "MISSES"
                rows.append(
                    (worker, kind, bodies, len(latencies), p50, p99, max(latencies), verdict)
                )
                print(f"{worker} {kind}: p50 {p50 * 1000:.1f} ms p99 {p99 * 1000:.1f} ms"
                      f" bodies {bodies}", file=sys.stderr)  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=20)
    print(
        "| worker | body | answers to the bodies | GETs | p50 ms | p99 ms | max ms | p99 < 100 ms |"
    )
    print("|---|---|---|---:|---:|---:|---:|---|")
    for worker, kind, bodies, count, p50, p99, worst, verdict in rows:
        print(
            f"| {worker} | {kind} | {bodies} | {count} | {p50 * 1000:.1f} | {p99 * 1000:.1f} "
            f"| {worst * 1000:.1f} | {verdict} |"
        )


if __name__ == "__main__":
    main()
