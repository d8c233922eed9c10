"""In-process benchmark: µs per request through each app's ``__call__``, on asyncio and trio.

No server and no sockets: each request is one ``await app(scope, receive, send)`` with a scope
copied from a prebuilt template, a ``receive`` that hands over the body once and then waits
forever (like an open keep-alive connection), and a ``send`` that does nothing. What is left is
the framework's own cost per request, which is what a server adds its own cost on top of.

How the numbers are made, and why:

- Apps that speak lifespan get ``lifespan.startup`` first, and their lifespan call keeps running
  in a task group for the whole measurement (micropie opens its app-wide task group there, and
  its per-request path depends on it).
- Every request is checked once per backend before it is timed; an app that answers wrongly or
  raises is reported as failing that route instead of being timed (MicroPie 0.32 reads bodies
  with ``asyncio.timeout``, so its POST routes cannot run on trio).
- A sample is a batch of requests (about ``--batch-ms`` long, sized once per cell) timed with
  ``perf_counter``. Apps take turns batch by batch, routes and app order rotate per round, and
  the backends alternate round by round, so the slow drifts of a shared 2-core machine hit every
  app alike. Each app instance is fresh for each round (one event loop run).
- By default every request runs in a fresh task, started with the backend's own task group as
  hypercorn starts each request (``--in-flight`` at a time, like ``wrk -c``): costs that come
  with a new task (anyio's per-task state, a first cancel scope, the context copy) are then
  paid per request, as under a server. ``--requests-in loop`` awaits every request in one task
  instead, which hides them (the mode of earlier runs).
- A value is the median of all its samples; a ratio is that median over raw's median for the
  same route and backend, from the same run. The last table checks micropie against the
  targets: its ratio at most Starlette's on asyncio and at most 1.2x Starlette's on trio, on
  ``GET /``, ``GET /json`` and ``POST /echo`` (JSON), with the per-round range of
  micropie/Starlette as the run's spread.
- The "machinery" rows time anyio's building blocks alone: what a plain ``CancelScope`` costs,
  and what a task group with one started task that is then cancelled costs (the naive
  "watch for disconnect" design), next to the native asyncio/trio equivalents.

Run: ``python benchmarks/inprocess.py`` (``--quick`` for a smoke run). Prints markdown; writes
JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

sys.path.insert(0, str(Path(__file__).resolve().parent))

import apps
from apps import ROUTES, ASGIApp, Message, Route, Scope

BACKENDS = ("asyncio", "trio")
RESULTS = Path(__file__).resolve().parent / "results"
LIFESPAN_TIMEOUT = 10.0  # seconds an app may take to answer lifespan.startup/shutdown
MACHINERY = (
    "await checkpoint()",
    "CancelScope enter/exit",
    "anyio task group + 1 task + cancel",
    "native task group + 1 task + cancel",
)


# --------------------------------------------------------------------------- ASGI plumbing


class OnceReceive:
    """Hands over one message, then waits until cancelled, like a quiet open connection."""

    __slots__ = ("message",)

    def __init__(self, message: Message) -> None:
        self.message: Message | None = message

    async def __call__(self) -> Message:
        message = self.message
        if message is None:
            await anyio.sleep_forever()
            raise AssertionError("unreachable")
        self.message = None
        return message


async def discard(message: Message) -> None:
    """The cheapest possible ``send``."""


class Collect:
    """A ``send`` that keeps the status and body, for the check before timing."""

    def __init__(self) -> None:
        self.status = 0
        self.body = b""

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")


def http_scope(route: Route, state: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": route.method,
        "scheme": "http",
        "path": route.path,
        "raw_path": route.path.encode(),
        "query_string": route.query,
        "root_path": "",
        "headers": list(route.headers),
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": state,
    }


def body_message(route: Route) -> Message:
    return {"type": "http.request", "body": route.body, "more_body": False}


async def run_lifespan(
    app: ASGIApp, stop: anyio.Event, *, task_status: anyio.abc.TaskStatus[dict[str, Any]]
) -> None:
    """Start ``app``'s lifespan, report its state, keep it running until ``stop``, shut it down.

    An app that returns or raises instead of answering startup is treated as one without
    lifespan support (as servers do); one that answers ``startup.failed`` raises.
    """
    state: dict[str, Any] = {}
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}
    to_app, app_inbox = anyio.create_memory_object_stream[Message](1)
    app_outbox, from_app = anyio.create_memory_object_stream[Message](1)

    async def call_app() -> None:
        with app_outbox:
            try:
                await app(scope, app_inbox.receive, app_outbox.send)
            except Exception as exc:
                await app_outbox.send({"type": "lifespan.unsupported", "message": repr(exc)})

    async def exchange(message: Message) -> Message:
        with anyio.fail_after(LIFESPAN_TIMEOUT):
            await to_app.send(message)
            try:
                return await from_app.receive()
            except anyio.EndOfStream:
                return {"type": "lifespan.unsupported", "message": "app returned"}

    with to_app, app_inbox, from_app:
        async with anyio.create_task_group() as tg:
            tg.start_soon(call_app)
            reply = await exchange({"type": "lifespan.startup"})
            if reply["type"] == "lifespan.startup.failed":
                raise RuntimeError(f"lifespan startup failed: {reply.get('message')}")
            supported = reply["type"] == "lifespan.startup.complete"
            task_status.started(state)
            await stop.wait()
            if supported:
                await exchange({"type": "lifespan.shutdown"})
            else:
                tg.cancel_scope.cancel()


# --------------------------------------------------------------------------- timing


async def check(app: ASGIApp, route: Route, state: dict[str, Any]) -> str | None:
    """Why ``app`` cannot be timed on ``route`` (wrong answer or exception), or None."""
    collect = Collect()
    try:
        with anyio.fail_after(5):
            await app(http_scope(route, state), OnceReceive(body_message(route)), collect)
    except Exception as exc:
        return f"raises {type(exc).__name__}: {exc}"[:200]
    return route.check(collect.status, collect.body)


async def time_requests(
    app: ASGIApp,
    route: Route,
    state: dict[str, Any],
    n: int,
    *,
    in_flight: int = 0,
    backend: str = "asyncio",
) -> float:
    """µs per request over ``n`` requests: each in a task of its own, or (``in_flight`` 0) all
    awaited one after the other in the calling task."""
    if in_flight:
        return await time_requests_in_tasks(app, route, state, n, in_flight, backend)
    template = http_scope(route, state)
    message = body_message(route)
    start = time.perf_counter()
    for _ in range(n):
        await app(dict(template), OnceReceive(message), discard)
    return (time.perf_counter() - start) / n * 1e6


class Wave:
    """Counts a wave of request tasks down and wakes the spawner when the last one ends."""

    __slots__ = ("done", "pending")

    def __init__(self, size: int) -> None:
        self.pending = size
        self.done = anyio.Event()

    def task_ended(self) -> None:
        self.pending -= 1
        if not self.pending:
            self.done.set()


async def handle(app: ASGIApp, scope: Scope, receive: OnceReceive, wave: Wave) -> None:
    """One request task, as hypercorn's ``_handle`` wraps the app in each of its workers."""
    try:
        await app(scope, receive, discard)
    finally:
        wave.task_ended()


