"""Load and fault suite: does the server hold under load, hostile clients and shutdown?

Every scenario runs against a real server, ``benchmarks/load_apps.py`` (micropie, and Starlette
serving the same routes as the anchor) on hypercorn's asyncio and trio workers, in a subprocess
bound to 127.0.0.1, so that psutil reads *its* memory, file descriptors and exit status. The
clients run here, on asyncio: a minimal HTTP/1.1 keep-alive client (``Http``) and the
``websockets`` library. Counters come from outside (psutil on the server's pid) and from the app
under test (``GET /stats``: handlers running, tasks on the loop).

| scenario | load | pass criterion |
|---|---|---|
| ``ws_hold`` | 1,000 WebSockets held 30 s, one echo a second each | 0 errors (RSS peak shown) |
| ``gets`` | 10,000 ``GET /`` at concurrency 50 | 0 errors (p50/p99 reported) |
| ``uploads`` | 200 concurrent 1 MiB multipart uploads | all 200 answered with intact bytes |
| ``attack`` | the same GETs beside five attackers (below) | 0 errors, p99 ≤ 2x ``gets`` p99 |
| ``soak`` | 3 min of paced GETs and WebSocket connect/echo/close | RSS, fds, tasks flat (±10 %) |
| ``drop`` | 500 clients drop a running request at once | live handlers back to 0 within 1 s |
| ``sigterm`` | SIGTERM with 200 WebSockets open, 50 requests in flight | all 1001, exit 0 in time |

The five attackers, each repeating its attack for as long as the GETs run: a body that stalls
after 10 bytes, an 8 MiB urlencoded body of ``%`` signs, the JSON ``"[" * 100000``, a
multipart body of 1,001 parts, and slowloris (a header line per second, never finishing).

"Flat" (``soak``): after the warm-up (a quarter of the run), the median of the last third of
the once-a-second samples is within 10 % of the median of the first third (for counts, at least
2 either way: in-flight requests come and go).

Only micropie's rows decide the exit status; Starlette's are printed and checked the same way,
as a reference. Every wait is bounded. Results: a markdown table on stdout, everything in
``benchmarks/results/load-<timestamp>.json``.

Run: ``nox -s load`` (about 12 minutes), ``nox -s load -- --smoke`` (CI: micropie only, small
numbers, under a minute), or ``python benchmarks/load.py --help`` in an environment with the
``bench`` extra, psutil and websockets.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WORKERS = ("asyncio", "trio")
APPS = ("micropie", "starlette")
SCENARIOS = ("gets", "uploads", "ws_hold", "soak", "drop", "attack", "sigterm")
MIB = 1024 * 1024
BOUNDARY = "load-suite-boundary-9f3c1a"
START_TIMEOUT = 20.0
REQUEST_TIMEOUT = 30.0  # one request or WebSocket step, under load on a shared machine


@dataclass(frozen=True)
class Settings:
    """The size of every scenario (``--smoke`` shrinks them)."""

    websockets: int = 1000
    hold_seconds: float = 30.0
    gets: int = 10_000
    concurrency: int = 50
    uploads: int = 200
    upload_size: int = MIB
    soak_seconds: float = 180.0
    drops: int = 500
    drop_deadline: float = 1.0
    shutdown_websockets: int = 200
    shutdown_requests: int = 50
    graceful_timeout: float = 3.0
    attack_within: float = 120.0  # the GETs beside the attackers must be sent by then
    attackers: tuple[str, ...] | None = None  # None: all five
    #: Whether the attack's GET p99 must stay within 2x the baseline. The smoke run (CI) only
    #: reports it: a latency bound on a few hundred requests on a shared machine is a timed test,
    #: and timed tests are flaky; the full run keeps it as a criterion.
    latency_is_criterion: bool = True


SMOKE = Settings(
    websockets=100,
    hold_seconds=3.0,
    gets=1500,
    uploads=20,
    soak_seconds=6.0,
    drops=100,
    shutdown_websockets=20,
    shutdown_requests=5,
    graceful_timeout=2.0,
    attack_within=8.0,
    latency_is_criterion=False,
)


@dataclass
class Row:
    """One scenario's outcome on one server."""

    worker: str
    app: str
    scenario: str
    result: str
    criterion: str
    passed: bool
    data: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``benchmarks/load_apps.py APP WORKER PORT`` in a subprocess, watched through psutil."""

    def __init__(self, app: str, worker: str, graceful_timeout: float, env: dict[str, str]):
        self.app = app
        self.worker = worker
        self.port = free_port()
        logs = RESULTS / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"load-{worker}-{app}.log"
        command = [
            sys.executable,
            str(HERE / "load_apps.py"),
            app,
            worker,
            str(self.port),
            "--graceful-timeout",
            str(graceful_timeout),
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}
            )
        self.ps = psutil.Process(self.process.pid)
        self._stats_connection = Http(self.port)

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                status, _ = await request(self.port, "GET", "/stats", within=2.0)
                if status == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.1)
        self.process.kill()
        raise RuntimeError(f"{self.app} on {self.worker} did not start:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def fds(self) -> int:
        return int(self.ps.num_fds())

    async def stats(self) -> dict[str, int]:
        """``GET /stats`` on one kept-alive connection, so that polling adds no connections.

        (Hypercorn's asyncio worker keeps a connection the client closed for up to its
        keep-alive timeout: a fresh connection per poll would count in the task numbers.)
        """
        for attempt in range(2):
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    status, body = await self._stats_connection.request("GET", "/stats")
                break
            except (OSError, HttpError):  # the server closed the idle connection: reconnect
                self._stats_connection.abort()
                if attempt:
                    raise
        if status != 200:
            raise RuntimeError(f"/stats answered {status}")
        result: dict[str, int] = json.loads(body)
        return result

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``: the exit status (None if killed)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
                return None
        return self.process.returncode


# --------------------------------------------------------------------------- an HTTP/1.1 client


class HttpError(Exception):
    """The server answered something that is not HTTP/1.1, or closed mid-response."""


class Http:
    """One keep-alive HTTP/1.1 connection: small, so the clients cost the server's CPU little."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    def abort(self) -> None:
        """Drop the connection at once (RST), as a client that vanishes does."""
        if self.writer is not None:
            self.writer.transport.abort()
        self.reader = self.writer = None

    async def send(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> None:
        if self.writer is None:
            await self.open()
        assert self.writer is not None
        lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1"]
        all_headers = {"content-length": str(len(body))} if body or method == "POST" else {}
        all_headers.update(headers or {})
        lines += [f"{name}: {value}" for name, value in all_headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await self.writer.drain()

    async def response(self) -> tuple[int, bytes]:
        assert self.reader is not None
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            self.close()
            raise HttpError("connection closed before a response") from exc
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise HttpError(f"bad status line {status_line!r}")
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._chunked()
        else:
            body = await self.reader.read()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return int(parts[1]), body

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        pieces = []
        for _ in range(1_000_000):
            size = int((await self.reader.readline()).split(b";")[0], 16)
            if size == 0:
                await self.reader.readline()
                return b"".join(pieces)
            pieces.append(await self.reader.readexactly(size))
            await self.reader.readline()
        raise HttpError("too many chunks")

    async def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> tuple[int, bytes]:
        await self.send(method, path, headers, body)
        return await self.response()


async def request(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    within: float = REQUEST_TIMEOUT,
) -> tuple[int, bytes]:
    """One request on a fresh connection, bounded by ``within`` seconds."""
    http = Http(port)
    try:
        async with asyncio.timeout(within):
            return await http.request(method, path, headers, body)
    finally:
        http.close()


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def get_loop(
    port: int, total: int, concurrency: int, within: float = 600.0
) -> tuple[list[float], list[str]]:
    """``total`` ``GET /`` over ``concurrency`` keep-alive connections: latencies (s), errors.

    GETs not sent ``within`` seconds of the start are not sent, and count as errors.
    """
    latencies: list[float] = []
    errors: list[str] = []
    per_worker = [total // concurrency + (i < total % concurrency) for i in range(concurrency)]
    deadline = time.monotonic() + within

    async def worker(count: int) -> None:
        http = Http(port)
        try:
            for sent in range(count):
                if time.monotonic() > deadline:
                    errors.append(f"{count - sent} GETs not sent within {within:.0f} s")
                    return
                start = time.perf_counter()
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT):
                        status, body = await http.request("GET", "/")
                except (OSError, HttpError, TimeoutError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    http.abort()
                    continue
                latencies.append(time.perf_counter() - start)
                if status != 200 or body != b"Hello, world!":
                    errors.append(f"{status} {body[:60]!r}")
        finally:
            http.close()

    async with asyncio.TaskGroup() as group:
        for count in per_worker:
            group.create_task(worker(count))
    return latencies, errors


# --------------------------------------------------------------------------- bodies


def multipart_body(fields: list[tuple[str, str | None, bytes]]) -> bytes:
    """``(name, filename or None, content)`` parts as ``multipart/form-data``."""
    out = bytearray()
    for name, filename, content in fields:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{BOUNDARY}\r\ncontent-disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"content-type: application/octet-stream\r\n"
        out += b"\r\n" + content + b"\r\n"
    out += f"--{BOUNDARY}--\r\n".encode()
    return bytes(out)


MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


async def upload_round(port: int, count: int, size: int) -> tuple[int, list[str]]:
    """``count`` concurrent uploads of a ``size``-byte file: (intact answers, errors)."""
    content = os.urandom(size)
    body = multipart_body([("file", "data.bin", content)])
    expected = {"size": size, "sha256": hashlib.sha256(content).hexdigest()}
    intact = 0
    errors: list[str] = []

    async def one() -> None:
        nonlocal intact
        try:
            status, answer = await request(port, "POST", "/upload", MULTIPART, body)
        except (OSError, HttpError, TimeoutError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            return
        if status == 200 and json.loads(answer) == expected:
            intact += 1
        else:
            errors.append(f"{status} {answer[:80]!r}")

    async with asyncio.TaskGroup() as group:
        for _ in range(count):
            group.create_task(one())
    return intact, errors


# --------------------------------------------------------------------------- attackers


@dataclass
class Attack:
    """One attacker's record: what each attempt got back and how long it took."""

    name: str
    outcomes: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for outcome in self.outcomes:
            counts[outcome] = counts.get(outcome, 0) + 1
        answers = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())) or "none yet"
        slowest = f" (max {max(self.seconds):.2f} s)" if self.seconds else ""
        return f"{self.name}: {answers}{slowest}"


async def attack_loop(
    port: int, attack: Attack, once: Callable[[Http], Awaitable[str]], stop: asyncio.Event
) -> None:
    """Repeat ``once`` on a fresh connection until ``stop`` (each attempt bounded)."""
    for _ in range(100_000):
        if stop.is_set():
            return
        http = Http(port)
        start = time.perf_counter()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                outcome = await once(http)
        except TimeoutError:
            outcome = "no answer in 30 s"
        except (OSError, HttpError) as exc:
            outcome = type(exc).__name__
        finally:
            http.abort()
        attack.outcomes.append(outcome)
        attack.seconds.append(time.perf_counter() - start)


def attackers(
    stop: asyncio.Event,
) -> dict[str, Callable[[Http], Awaitable[str]]]:
    percent = b"a=" + b"%" * (8 * MIB - 2)
    brackets = b"[" * 100_000
    parts = multipart_body([(f"f{i}", None, b"x") for i in range(1001)])

    async def stalled(http: Http) -> str:
        form = {"content-type": "application/x-www-form-urlencoded", "content-length": "100000"}
        await http.send("POST", "/form", form, b"")
        assert http.writer is not None
        http.writer.write(b"a=" + b"b" * 8)
        await http.writer.drain()
        status, _ = await http.response()  # 408 after body_timeout, or nothing until stop
        return str(status)

    async def percent_body(http: Http) -> str:
        form = {"content-type": "application/x-www-form-urlencoded"}
        return str((await http.request("POST", "/form", form, percent))[0])

    async def json_brackets(http: Http) -> str:
        typed = {"content-type": "application/json"}
        return str((await http.request("POST", "/json", typed, brackets))[0])

    async def many_parts(http: Http) -> str:
        return str((await http.request("POST", "/upload", MULTIPART, parts))[0])

    async def slowloris(http: Http) -> str:
        await http.open()
        assert http.writer is not None
        http.writer.write(b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        for n in range(int(REQUEST_TIMEOUT) - 1):
            if stop.is_set():
                return "held until the end"
            http.writer.write(f"x-slow-{n}: {n}\r\n".encode())
            await http.writer.drain()
            await asyncio.sleep(1.0)
        return "held 29 s"

    return {
        "stalled body": stalled,
        "8 MiB %": percent_body,
        'JSON "["*100000': json_brackets,
        "1,001 parts": many_parts,
        "slowloris": slowloris,
    }


# --------------------------------------------------------------------------- WebSockets


async def open_websocket(port: int) -> ClientConnection:
    return await connect(
        f"ws://127.0.0.1:{port}/echo",
        compression=None,
        ping_interval=None,
        open_timeout=REQUEST_TIMEOUT,
        close_timeout=5,
    )


async def open_many(port: int, count: int, errors: list[str]) -> list[ClientConnection]:
    """Open ``count`` WebSockets, 100 handshakes at a time; failures go to ``errors``."""
    gate = asyncio.Semaphore(100)
    opened: list[ClientConnection] = []

    async def one() -> None:
        async with gate:
            try:
                websocket = await open_websocket(port)
                await websocket.send("hello")
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    if await websocket.recv() != "hello":
                        errors.append("wrong first echo")
                opened.append(websocket)
            except (OSError, ConnectionClosed, TimeoutError) as exc:
                errors.append(f"open: {type(exc).__name__}: {exc}")

    async with asyncio.TaskGroup() as group:
        for _ in range(count):
            group.create_task(one())
    return opened


async def close_all(websockets: list[ClientConnection]) -> None:
    async with asyncio.TaskGroup() as group:
        for websocket in websockets:
            group.create_task(websocket.close())


@contextmanager
def sampling(server: Server, every: float, into: list[tuple[float, int, int]]) -> Iterator[None]:
    """Sample the server's (time, RSS, fds) every ``every`` seconds while the block runs."""

    async def sample() -> None:
        start = time.monotonic()
        while True:
            into.append((time.monotonic() - start, server.rss(), server.fds()))
            await asyncio.sleep(every)

    task = asyncio.get_running_loop().create_task(sample())
    try:
        yield
    finally:
        task.cancel()


# --------------------------------------------------------------------------- scenarios


class Run:
    """The scenarios on one server, in an order where a failing anchor cannot spoil the next."""

    def __init__(self, server: Server, settings: Settings) -> None:
        self.server = server
        self.settings = settings
        self.port = server.port
        self.baseline_p99: float | None = None

    def row(self, scenario: str, result: str, criterion: str, passed: bool, **data: Any) -> Row:
        return Row(self.server.worker, self.server.app, scenario, result, criterion, passed, data)

    async def gets(self) -> Row:
        s = self.settings
        latencies, errors = await get_loop(self.port, s.gets, s.concurrency)
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        self.baseline_p99 = p99
        return self.row(
            "gets",
            f"{s.gets} GETs at c={s.concurrency}: {len(errors)} errors, "
            f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms",
            "0 errors",
            not errors,
            p50_ms=p50 * 1000,
            p99_ms=p99 * 1000,
            errors=errors[:10],
        )

    async def uploads(self) -> Row:
        s = self.settings
        before = self.server.rss()
        start = time.perf_counter()
        intact, errors = await upload_round(self.port, s.uploads, s.upload_size)
        elapsed = time.perf_counter() - start
        after = self.server.rss()
        return self.row(
            "uploads",
            f"{intact}/{s.uploads} intact in {elapsed:.1f} s; RSS {before / MIB:.0f} → "
            f"{after / MIB:.0f} MiB",
            f"all {s.uploads} intact",
            intact == s.uploads,
            rss_before_mib=before / MIB,
            rss_after_mib=after / MIB,
            errors=errors[:10],
        )

    async def attack(self) -> Row:
        s = self.settings
        stop = asyncio.Event()
        chosen = {
            name: once
            for name, once in attackers(stop).items()
            if s.attackers is None or name in s.attackers
        }
        records = {name: Attack(name) for name in chosen}
        async with asyncio.TaskGroup() as group:
            running = [
                group.create_task(attack_loop(self.port, records[name], once, stop))
                for name, once in chosen.items()
            ]
            await asyncio.sleep(0.5)  # the attackers are sending
            latencies, errors = await get_loop(self.port, s.gets, s.concurrency, s.attack_within)
            stop.set()
            # Attackers blocked on an answer are dropped: the GETs were what was measured.
            for task in running:
                task.cancel()
        p99 = percentile(latencies, 0.99)
        bound = 2 * (self.baseline_p99 or p99)
        within_bound = p99 <= bound or not s.latency_is_criterion
        return self.row(
            "attack",
            f"{len(errors)} errors, p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
            f"p99 {p99 * 1000:.1f} ms (bound {bound * 1000:.1f}"
            + ("" if s.latency_is_criterion else ", reported only")
            + "); "
            + "; ".join(record.summary() for record in records.values()),
            "0 errors, p99 ≤ 2x gets p99" if s.latency_is_criterion else "0 errors",
            not errors and within_bound,
            p99_ms=p99 * 1000,
            bound_ms=bound * 1000,
            errors=errors[:10],
            attacks={name: record.outcomes for name, record in records.items()},
        )

    async def ws_hold(self) -> Row:
        s = self.settings
        errors: list[str] = []
        samples: list[tuple[float, int, int]] = []
        before = self.server.rss()
        with sampling(self.server, 0.5, samples):
            opened = await open_many(self.port, s.websockets, errors)
            echoes = 0

            async def hold(index: int, websocket: ClientConnection) -> None:
                nonlocal echoes
                # Spread the echoes over the second, so the load is steady.
                await asyncio.sleep(index / max(1, len(opened)))
                deadline = time.monotonic() + s.hold_seconds
                for tick in range(int(s.hold_seconds) + 1):
                    if time.monotonic() >= deadline:
                        return
                    started = time.monotonic()
                    try:
                        message = f"{index}:{tick}"
                        await websocket.send(message)
                        async with asyncio.timeout(REQUEST_TIMEOUT):
                            if await websocket.recv() != message:
                                errors.append("wrong echo")
                        echoes += 1
                    except (ConnectionClosed, TimeoutError) as exc:
                        errors.append(f"{type(exc).__name__}: {exc}")
                        return
                    await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))

            async with asyncio.TaskGroup() as group:
                for index, websocket in enumerate(opened):
                    group.create_task(hold(index, websocket))
            live = (await self.server.stats())["live"]
            await close_all(opened)
        peak = max(rss for _, rss, _ in samples)
        return self.row(
            "ws_hold",
            f"{len(opened)}/{s.websockets} held {s.hold_seconds:.0f} s, {echoes} echoes, "
            f"{len(errors)} errors; {live} live handlers; RSS {before / MIB:.0f} → peak "
            f"{peak / MIB:.0f} MiB",
            "0 errors",
            not errors and len(opened) == s.websockets,
            rss_before_mib=before / MIB,
            rss_peak_mib=peak / MIB,
            errors=errors[:10],
        )

    async def soak(self) -> Row:
        """Cycles of load, each ended by a pause in which the idle server is sampled.

        Sampling an idle server (the GET clients' keep-alive connections open, no request in
        flight) makes the counts comparable: under load, fds and tasks swing with whatever is
        in flight at the instant of the sample, and that noise would hide a slow leak.
        """
        s = self.settings
        errors: list[str] = []
        samples: list[tuple[float, int, int, int]] = []  # time, rss, fds, tasks
        counts = {"gets": 0, "websockets": 0}
        getters = [Http(self.port) for _ in range(10)]

        async def getter(http: Http, until: float) -> None:
            while time.monotonic() < until:
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT):
                        status, _ = await http.request("GET", "/")
                    counts["gets"] += 1
                    if status != 200:
                        errors.append(f"GET {status}")
                except (OSError, HttpError, TimeoutError) as exc:
                    errors.append(f"GET {type(exc).__name__}")
                    http.abort()
                await asyncio.sleep(0.02)

        async def churner(until: float) -> None:
            while time.monotonic() < until:
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT):
                        websocket = await open_websocket(self.port)
                        await websocket.send("churn")
                        if await websocket.recv() != "churn":
                            errors.append("wrong echo")
                        await websocket.close()
                    counts["websockets"] += 1
                except (OSError, ConnectionClosed, TimeoutError) as exc:
                    errors.append(f"WS {type(exc).__name__}")
                await asyncio.sleep(0.05)

        cycle = min(5.0, max(1.0, s.soak_seconds / 10))
        start = time.monotonic()
        try:
            for _ in range(int(s.soak_seconds / cycle) + 1):
                if time.monotonic() - start >= s.soak_seconds:
                    break
                until = time.monotonic() + cycle
                async with asyncio.TaskGroup() as group:
                    for http in getters:
                        group.create_task(getter(http, until))
                    for _ in range(5):
                        group.create_task(churner(until))
                await asyncio.sleep(0.3)  # closing handshakes finish
                tasks = (await self.server.stats())["tasks"]
                samples.append(
                    (time.monotonic() - start, self.server.rss(), self.server.fds(), tasks)
                )
        finally:
            for http in getters:
                http.close()
        after_warm_up = [sample for sample in samples if sample[0] >= s.soak_seconds / 4]
        third = max(1, len(after_warm_up) // 3)
        first, last = after_warm_up[:third], after_warm_up[-third:]
        verdicts = {}
        for index, name, slack in ((1, "rss", 0), (2, "fds", 2), (3, "tasks", 2)):
            early = statistics.median(sample[index] for sample in first)
            late = statistics.median(sample[index] for sample in last)
            verdicts[name] = (early, late, abs(late - early) <= max(0.1 * early, slack))
        shown = {"rss": lambda v: f"{v / MIB:.1f} MiB", "fds": str, "tasks": str}
        flat = all(ok for _, _, ok in verdicts.values())
        return self.row(
            "soak",
            f"{s.soak_seconds:.0f} s, {counts['gets']} GETs, {counts['websockets']} WebSocket "
            f"sessions, {len(errors)} errors; idle "
            + ", ".join(
                f"{name} {shown[name](early)} → {shown[name](late)}"
                for name, (early, late, _) in verdicts.items()
            ),
            "0 errors; RSS, fds, tasks flat (±10 %)",
            flat and not errors,
            samples=samples,
            errors=errors[:10],
        )

    async def drop(self) -> Row:
        s = self.settings
        clients = [Http(self.port) for _ in range(s.drops)]
        gate = asyncio.Semaphore(100)

        async def start(http: Http) -> None:
            async with gate:
                await http.send("GET", "/slow?seconds=30")

        async with asyncio.TaskGroup() as group:
            for http in clients:
                group.create_task(start(http))
        live = 0
        for _ in range(400):  # up to 20 s for the last requests to reach their handlers
            live = (await self.server.stats())["live"]
            if live >= s.drops:
                break
            await asyncio.sleep(0.05)
        if live < s.drops:
            for http in clients:
                http.abort()
            return self.row("drop", f"only {live}/{s.drops} running", "", False)
        dropped = time.perf_counter()
        for http in clients:
            http.abort()
        elapsed = None
        for _ in range(500):  # 5 s
            live = (await self.server.stats())["live"]
            if live == 0:
                elapsed = time.perf_counter() - dropped
                break
            await asyncio.sleep(0.01)
        result = (
            f"{s.drops} dropped: handlers at 0 after {elapsed:.2f} s"
            if elapsed is not None
            else f"{s.drops} dropped: {live} handlers still live after 5 s"
        )
        return self.row(
            "drop",
            result,
            f"0 live within {s.drop_deadline:.0f} s",
            elapsed is not None and elapsed <= s.drop_deadline,
            seconds=elapsed,
        )


async def sigterm(app: str, worker: str, settings: Settings) -> Row:
    """A fresh server: open WebSockets and requests in flight, SIGTERM, watch it go."""
    s = settings
    server = Server(app, worker, s.graceful_timeout, {})
    try:
        await server.wait_ready()
        errors: list[str] = []
        opened = await open_many(server.port, s.shutdown_websockets, errors)
        slow_seconds = s.graceful_timeout / 2

        async def in_flight() -> str:
            try:
                status, _ = await request(server.port, "GET", f"/slow?seconds={slow_seconds}")
                return str(status)
            except (OSError, HttpError, TimeoutError) as exc:
                return type(exc).__name__

        async def close_code(websocket: ClientConnection) -> int | None:
            try:
                async with asyncio.timeout(s.graceful_timeout + 10):
                    await websocket.wait_closed()
            except TimeoutError:
                return None
            return websocket.close_code

        loop = asyncio.get_running_loop()
        requests = [loop.create_task(in_flight()) for _ in range(s.shutdown_requests)]
        codes = [loop.create_task(close_code(websocket)) for websocket in opened]
        expected = len(opened) + s.shutdown_requests
        for _ in range(400):
            if (await server.stats())["live"] >= expected:
                break
            await asyncio.sleep(0.05)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        status = None
        for _ in range(int((s.graceful_timeout + 10) / 0.05)):
            status = server.process.poll()
            if status is not None:
                break
            await asyncio.sleep(0.05)
        exit_seconds = time.monotonic() - signalled
        answers = await asyncio.gather(*requests)
        closed = await asyncio.gather(*codes)
    finally:
        server.stop(timeout=1)
    got_1001 = sum(code == 1001 for code in closed)
    code_counts: dict[str, int] = {}
    for code in closed:
        code_counts[str(code)] = code_counts.get(str(code), 0) + 1
    answer_counts: dict[str, int] = {}
    for answer in answers:
        answer_counts[answer] = answer_counts.get(answer, 0) + 1
    in_time = status is not None and exit_seconds <= s.graceful_timeout + 2
    return Row(
        worker,
        app,
        "sigterm",
        f"{len(opened)} WebSockets: close codes {code_counts}; {s.shutdown_requests} requests: "
        f"{answer_counts}; exit status {status} after {exit_seconds:.2f} s "
        f"(graceful_timeout {s.graceful_timeout:.0f} s)",
        f"all 1001, exit 0 within {s.graceful_timeout + 2:.0f} s",
        got_1001 == s.shutdown_websockets and status == 0 and in_time,
        {"close_codes": code_counts, "answers": answer_counts, "exit_seconds": exit_seconds},
    )


# --------------------------------------------------------------------------- driver


async def run_server(app: str, worker: str, settings: Settings, scenarios: list[str]) -> list[Row]:
    rows: list[Row] = []
    wanted = [name for name in SCENARIOS if name in scenarios and name != "sigterm"]
    if wanted:
        server = Server(app, worker, settings.graceful_timeout, {})
        try:
            await server.wait_ready()
            run = Run(server, settings)
            if "attack" in wanted and "gets" not in wanted:
                wanted.insert(0, "gets")  # the attack's bound is the baseline p99
            for name in wanted:
                rows.append(await scenario(getattr(run, name), worker, app, name))
                print_row(rows[-1])
        finally:
            server.stop()
    if "sigterm" in scenarios:
        rows.append(await scenario(lambda: sigterm(app, worker, settings), worker, app, "sigterm"))
        print_row(rows[-1])
    return rows


async def scenario(body: Callable[[], Awaitable[Row]], worker: str, app: str, name: str) -> Row:
    """Run one scenario; an exception is a failed row, not the end of the run."""
    try:
        return await body()
    except Exception as exc:
        return Row(worker, app, name, f"crashed: {type(exc).__name__}: {exc}", "", False)


def print_row(row: Row) -> None:
    verdict = "pass" if row.passed else ("FAIL" if row.app == "micropie" else "fail (anchor)")
    print(
        f"| {row.worker} | {row.app} | {row.scenario} | {row.result} | {row.criterion} | "
        f"{verdict} |",
        flush=True,
    )


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CI subset: micropie, small sizes")
    parser.add_argument("--workers", default=",".join(WORKERS))
    parser.add_argument("--apps", default=None, help="default: both (smoke: micropie)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--soak-seconds", type=float, default=None, help="default 180")
    parser.add_argument(
        "--attackers",
        default=None,
        help="comma-separated subset of: stalled, percent, json, parts, slowloris",
    )
    parser.add_argument("--hold-seconds", type=float, default=None, help="default 30")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply counts (e.g. 0.1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = SMOKE if args.smoke else Settings()
    if args.scale != 1.0:
        scaled = {
            name: max(1, int(getattr(settings, name) * args.scale))
            for name in (
                "websockets",
                "gets",
                "uploads",
                "drops",
                "shutdown_websockets",
                "shutdown_requests",
            )
        }
        settings = replace(settings, **scaled)
    if args.attackers is not None:
        short = {"stalled": 0, "percent": 1, "json": 2, "parts": 3, "slowloris": 4}
        names = list(attackers(asyncio.Event()))
        chosen = tuple(names[short[name]] for name in args.attackers.split(","))
        settings = replace(settings, attackers=chosen)
    if args.hold_seconds is not None:
        settings = replace(settings, hold_seconds=args.hold_seconds)
    if args.soak_seconds is not None:
        settings = replace(settings, soak_seconds=args.soak_seconds)
    apps = (args.apps or ("micropie" if args.smoke else ",".join(APPS))).split(",")
    scenarios = args.scenarios.split(",")
    raise_fd_limit()
    started = time.monotonic()
    print(f"settings: {settings}", flush=True)
    print("| worker | app | scenario | result | criterion | verdict |")
    print("|---|---|---|---|---|---|", flush=True)
    rows: list[Row] = []
    for worker in args.workers.split(","):
        for app in apps:
            rows += asyncio.run(run_server(app, worker, settings, scenarios))
    failed = [row for row in rows if row.app == "micropie" and not row.passed]
    elapsed = time.monotonic() - started
    print(f"\n{len(rows)} rows in {elapsed:.0f} s; micropie failures: {len(failed)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"load-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "settings": asdict(settings),
                "python": platform.python_version(),
                "load_average": os.getloadavg(),
                "rows": [asdict(row) for row in rows],
            },
            indent=1,
            default=str,
        )
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
