"""Fan-out benchmark: 1 publisher, N subscribed WebSocket clients, p50/p99 latency and msgs/s.

For each worker (hypercorn asyncio and trio) and broadcast backend (memory, Redis) the script
serves ``benchmarks.fanout:app`` in a subprocess (``python -m micropie``, one worker), opens N
WebSocket clients in this process that subscribe, and a publisher connection that publishes.

* **latency**: ``--messages`` messages, one at a time (the next once all N clients got the
  previous one); each carries its send time, and each delivery's latency is measured by the
  receiving client. p50/p99 over all deliveries.
* **throughput**: ``--burst`` messages back to back; deliveries/s until the last one arrived
  (a delivery is one message reaching one client).

Where it applies (asyncio worker) the same is measured for python-socketio (an ASGI
``socketio.AsyncServer`` on hypercorn, ``emit`` to all clients; clients speak the engine.io v4
protocol over plain WebSockets). Client-side costs are inside every number: the clients run in
one Python process on the same machine, so these are upper bounds for the server.

    python benchmarks/fanout.py                   # 100 and 1000 clients, ~2 minutes
    python benchmarks/fanout.py --clients 100 --quick

Needs ``redis-server`` (Debian package) for the Redis rows; it is started on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from array import array
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).absolute().parent.parent
sys.path.insert(0, str(ROOT))

# --- the apps under test (imported by the server subprocess) -------------------------------

import anyio  # noqa: E402

from micropie import App  # noqa: E402
from micropie.broadcast import Broadcast  # noqa: E402

CHANNEL = "bench"
broadcast = Broadcast(
    os.environ.get("FANOUT_BROADCAST_URL", "memory://"),
    queue_size=int(os.environ.get("FANOUT_QUEUE_SIZE", "2000")),
)


#: Server-side latency of each "latency" delivery: from the publisher's send (the time in the
#: payload) to the return of the subscriber's ``send_text``. An ``array`` of floats, so the
#: trace adds no objects for the garbage collector (about 1 µs per delivery).
TRACE = array("d")


# --- the server's garbage collector: what it did during a measurement, and experiments ------
#
# FANOUT_GC_STATS=1 (``--gc-stats``) counts the collections of each generation and their
# pauses through ``gc.callbacks``; ``/trace`` reports and resets them. FANOUT_GC (``--gc``)
# is an experiment applied to *every* server of the run alike when ``/trace`` is first
# called, i.e. after all subscribers joined: ``disable`` turns the collector off, ``freeze``
# collects once and moves every object alive then out of the collector's sight
# (``gc.freeze()``). The headline numbers are the default: the collector as Python ships it.

GC_MODE = os.environ.get("FANOUT_GC", "default")
#: Per generation: collections, total pause (s), longest pause (s); reset by ``/trace``.
GC_STATS = array("d", [0.0] * 9)
_gc_started = array("d", [0.0])


def _gc_callback(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
        return
    pause = time.perf_counter() - _gc_started[0]
    generation = info["generation"]
    GC_STATS[generation] += 1
    GC_STATS[3 + generation] += pause
    GC_STATS[6 + generation] = max(GC_STATS[6 + generation], pause)


GC_STATS_ON = bool(os.environ.get("FANOUT_GC_STATS"))
if GC_STATS_ON:
    gc.callbacks.append(_gc_callback)


def trace_report() -> bytes:
    """The server-side latencies and GC counts since the last call (then forgotten); the
    first call also applies the ``FANOUT_GC`` experiment."""
    report: dict[str, Any] = {"latencies": TRACE.tolist()}
    if GC_STATS_ON:
        report["gc"] = {
            "collections": [int(n) for n in GC_STATS[0:3]],
            "pause_ms": [round(s * 1000, 2) for s in GC_STATS[3:6]],
            "max_ms": [round(s * 1000, 2) for s in GC_STATS[6:9]],
            "tracked": [len(gc.get_objects(generation)) for generation in range(3)],
            "frozen": gc.get_freeze_count(),
        }
    del TRACE[:]
    if GC_MODE == "disable":
        gc.disable()
    elif GC_MODE == "freeze" and gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()
    GC_STATS[:] = array("d", [0.0] * 9)
    return json.dumps(report).encode()


class FanoutApp(App):
    async def ws_sub(self, ws: Any) -> None:
        """The recommended way: the broadcast's delivery workers send (``forward``)."""
        await ws.accept()
        async with broadcast.forward(CHANNEL, ws):
            await ws.send_text("ready")
            async for _ in ws:
                pass

    async def ws_sub_task(self, ws: Any) -> None:
        """A task per subscriber: the handler reads its subscription and sends itself (and
        records each delivery's server-side latency)."""
        await ws.accept()
        async with broadcast.subscribe(CHANNEL) as messages:
            await ws.send_text("ready")
            async for message in messages:
                await ws.send_text(message.data)
                sent, _, kind = message.data.partition(" ")
                if kind == "latency":
                    TRACE.append(time.time() - float(sent))

    async def trace(self) -> str:
        """The server-side latencies and GC counts since the last call (see ``trace_report``)."""
        return trace_report().decode()

    async def ws_pub(self, ws: Any) -> None:
        await ws.accept()
        async for data in ws:
            await broadcast.publish(CHANNEL, data)