async def time_requests_in_tasks(
    app: ASGIApp, route: Route, state: dict[str, Any], n: int, in_flight: int, backend: str
) -> float:
    """µs per request over ``n`` requests, each in a fresh task, as a server runs them.

    Hypercorn starts every request with the backend's own primitive (``create_task`` on an
    ``asyncio.TaskGroup``, ``start_soon`` on a trio nursery), so this does the same rather than
    go through anyio; the costs a fresh task brings (its context copy, anyio's per-task state
    made on first use, a first cancel scope) are then paid per request, as under a server.
    Requests start in waves of ``in_flight`` (like ``wrk -c``) and the next wave starts when
    the last task of the previous one has ended.
    """
    template = http_scope(route, state)
    message = body_message(route)
    spawn, group = native_task_group(backend)
    start = time.perf_counter()
    async with group:
        started = 0
        while started < n:
            size = min(in_flight, n - started)
            wave = Wave(size)
            for _ in range(size):
                spawn(handle, app, dict(template), OnceReceive(message), wave)
            started += size
            await wave.done.wait()
    return (time.perf_counter() - start) / n * 1e6


def native_task_group(backend: str) -> tuple[Callable[..., None], Any]:
    """``(spawn, async context manager)`` for the running backend's own task group."""
    if backend == "trio":
        import trio

        class NurseryGroup:
            """``trio.open_nursery()`` with its ``start_soon`` reachable before entry."""

            def __init__(self) -> None:
                self.nursery: trio.Nursery | None = None
                self.manager = trio.open_nursery()

            async def __aenter__(self) -> None:
                self.nursery = await self.manager.__aenter__()

            async def __aexit__(self, *exc_info: Any) -> bool | None:
                return await self.manager.__aexit__(*exc_info)

            def spawn(self, function: Callable[..., Awaitable[None]], *args: Any) -> None:
                assert self.nursery is not None
                self.nursery.start_soon(function, *args)

        nursery = NurseryGroup()
        return nursery.spawn, nursery
    import asyncio

    task_group = asyncio.TaskGroup()

    def create_task(function: Callable[..., Awaitable[None]], *args: Any) -> None:
        task_group.create_task(function(*args))  # type: ignore[arg-type]

    return create_task, task_group


