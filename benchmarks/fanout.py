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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).absolute().parent.parent
sys.path.insert(0, str(ROOT))

# --- the apps under test (imported by the server subprocess) -------------------------------

from micropie import App  # noqa: E402
from micropie.broadcast import Broadcast  # noqa: E402

CHANNEL = "bench"
broadcast = Broadcast(
    os.environ.get("FANOUT_BROADCAST_URL", "memory://"),
    queue_size=int(os.environ.get("FANOUT_QUEUE_SIZE", "2000")),
)


class FanoutApp(App):
    async def ws_sub(self, ws: Any) -> None:
        await ws.accept()
        async with broadcast.subscribe(CHANNEL) as messages:
            await ws.send_text("ready")
            async for message in messages:
                await ws.send_text(message.data)

    async def ws_pub(self, ws: Any) -> None:
        await ws.accept()
        async for data in ws:
            await broadcast.publish(CHANNEL, data)


app = FanoutApp(lifespan=broadcast.lifespan)


def socketio_app() -> Any:
    import socketio

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
    rate: float = 0.0
    lost: int = 0

    def row(self) -> str:
        if not self.latencies:
            return f"| {self.name} | {self.clients} | – | – | – | {self.lost} |"
        ordered = sorted(self.latencies)
        p50 = statistics.median(ordered) * 1000
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
        return (
            f"| {self.name} | {self.clients} | {p50:.1f} | {p99:.1f} | {self.rate:,.0f} "
            f"| {self.lost} |"
        )


class Protocol:
    """How a client subscribes and how messages look, for micropie and for socket.io."""

    def __init__(self, kind: str, port: int) -> None:
        self.kind = kind
        base = f"ws://127.0.0.1:{port}"
        if kind == "micropie":
            self.sub_url, self.pub_url = f"{base}/sub", f"{base}/pub"
        else:
            url = f"{base}/socket.io/?EIO=4&transport=websocket"
            self.sub_url = self.pub_url = url

    async def handshake(self, ws: Any) -> None:
        if self.kind == "micropie":
            return
        await ws.recv()  # engine.io open packet
        await ws.send("40")  # connect to the default namespace
        while not (await ws.recv()).startswith("40"):
            pass

    async def subscribed(self, ws: Any) -> None:
        await self.handshake(ws)
        if self.kind == "micropie":
            assert await ws.recv() == "ready"

    def encode(self, payload: str) -> str:
        return payload if self.kind == "micropie" else "42" + json.dumps(["pub", payload])

    async def next_payload(self, ws: Any) -> str:
        while True:
            frame = await ws.recv()
            if self.kind == "micropie":
                return str(frame)
            if frame == "2":  # engine.io ping
                await ws.send("3")
            elif frame.startswith("42"):
                return str(json.loads(frame[2:])[1])


async def measure(name: str, protocol: Protocol, clients: int, messages: int, burst: int) -> Result:
    import websockets

    result = Result(name, clients)
    expected = 0
    received = 0
    all_in = asyncio.Event()

    async def client() -> None:
        nonlocal received
        async with websockets.connect(protocol.sub_url, max_queue=None) as ws:
            await protocol.subscribed(ws)
            ready.release()
            while True:
                payload = await protocol.next_payload(ws)
                sent = float(payload.split(" ", 1)[0])
                if not payload.endswith("burst"):
                    result.latencies.append(time.time() - sent)
                received += 1
                if received >= expected:
                    all_in.set()

    ready = asyncio.Semaphore(0)
    tasks = []
    for _ in range(clients):
        tasks.append(asyncio.create_task(client()))
        await asyncio.sleep(0)  # let the server keep up with the handshakes
    for _ in range(clients):
        await asyncio.wait_for(ready.acquire(), 30)
    async with websockets.connect(protocol.pub_url) as publisher:
        await protocol.handshake(publisher)
        for number in range(messages):
            all_in.clear()
            expected = (number + 1) * clients
            await publisher.send(protocol.encode(f"{time.time()} latency"))
            try:
                await asyncio.wait_for(all_in.wait(), 10)
            except TimeoutError:
                break
        all_in.clear()
        start = time.perf_counter()
        received, expected = 0, burst * clients
        for _ in range(burst):
            await publisher.send(protocol.encode(f"{time.time()} burst"))
        try:
            await asyncio.wait_for(all_in.wait(), 60)
        except TimeoutError:
            pass
        result.rate = received / (time.perf_counter() - start)
        result.lost = burst * clients - received
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return result


# --- in process: the broadcast alone, no sockets --------------------------------------------


async def measure_inprocess(url: str, clients: int, messages: int, burst: int) -> Result:
    """N subscriber tasks in this process: what the broadcast itself costs (anyio)."""
    import anyio

    result = Result("", clients)
    state = {"expected": 0, "received": 0}
    all_in = anyio.Event()

    async def subscriber(task_status: Any) -> None:
        async with bench.subscribe(CHANNEL) as messages:
            task_status.started()
            async for message in messages:
                sent, kind = message.data.split(" ", 1)
                if kind == "latency":
                    result.latencies.append(time.time() - float(sent))
                state["received"] += 1
                if state["received"] >= state["expected"]:
                    all_in.set()

    bench = Broadcast(url, queue_size=max(2 * burst, 100))
    async with bench, anyio.create_task_group() as tasks:
        for _ in range(clients):
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
        tasks.cancel_scope.cancel()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="100,1000", help="comma-separated client counts")
    parser.add_argument("--messages", type=int, default=50, help="latency samples per client")
    parser.add_argument("--burst", type=int, default=100, help="messages in the throughput burst")
    parser.add_argument("--quick", action="store_true", help="10 messages, burst of 20")
    parser.add_argument("--no-socketio", action="store_true")
    parser.add_argument(
        "--inprocess-only", action="store_true", help="only the broadcast itself, no sockets"
    )
    args = parser.parse_args()
    if args.quick:
        args.messages, args.burst = 10, 20
    counts = [int(n) for n in args.clients.split(",")]
    redis, redis_url = start_redis()
    results: list[Result] = []
    try:
        import anyio

        for worker in ("asyncio", "trio"):
            for backend, url in (("memory", "memory://"), ("redis", redis_url)):
                for count in counts:
                    result = anyio.run(
                        measure_inprocess, url, count, args.messages, args.burst, backend=worker
                    )
                    result.name = f"in-process {backend} {worker}"
                    print(result.row(), flush=True)
                    results.append(result)
        if args.inprocess_only:
            return
        setups = [
            (f"micropie {backend} {worker}", "benchmarks.fanout:app", worker, url, "micropie")
            for worker in ("asyncio", "trio")
            for backend, url in (("memory", "memory://"), ("redis", redis_url))
        ]
        if not args.no_socketio:
            setups.append(
                ("python-socketio asyncio", "benchmarks.fanout:sio_app", "asyncio", "", "socketio")
            )
        for name, target, worker, url, kind in setups:
            for count in counts:
                server = Server(target, worker, {"FANOUT_BROADCAST_URL": url} if url else {})
                try:
                    protocol = Protocol(kind, server.port)
                    result = asyncio.run(measure(name, protocol, count, args.messages, args.burst))
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
    print("| setup | clients | p50 ms | p99 ms | deliveries/s | lost in burst |")
    print("|---|---|---|---|---|---|")
    for result in results:
        print(result.row())


if __name__ == "__main__":
    main()