app = FanoutApp(lifespan=broadcast.lifespan)


#: The raw baseline's subscribers: the ASGI ``send`` of each subscribed connection.
_raw_subscribers: set[Any] = set()


async def raw_app(scope: Any, receive: Any, send: Any) -> None:
    """The floor: plain ASGI, no framework, the publisher's task sends to every subscriber
    itself (no queue, no task wake-up per subscriber). What hypercorn alone costs."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rpartition(".")[2]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    if scope["type"] != "websocket":
        body = trace_report() if scope["path"] == "/trace" else b""
        length = [(b"content-length", str(len(body)).encode())]
        status = 200 if body else 404
        await send({"type": "http.response.start", "status": status, "headers": length})
        await send({"type": "http.response.body", "body": body})
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    if scope["path"] == "/sub":
        _raw_subscribers.add(send)
        try:
            await send({"type": "websocket.send", "text": "ready"})
            while (await receive())["type"] != "websocket.disconnect":
                pass
        finally:
            _raw_subscribers.discard(send)
        return
    while (message := await receive())["type"] != "websocket.disconnect":
        text = message.get("text") or ""
        frame = {"type": "websocket.send", "text": text}
        for subscriber in list(_raw_subscribers):
            await subscriber(frame)
        await broadcast.publish(CHANNEL, text)  # for raw_broadcast_app


async def raw_broadcast_app(scope: Any, receive: Any, send: Any) -> None:
    """Plain ASGI on ``broadcast``: each subscriber's own task receives from its subscription
    and sends, as in micropie, but without micropie's ``WebSocket``. The gap to ``raw_app``
    is what the broadcast (queue, wake-up, task switch) costs; the gap from here to ``app``
    is the ``WebSocket`` send path."""
    if scope["type"] != "websocket" or scope["path"] != "/sub":
        await raw_app(scope, receive, send)
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    async with anyio.create_task_group() as task_group:

        async def forward() -> None:
            async with broadcast.subscribe(CHANNEL) as messages:
                await send({"type": "websocket.send", "text": "ready"})
                async for message in messages:
                    await send({"type": "websocket.send", "text": message.data})

        task_group.start_soon(forward)
        while (await receive())["type"] != "websocket.disconnect":
            pass
        task_group.cancel_scope.cancel()


def socketio_app() -> Any:
    import socketio  # type: ignore[import-untyped]

    sio = socketio.AsyncServer(async_mode="asgi", logger=False, engineio_logger=False)

    @sio.on("pub")  # type: ignore[untyped-decorator]
    async def publish(sid: str, data: str) -> None:
        await sio.emit("msg", data)

    return socketio.ASGIApp(sio)


def __getattr__(name: str) -> Any:
    """``benchmarks.fanout:sio_app`` builds the socket.io app only when asked for."""
    if name == "sio_app":
        return socketio_app()
    raise AttributeError(name)


# --- running servers -----------------------------------------------------------------------

_RUNNING = re.compile(r"Running on http://127\.0\.0\.1:(\d+)")


class Server:
    def __init__(self, target: str, worker: str, env: dict[str, str]) -> None:
        command = [sys.executable, "-m", "micropie", target, "--backend", worker, "--port", "0"]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 20
        assert self.process.stdout is not None
        for line in self.process.stdout:
            match = _RUNNING.search(line)
            if match:
                self.port = int(match.group(1))
                break
            if time.monotonic() > deadline:
                break
        else:
            raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is missing: apt-get install -y redis-server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}/0"


# --- clients -------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    clients: int
    latencies: list[float] = field(default_factory=list)
    server_latencies: list[float] = field(default_factory=list)
    rate: float = 0.0
    lost: int = 0
    server_us: float | None = None  # server CPU per delivery (latency phase)
    client_us: float | None = None  # client process CPU per delivery (latency phase)
    gc: dict[str, Any] | None = None  # the server's collections (latency phase)
    gc_before: dict[str, Any] | None = None  # and what it had done before (the handshakes)

    def percentiles(self, values: list[float]) -> tuple[float, float]:
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return statistics.median(ordered) * 1000, p99 * 1000

    def row(self) -> str:
        def us(value: float | None) -> str:
            return "–" if value is None else f"{value:.1f}"

        if not self.latencies:
            return f"| {self.name} | {self.clients} | – | – | – | – | – | – | {self.lost} | – |"
        p50, p99 = self.percentiles(self.latencies)
        server = "–"
        if self.server_latencies:
            server = "{:.1f} / {:.1f}".format(*self.percentiles(self.server_latencies))
        return (
            f"| {self.name} | {self.clients} | {p50:.1f} | {p99:.1f} | {server} "
            f"| {us(self.server_us)} | {us(self.client_us)} | {self.rate:,.0f} | {self.lost} "
            f"| {self.gc_summary()} |"
        )

    def gc_summary(self) -> str:
        """``gen0/gen1/gen2 collections; gen2 total (longest) pause ms``, or – without stats."""
        if not self.gc or not any(self.gc["collections"]):
            return "–"
        counts = "/".join(str(int(n)) for n in self.gc["collections"])
        return f"{counts}; {self.gc['pause_ms'][2]:.0f} ({self.gc['max_ms'][2]:.0f})"


HEADER = (
    "| setup | clients | p50 ms | p99 ms | server-side p50 / p99 ms | server µs/delivery "
    "| client µs/delivery | deliveries/s | lost in burst | server GC gen0/1/2; gen2 ms (max) |"
    "\n|---|---|---|---|---|---|---|---|---|---|"
)


class Protocol:
    """How a client subscribes and how messages look: micropie and raw, or socket.io."""

    def __init__(self, kind: str, port: int) -> None:
        self.kind = kind
        self.port = port
        if kind == "micropie-task":
            self.sub_path, self.pub_path = "/sub_task", "/pub"
        elif kind != "socketio":
            self.sub_path, self.pub_path = "/sub", "/pub"
        else:
            self.sub_path = self.pub_path = "/socket.io/?EIO=4&transport=websocket"

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def handshake(self, ws: Any) -> None:
        if self.kind != "socketio":
            return
        await ws.recv()  # engine.io open packet
        await ws.send("40")  # connect to the default namespace
        while not (await ws.recv()).startswith("40"):
            pass

    async def subscribed(self, ws: Any) -> None:
        await self.handshake(ws)
        if self.kind != "socketio":
            assert await ws.recv() == "ready"

    def encode(self, payload: str) -> str:
        return payload if self.kind != "socketio" else "42" + json.dumps(["pub", payload])

    def payload(self, frame: str, ws: Any) -> str | None:
        """The benchmark payload in ``frame``, or ``None`` (answering engine.io pings)."""
        if self.kind != "socketio":
            return frame
        if frame == "2":  # engine.io ping
            ws.send_nowait("3")
        elif frame.startswith("42"):
            return str(json.loads(frame[2:])[1])
        return None


class LeanClient(asyncio.Protocol):
    """A minimal WebSocket client on a raw asyncio ``Protocol``.

    Why: 1,000 ``websockets`` connections in one Python process spend tens of µs of client
    CPU per message (a task wake-up, a frame parser and a queue per connection); on a 2-core
    machine shared with the server that client cost is most of the measured latency. This
    client does the HTTP upgrade, parses the server's unmasked frames straight from
    ``data_received`` and calls ``on_text`` (with the arrival time) there: a few µs per
    message, so the numbers are mostly the server's. Supports text frames, ping, close; no
    extensions, no fragmentation (the servers under test send neither).
    """

    def __init__(self, path: str, port: int) -> None:
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self._buffer = bytearray()
        self._upgraded = False
        self._transport: asyncio.Transport | None = None
        self.open = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self._inbox: asyncio.Queue[str] = asyncio.Queue()
        #: Called with (text, arrival time) for each text message; until set, ``recv`` works.
        self.on_text: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.open.done():
            self.open.set_exception(ConnectionError("connection lost during the upgrade"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buffer = self._buffer
        buffer += data
        if not self._upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.open.set_exception(ConnectionError(bytes(buffer[:end]).decode()))
                return
            del buffer[: end + 4]
            self._upgraded = True
            self.open.set_result(None)
        position = 0
        size = len(buffer)
        while size - position >= 2:
            length = buffer[position + 1] & 0x7F
            start = position + 2
            if length == 126:
                start += 2
                length = int.from_bytes(buffer[position + 2 : start], "big")
            elif length == 127:
                start += 8
                length = int.from_bytes(buffer[position + 2 : start], "big")
            if size < start + length:
                break
            opcode = buffer[position] & 0x0F
            payload = bytes(buffer[start : start + length])
            position = start + length
            if opcode == 1:
                text = payload.decode()
                if self.on_text is not None:
                    self.on_text(text, now)
                else:
                    self._inbox.put_nowait(text)
            elif opcode == 9:
                self._write(0xA, payload)
            elif opcode == 8 and self._transport is not None:
                self._transport.close()
        del buffer[:position]

    def _write(self, opcode: int, payload: bytes) -> None:
        """Send one masked frame (clients must mask; the key is random per frame)."""
        assert self._transport is not None
        key = os.urandom(4)
        header = bytearray([0x80 | opcode])
        if len(payload) < 126:
            header.append(0x80 | len(payload))
        elif len(payload) < 1 << 16:
            header += bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
        else:
            header += bytes([0x80 | 127]) + len(payload).to_bytes(8, "big")
        mask = int.from_bytes(key * (len(payload) // 4 + 1), "big") >> (8 * (4 - len(payload) % 4))
        masked = (int.from_bytes(payload, "big") ^ mask).to_bytes(len(payload), "big")
        self._transport.write(bytes(header) + key + masked)

    def send_nowait(self, text: str) -> None:
        self._write(0x1, text.encode())

    async def send(self, text: str) -> None:
        self.send_nowait(text)

    async def recv(self) -> str:
        return await self._inbox.get()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


@asynccontextmanager
async def lean_connect(protocol: Protocol, path: str) -> AsyncIterator[LeanClient]:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: LeanClient(path, protocol.port), "127.0.0.1", protocol.port
    )
    try:
        await asyncio.wait_for(client.open, 10)
        yield client
    finally:
        client.close()


class WebsocketsClient:
    """The ``websockets`` library, one task per connection (the original client)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.on_text: Any = None
        self._loop = asyncio.get_running_loop()

    async def recv(self) -> str:
        return str(await self.ws.recv())

    async def send(self, text: str) -> None:
        await self.ws.send(text)

    def send_nowait(self, text: str) -> None:
        self._loop.create_task(self.ws.send(text))

    async def pump(self) -> None:
        while True:
            text = await self.ws.recv()
            self.on_text(text, time.time())