async def machinery_step(kind: str, backend: str) -> None:
    """One unit of the structured-concurrency machinery ``kind`` (see MACHINERY)."""
    if kind == "await checkpoint()":
        await anyio.lowlevel.checkpoint()
    elif kind == "CancelScope enter/exit":
        with anyio.CancelScope():  # noqa: ASYNC100 - the empty scope is what is measured
            pass
    elif kind == "anyio task group + 1 task + cancel":
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep_forever)
            await anyio.lowlevel.checkpoint()  # let the task start, as a watcher would
            tg.cancel_scope.cancel()
    elif backend == "trio":
        import trio

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
    else:
        import asyncio

        async with asyncio.TaskGroup() as native:
            task = native.create_task(asyncio.Event().wait())
            await asyncio.sleep(0)
            task.cancel()


async def time_machinery(kind: str, backend: str, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await machinery_step(kind, backend)
    return (time.perf_counter() - start) / n * 1e6


async def calibrate(measure: Callable[[int], Awaitable[float]], batch_seconds: float) -> int:
    """How many repetitions make a batch about ``batch_seconds`` long (after a warm-up)."""
    await measure(20)
    per_call = await measure(50) / 1e6
    return max(20, min(20_000, round(batch_seconds / max(per_call, 1e-7))))


# --------------------------------------------------------------------------- the run


@dataclass
class Results:
    """Samples (µs) per (backend, app, route), failures, and the batch sizes found."""

    samples: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    failures: dict[tuple[str, str, str], str] = field(default_factory=dict)
    batch: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def median(self, key: tuple[str, str, str]) -> float | None:
        values = self.samples.get(key)
        return statistics.median(values) if values else None


@dataclass
class Settings:
    apps: list[str]
    backends: list[str]
    rounds: int
    batches: int
    batch_seconds: float
    requests_in: str = "task"  # "task": a fresh task per request; "loop": all in one task
    in_flight: int = 32  # request tasks started together (``requests_in == "task"``)
    profile: str | None = None  # a route name: count its calls instead of timing
    profile_limit: int = 60


async def one_round(settings: Settings, results: Results, backend: str, round_index: int) -> None:
    """One event-loop run on ``backend``: fresh apps, lifespans up, every cell sampled."""
    names = settings.apps
    in_flight = settings.in_flight if settings.requests_in == "task" else 0
    built = {name: apps.build(name) for name in names}
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        states = {name: await tg.start(run_lifespan, built[name], stop) for name in names}
        gc.collect()
        shift = round_index % len(ROUTES)
        for route in ROUTES[shift:] + ROUTES[:shift]:
            live = []
            for name in names:
                key = (backend, name, route.name)
                if key not in results.failures and key not in results.batch:
                    reason = await check(built[name], route, states[name])
                    if reason is not None:
                        results.failures[key] = reason
                        continue
                    app, state = built[name], states[name]
                    measure = partial(
                        time_requests, app, route, state, in_flight=in_flight, backend=backend
                    )
                    results.batch[key] = await calibrate(measure, settings.batch_seconds)
                if key not in results.failures:
                    live.append(name)
            for batch_index in range(settings.batches):
                turn = (round_index + batch_index) % max(len(live), 1)
                for name in live[turn:] + live[:turn]:
                    key = (backend, name, route.name)
                    sample = await time_requests(
                        built[name],
                        route,
                        states[name],
                        results.batch[key],
                        in_flight=in_flight,
                        backend=backend,
                    )
                    results.samples.setdefault(key, []).append(sample)
                    await anyio.lowlevel.checkpoint()  # let the apps' own tasks run
        for kind in MACHINERY:
            key = (backend, "machinery", kind)
            if key not in results.batch:
                results.batch[key] = await calibrate(
                    partial(time_machinery, kind, backend), settings.batch_seconds
                )
            for _ in range(settings.batches):
                sample = await time_machinery(kind, backend, results.batch[key])
                results.samples.setdefault(key, []).append(sample)
        stop.set()


def run(settings: Settings) -> Results:
    results = Results()
    for round_index in range(settings.rounds):
        order = settings.backends if round_index % 2 == 0 else settings.backends[::-1]
        for backend in order:
            anyio.run(one_round, settings, results, backend, round_index, backend=backend)
        print(f"  round {round_index + 1}/{settings.rounds} done", file=sys.stderr, flush=True)
    return results


# --------------------------------------------------------------------------- call profile

PROFILE_REQUESTS = 2000  # requests profiled per app and backend (after as many unprofiled)


@dataclass
class CallProfile:
    """cProfile's calls for one app on one backend, per request."""

    total: float  # every call cProfile saw, builtins included
    python: float  # calls of functions written in Python
    by_function: list[tuple[float, str]]  # (calls per request, function), most called first


async def profile_app(
    settings: Settings, name: str, route: Route, backend: str
) -> CallProfile | str:
    """Count the calls one ``route`` request makes in app ``name``, or say why it cannot."""
    import cProfile
    import pstats

    app = apps.build(name)
    stop = anyio.Event()
    in_flight = settings.in_flight if settings.requests_in == "task" else 0
    async with anyio.create_task_group() as tg:
        state = await tg.start(run_lifespan, app, stop)
        reason = await check(app, route, state)
        if reason is None:
            measure = partial(time_requests, app, route, state, in_flight=in_flight)
            await measure(PROFILE_REQUESTS, backend=backend)  # warm every cache first
            profiler = cProfile.Profile()
            profiler.enable()
            await measure(PROFILE_REQUESTS, backend=backend)
            profiler.disable()
        stop.set()
    if reason is not None:
        return reason
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows: list[tuple[float, str]] = []
    total = python = 0.0
    for (filename, line, function), (_, ncalls, *_rest) in stats.items():
        per_request = ncalls / PROFILE_REQUESTS
        total += per_request
        if filename != "~":
            python += per_request
            where = f"{shorten(filename)}:{line}({function})"
        else:
            where = function
        rows.append((per_request, where))
    rows.sort(key=lambda row: (-row[0], row[1]))
    return CallProfile(total, python, rows)


def shorten(filename: str) -> str:
    """A path from its package on: ``anyio/_backends/_asyncio.py``, ``micropie/app.py``."""
    parts = Path(filename).parts
    for anchor in ("site-packages", "benchmarks", "lib"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + 1 :])
    repo = apps.REPO_ROOT.parts
    return "/".join(parts[len(repo) :]) if parts[: len(repo)] == repo else filename


def profile(settings: Settings, route_name: str, limit: int) -> str:
    """Markdown: calls per request of ``route_name`` for every app on every backend."""
    route = next(r for r in ROUTES if r.name == route_name)
    lines = [f"### Calls per `{route.name}` request, {mode_label(settings)} (cProfile)\n"]
    for backend in settings.backends:
        for name in settings.apps:
            found = anyio.run(profile_app, settings, name, route, backend, backend=backend)
            if isinstance(found, str):
                lines.append(f"#### {name} on {backend}: not profiled ({found})\n")
                continue
            lines.append(
                f"#### {name} on {backend}: {found.total:.1f} calls per request,"
                f" {found.python:.1f} of Python functions\n"
            )
            lines.append("| calls/request | function |")
            lines.append("|---:|---|")
            for per_request, where in found.by_function[:limit]:
                if per_request >= 0.01:
                    lines.append(f"| {per_request:.2f} | `{where}` |")
            lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- reporting


def fmt_cell(results: Results, backend: str, name: str, route: str) -> str:
    key = (backend, name, route)
    if key in results.failures:
        return "fails"
    value = results.median(key)
    raw = results.median((backend, "raw", route))
    if value is None:
        return "–"
    if name == "raw" or raw is None:
        return f"{value:.1f}"
    return f"{value:.1f} ({value / raw:.2f}x)"