@asynccontextmanager
async def websockets_connect(protocol: Protocol, path: str) -> AsyncIterator[WebsocketsClient]:
    import websockets

    async with websockets.connect(protocol.url(path), max_queue=None) as ws:
        client = WebsocketsClient(ws)
        yield client


async def measure(
    name: str,
    protocol: Protocol,
    clients: int,
    messages: int,
    burst: int,
    client_kind: str,
    server_pid: int,
) -> Result:
    """Connect ``clients`` subscribers and one publisher; measure latency, then a burst."""
    from wire import process_cpu_ns  # benchmarks/ is on sys.path when run as a script

    result = Result(name, clients)
    connect = lean_connect if client_kind == "lean" else websockets_connect
    counts = {"expected": 0, "received": 0}
    all_in = asyncio.Event()

    def delivered(payload: str, arrived: float) -> None:
        sent, kind = payload.split(" ", 1)
        if kind == "latency":
            result.latencies.append(arrived - float(sent))
        counts["received"] += 1
        if counts["received"] >= counts["expected"]:
            all_in.set()

    async def subscriber(ready: asyncio.Semaphore) -> None:
        async with connect(protocol, protocol.sub_path) as ws:
            await protocol.subscribed(ws)

            def on_text(text: str, arrived: float) -> None:
                payload = protocol.payload(text, ws)
                if payload is not None:
                    delivered(payload, arrived)

            ws.on_text = on_text
            ready.release()
            if isinstance(ws, WebsocketsClient):
                await ws.pump()
            else:
                await ws.closed

    ready = asyncio.Semaphore(0)
    tasks = []
    for _ in range(clients):
        tasks.append(asyncio.create_task(subscriber(ready)))
        await asyncio.sleep(0)  # let the server keep up with the handshakes
    for _ in range(clients):
        await asyncio.wait_for(ready.acquire(), 30)
    async with connect(protocol, protocol.pub_path) as publisher:
        await protocol.handshake(publisher)
        result.gc_before = (await fetch_server_trace(protocol)).get("gc")  # forget handshakes
        cpu_server, cpu_client = process_cpu_ns(server_pid), time.process_time()
        for number in range(messages):
            all_in.clear()
            counts["expected"] = (number + 1) * clients
            await publisher.send(protocol.encode(f"{time.time()} latency"))
            try:
                await asyncio.wait_for(all_in.wait(), 10)
            except TimeoutError:
                break
        deliveries = max(counts["received"], 1)
        result.server_us = (process_cpu_ns(server_pid) - cpu_server) / 1000 / deliveries
        result.client_us = (time.process_time() - cpu_client) * 1e6 / deliveries
        trace = await fetch_server_trace(protocol)
        result.server_latencies, result.gc = trace.get("latencies", []), trace.get("gc")
        all_in.clear()
        start = time.perf_counter()
        counts["received"], counts["expected"] = 0, burst * clients
        for _ in range(burst):
            await publisher.send(protocol.encode(f"{time.time()} burst"))
        try:
            await asyncio.wait_for(all_in.wait(), 60)
        except TimeoutError:
            pass
        result.rate = counts["received"] / (time.perf_counter() - start)
        result.lost = burst * clients - counts["received"]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return result