#: The routes with a target, and how far micropie's ratio to raw may go above Starlette's on
#: each backend: level on asyncio, 1.2x on trio (whose own cancel scope is an intrinsic cost).
TARGET_ROUTES = ("GET /", "GET /json", "POST /echo json")
TARGET_FACTOR = {"asyncio": 1.0, "trio": 1.2}


def machinery_summary(settings: Settings, results: Results) -> list[str]:
    """Put the machinery's cost next to whole requests from the same run."""
    lines = []
    for backend in settings.backends:
        scope = results.median((backend, "machinery", "CancelScope enter/exit"))
        group = results.median((backend, "machinery", "anyio task group + 1 task + cancel"))
        raw = results.median((backend, "raw", "GET /"))
        ours = results.median((backend, "micropie", "GET /"))
        if not (scope and group and raw):
            continue
        line = (
            f"- {backend}: a CancelScope costs {scope:.1f} µs and a task group + watcher + cancel"
            f" {group:.1f} µs per request; a whole raw `GET /` costs {raw:.1f} µs"
        )
        if ours:
            line += (
                f", micropie's {ours:.1f} µs (a scope is {scope / ours:.0%} of it, a task group"
                f" would be {group / ours:.1f}x it)"
            )
        lines.append(line + ".")
    return lines


def per_round_ratios(
    settings: Settings, results: Results, key: tuple[str, str, str]
) -> list[float]:
    """micropie's µs over Starlette's for one (backend, route), one value per round.

    Each round contributes ``settings.batches`` samples per cell, in order, so a round's value
    is the median of its own samples; the spread of these values is the run's noise.
    """
    backend, _, route = key
    ours = results.samples.get((backend, "micropie", route), [])
    theirs = results.samples.get((backend, "starlette", route), [])
    step = settings.batches
    return [
        statistics.median(ours[i : i + step]) / statistics.median(theirs[i : i + step])
        for i in range(0, min(len(ours), len(theirs)), step)
    ]