async def fetch_server_trace(protocol: Protocol) -> dict[str, Any]:
    """What the server recorded since the last call (then reset): the micropie app's
    latencies and, with ``--gc-stats``, the collector's work (see ``trace_report``)."""
    if protocol.kind == "socketio":
        return {}
    reader, writer = await asyncio.open_connection("127.0.0.1", protocol.port)
    writer.write(b"GET /trace HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    response = await reader.read()
    writer.close()
    body = response.partition(b"\r\n\r\n")[2]
    return dict(json.loads(body))


# --- in process: the broadcast alone, no sockets --------------------------------------------


async def measure_inprocess(
    url: str, clients: int, messages: int, burst: int, forward: bool = False
) -> Result:
    """N subscribers in this process: what the broadcast itself costs (anyio). Each is a task
    reading its subscription, or with ``forward`` a sink the delivery workers send to."""
    import anyio

    result = Result("", clients)
    state = {"expected": 0, "received": 0}
    all_in = anyio.Event()

    def delivered(data: str) -> None:
        sent, kind = data.split(" ", 1)
        if kind == "latency":
            result.latencies.append(time.time() - float(sent))
        state["received"] += 1
        if state["received"] >= state["expected"]:
            all_in.set()

    async def subscriber(task_status: Any) -> None:
        async with bench.subscribe(CHANNEL) as messages:
            task_status.started()
            async for message in messages:
                delivered(message.data)

    class Sink:
        async def send_text(self, data: str) -> None:
            delivered(data)

    bench = Broadcast(url, queue_size=max(2 * burst, 100))
    async with bench, anyio.create_task_group() as tasks, AsyncExitStack() as forwards:
        for _ in range(clients):
            if forward:
                await forwards.enter_async_context(bench.forward(CHANNEL, Sink()))
            else:
                await tasks.start(subscriber)
        for number in range(messages):
            all_in = anyio.Event()
            state["expected"] = (number + 1) * clients
            await bench.publish(CHANNEL, f"{time.time()} latency")
            with anyio.move_on_after(10):
                await all_in.wait()
        all_in = anyio.Event()
        state["received"], state["expected"] = 0, burst * clients
        start = time.perf_counter()
        for _ in range(burst):
            await bench.publish(CHANNEL, f"{time.time()} burst")
        with anyio.move_on_after(60):
            await all_in.wait()
        result.rate = state["received"] / (time.perf_counter() - start)
        result.lost = burst * clients - state["received"]
        if not forward:  # (1,000 forwards nest 1,000 scopes in this task: left one by one)
            tasks.cancel_scope.cancel()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="100,1000", help="comma-separated client counts")
    parser.add_argument("--messages", type=int, default=50, help="latency samples per client")
    parser.add_argument("--burst", type=int, default=100, help="messages in the throughput burst")
    parser.add_argument("--quick", action="store_true", help="10 messages, burst of 20")
    parser.add_argument(
        "--client",
        choices=["lean", "websockets"],
        default="lean",
        help="lean: raw asyncio protocol (default); websockets: the websockets library",
    )
    parser.add_argument("--workers", default="asyncio,trio", help="hypercorn workers to run")
    parser.add_argument("--backends", default="memory,redis", help="broadcast backends to run")
    parser.add_argument("--no-socketio", action="store_true")
    parser.add_argument(
        "--task-per-subscriber",
        action="store_true",
        help="also run micropie with subscribe() and a send per handler, not forward()",
    )
    parser.add_argument("--no-raw", action="store_true", help="skip the raw ASGI baseline")
    parser.add_argument("--no-inprocess", action="store_true", help="skip the in-process rows")
    parser.add_argument(
        "--inprocess-only", action="store_true", help="only the broadcast itself, no sockets"
    )
    parser.add_argument(
        "--gc-stats", action="store_true", help="count the servers' GC collections and pauses"
    )
    parser.add_argument(
        "--gc",
        choices=["default", "disable", "freeze"],
        default="default",
        help="experiment, on every server alike once the subscribers joined: "
        "gc.disable() or gc.freeze() (default: the collector as shipped)",
    )
    args = parser.parse_args()
    if args.quick:
        args.messages, args.burst = 10, 20
    counts = [int(n) for n in args.clients.split(",")]
    workers = args.workers.split(",")
    redis, redis_url = start_redis()
    backends = [
        (backend, {"memory": "memory://", "redis": redis_url}[backend])
        for backend in args.backends.split(",")
    ]
    results: list[Result] = []
    try:
        for worker in [] if args.no_inprocess else workers:
            for backend, url in backends:
                for count in counts:
                    for forward in (True, False):
                        result = anyio.run(
                            measure_inprocess,
                            url,
                            count,
                            args.messages,
                            args.burst,
                            forward,
                            backend=worker,
                        )
                        how = "forward" if forward else "subscribe"
                        result.name = f"in-process {backend} {worker}, {how}"
                        print(result.row(), flush=True)
                        results.append(result)
        if args.inprocess_only:
            return
        setups = []
        for worker in workers:
            if not args.no_raw:
                setups.append(
                    (f"raw ASGI {worker}", "benchmarks.fanout:raw_app", worker, "", "raw")
                )
                setups.append(
                    (
                        f"raw ASGI + broadcast {worker}",
                        "benchmarks.fanout:raw_broadcast_app",
                        worker,
                        "",
                        "raw",
                    )
                )
            for backend, url in backends:
                setups.append(
                    (
                        f"micropie {backend} {worker}",
                        "benchmarks.fanout:app",
                        worker,
                        url,
                        "micropie",
                    )
                )
                if args.task_per_subscriber:
                    setups.append(
                        (
                            f"micropie {backend} {worker}, task per subscriber",
                            "benchmarks.fanout:app",
                            worker,
                            url,
                            "micropie-task",
                        )
                    )
        if not args.no_socketio and "asyncio" in workers:
            setups.append(
                ("python-socketio asyncio", "benchmarks.fanout:sio_app", "asyncio", "", "socketio")
            )
        for name, target, worker, url, kind in setups:
            for count in counts:
                env = {"FANOUT_BROADCAST_URL": url} if url else {}
                env["FANOUT_GC"] = args.gc
                if args.gc_stats:
                    env["FANOUT_GC_STATS"] = "1"
                server = Server(target, worker, env)
                try:
                    protocol = Protocol(kind, server.port)
                    result = asyncio.run(
                        measure(
                            f"{name} ({args.client} client)",
                            protocol,
                            count,
                            args.messages,
                            args.burst,
                            args.client,
                            server.process.pid,
                        )
                    )
                finally:
                    server.stop()
                print(result.row(), flush=True)
                results.append(result)
    finally:
        redis.kill()
        redis.wait()
        report(results)


def report(results: list[Result]) -> None:
    print()
    print(HEADER)
    for result in results:
        print(result.row())
    with_gc = [result for result in results if result.gc]
    if with_gc:
        print()
        print("Server GC (--gc-stats): tracked objects per generation when the measurement")
        print("started; collections and pauses during the handshakes and the latency phase.")
        for result in with_gc:
            for phase, stats in [("handshakes", result.gc_before), ("latency", result.gc)]:
                if stats:
                    print(
                        f"  {result.name} {result.clients} {phase}: tracked {stats['tracked']}"
                        f" frozen {stats['frozen']}, collections {stats['collections']},"
                        f" pause ms {stats['pause_ms']}, longest {stats['max_ms']}"
                    )


if __name__ == "__main__":
    main()