def target_table(settings: Settings, results: Results) -> list[str]:
    """micropie against the issue's targets: its ratio to raw at most Starlette's (asyncio),
    at most 1.2x Starlette's (trio), on each target route; pass or fail per cell."""
    if "micropie" not in settings.apps or "starlette" not in settings.apps:
        return []
    lines = [
        "### Targets: micropie's ratio to raw against Starlette's\n",
        "| backend | route | micropie | starlette | target ≤ | micropie / starlette"
        " (per-round range) | verdict |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for backend in settings.backends:
        for route in TARGET_ROUTES:
            raw = results.median((backend, "raw", route))
            ours = results.median((backend, "micropie", route))
            theirs = results.median((backend, "starlette", route))
            if not (raw and ours and theirs):
                lines.append(f"| {backend} | `{route}` | – | – | – | – | not measured |")
                continue
            limit = theirs / raw * TARGET_FACTOR[backend]
            rounds = per_round_ratios(settings, results, (backend, "micropie", route))
            spread = f" ({min(rounds):.2f}–{max(rounds):.2f})" if len(rounds) > 1 else ""
            verdict = "pass" if ours / raw <= limit else "FAIL"
            lines.append(
                f"| {backend} | `{route}` | {ours / raw:.2f}x | {theirs / raw:.2f}x"
                f" | {limit:.2f}x | {ours / theirs:.2f}{spread} | {verdict} |"
            )
    return lines


def mode_label(settings: Settings) -> str:
    if settings.requests_in == "task":
        return f"a task per request ({settings.in_flight} in flight)"
    return "all requests in one task"


def markdown(settings: Settings, results: Results, skipped: dict[str, str]) -> str:
    lines: list[str] = []
    for backend in settings.backends:
        lines.append(
            f"### In-process, {backend}, {mode_label(settings)}: median µs/request (ratio to raw)\n"
        )
        lines.append("| route | " + " | ".join(settings.apps) + " |")
        lines.append("|---|" + "---:|" * len(settings.apps))
        for route in ROUTES:
            cells = [fmt_cell(results, backend, name, route.name) for name in settings.apps]
            lines.append(f"| `{route.name}` | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("### Cost of the structured-concurrency machinery (µs, median)\n")
    lines.append("| primitive | " + " | ".join(settings.backends) + " |")
    lines.append("|---|" + "---:|" * len(settings.backends))
    for kind in MACHINERY:
        values = [results.median((backend, "machinery", kind)) for backend in settings.backends]
        lines.append(f"| {kind} | " + " | ".join(f"{v:.2f}" if v else "–" for v in values) + " |")
    lines.append("")
    lines += machinery_summary(settings, results)
    lines.append("")
    lines += target_table(settings, results)
    failures = sorted(results.failures.items())
    if failures or skipped:
        lines.append("\nNot measured:\n")
        for name, reason in skipped.items():
            lines.append(f"- {name}: does not import ({reason})")
        for (backend, name, route_name), reason in failures:
            lines.append(f"- {name} on {backend}, `{route_name}`: {reason}")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in ("anyio", "trio", "starlette", "orjson", "hypercorn"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "versions": versions,
        "micropie_original": apps.MICROPIE_ORIGINAL_VERSION,
    }


def write_json(settings: Settings, results: Results, skipped: dict[str, str], env: Any) -> Path:
    RESULTS.mkdir(exist_ok=True)
    cells = []
    for (backend, name, route), values in sorted(results.samples.items()):
        raw = results.median((backend, "raw", route))
        median = statistics.median(values)
        quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [median] * 3
        cells.append(
            {
                "backend": backend,
                "app": name,
                "route": route,
                "median_us": median,
                "p25_us": quartiles[0],
                "p75_us": quartiles[2],
                "ratio_to_raw": median / raw if raw and name != "machinery" else None,
                "batch": results.batch[(backend, name, route)],
                "samples_us": values,
            }
        )
    payload = {
        "kind": "inprocess",
        "settings": vars(settings),
        "environment": env,
        "environment_after": {"loadavg": os.getloadavg()},
        "skipped": skipped,
        "failures": [
            {"backend": b, "app": a, "route": r, "reason": why}
            for (b, a, r), why in sorted(results.failures.items())
        ],
        "cells": cells,
    }
    path = RESULTS / f"inprocess-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def parse_args(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", default=",".join(apps.APP_NAMES), help="comma-separated")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated")
    parser.add_argument("--rounds", type=int, default=10, help="event-loop runs per backend")
    parser.add_argument("--batches", type=int, default=5, help="samples per cell per round")
    parser.add_argument("--batch-ms", type=float, default=20.0, help="length of one sample")
    parser.add_argument("--quick", action="store_true", help="2 rounds x 2 batches of 5 ms")
    parser.add_argument(
        "--requests-in",
        choices=("task", "loop"),
        default="task",
        help="task: each request in a fresh task of the backend's own task group, as hypercorn"
        " runs them (default); loop: all awaited in one task, which hides per-task costs",
    )
    parser.add_argument(
        "--in-flight", type=int, default=32, help="request tasks started together (task mode)"
    )
    parser.add_argument(
        "--profile",
        metavar="ROUTE",
        help="instead of timing, count the calls one request of ROUTE (e.g. 'GET /') makes in"
        " each app with cProfile, per function",
    )
    parser.add_argument("--profile-limit", type=int, default=60, help="functions listed per app")
    args = parser.parse_args(argv)
    names = [name for name in args.apps.split(",") if name]
    if "raw" not in names:
        names.insert(0, "raw")  # every ratio needs it
    if args.quick:
        args.rounds, args.batches, args.batch_ms = 2, 2, 5.0
    return Settings(
        apps=names,
        backends=[b for b in args.backends.split(",") if b],
        rounds=args.rounds,
        batches=args.batches,
        batch_seconds=args.batch_ms / 1000,
        requests_in=args.requests_in,
        in_flight=max(1, args.in_flight),
        profile=args.profile,
        profile_limit=args.profile_limit,
    )


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    ready, skipped = apps.load_all(tuple(settings.apps))
    for name, reason in skipped.items():
        print(f"skipping {name}: it does not import ({reason})", file=sys.stderr)
    settings.apps = ready
    if settings.profile:
        print(profile(settings, settings.profile, settings.profile_limit))
        return
    env = environment()
    results = run(settings)
    print(markdown(settings, results, skipped))
    path = write_json(settings, results, skipped, env)
    print(f"\nJSON: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


if __name__ == "__main__":
    main()
