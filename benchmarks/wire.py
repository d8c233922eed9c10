"""Wire benchmark: requests/s through hypercorn (asyncio and trio workers), measured with wrk.

Each app from ``apps.py`` is served by its own hypercorn process (``--workers 1``, 127.0.0.1, a
free port, access log off). ``wrk`` (Debian package ``wrk``; installed here when missing and
running as root) loads one route at a time over loopback only, for a bounded time. POST routes
are sent through a tiny generated Lua script.

How the numbers are made, and why:

- Every route is checked once per server with a plain HTTP request before it is loaded; a wrong
  answer skips that (app, route) instead of timing an error page.
- The server's process tree and wrk run on different cores (``taskset -c 1`` for hypercorn, its
  worker inherits it, and ``taskset -c 0`` for wrk; ``--pin SERVER,WRK`` picks others,
  ``--no-pin`` turns it off). Unpinned, the scheduler moves both about and the server's CPU per
  request picks up cache and migration effects that differ from run to run. The output and the
  JSON say whether the run was pinned and which cores each process was allowed.
- Every app starts in the same allocator state (``apps.allocator_warm_up``, the call micropie
  makes at startup): without it the baselines' CPU per request moves by more than the frameworks
  differ.
- One warm-up run per server, then ``--reps`` repetitions. In each repetition every route is run
  on every app back to back, the app order rotating, so raw and each app share the machine's
  state of the moment (this 2-core machine is shared: wrk takes one core, the server the other).
- requests/s is the median over repetitions; the ratio to raw is the median of the per-repetition
  ratios (each app run against the raw run next to it). A ratio above 1 is not a miracle; it is
  the noise floor of the run.
- micropie against Starlette (issue 19: micropie's server CPU per request no higher than
  Starlette's): the ratio of their CPU per request in each repetition, median and range.

Run: ``python benchmarks/wire.py`` (about 3 minutes) or ``--quick`` (about 40 s); ``--routes``
picks routes by name (``--routes "GET /,POST /echo json"``), ``--micropie-root DIR`` benchmarks
the ``micropie`` package of another checkout. Prints markdown; writes JSON to
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import apps
from apps import ROUTES, Route, micropie_root

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WORKERS = ("asyncio", "trio")
DEFAULT_APPS = ("raw", "micropie", "starlette")
STARTUP_TIMEOUT = 20.0  # seconds for hypercorn to import the app and answer GET /
TARGETS = {"asyncio": 0.93, "trio": 0.95}  # micropie's wire targets from the issue
DEFAULT_PIN = (1, 0)  # cores for (the server, wrk)


# --------------------------------------------------------------------------- wrk


def ensure_wrk() -> str:
    """Path to ``wrk``; installs the Debian package when missing and running as root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.name == "posix" and os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is missing: apt-get install -y wrk", file=sys.stderr)
        quiet = {"stdout": subprocess.DEVNULL, "timeout": 600, "check": True}
        subprocess.run(["apt-get", "update", "-qq"], **quiet)  # type: ignore[call-overload]
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], **quiet)  # type: ignore[call-overload]
        found = shutil.which("wrk")
    if not found:
        sys.exit(
            "wrk is not installed. Install the Debian package (as root: "
            "`apt-get update && apt-get install -y wrk`) and run again."
        )
    return found


def lua_script(route: Route, directory: Path) -> Path | None:
    """A wrk script that sends ``route``'s method, body and content type (None for a GET)."""
    if route.method == "GET":
        return None
    assert b"]==]" not in route.body
    lines = [
        f'wrk.method = "{route.method}"',
        f"wrk.body = [==[{route.body.decode()}]==]",
    ]
    if route.content_type:
        lines.append(f'wrk.headers["Content-Type"] = "{route.content_type.decode()}"')
    path = directory / (re.sub(r"\W+", "_", route.name).strip("_") + ".lua")
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class WrkResult:
    rps: float
    latency_ms: float | None
    requests: int
    bad_status: int
    socket_errors: int
    server_cpu_us: float | None = None  # server CPU time per request, all its processes


def parse_wrk(output: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rps is None:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{output}")
    latency = re.search(r"Latency\s+([\d.]+)(us|ms|s)\b", output)
    latency_ms = None
    if latency:
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[latency.group(2)]
        latency_ms = float(latency.group(1)) * scale
    requests = re.search(r"(\d+) requests in", output)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkResult(
        rps=float(rps.group(1)),
        latency_ms=latency_ms,
        requests=int(requests.group(1)) if requests else 0,
        bad_status=int(bad.group(1)) if bad else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def run_wrk(wrk: str, settings: Settings, url: str, script: Path | None, seconds: int) -> WrkResult:
    command = [
        *pinned(settings, 1),
        wrk,
        f"-t{settings.threads}",
        f"-c{settings.connections}",
        f"-d{seconds}s",
    ]
    if script is not None:
        command += ["-s", str(script)]
    done = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=seconds + 30, check=True
    )
    return parse_wrk(done.stdout)


# --------------------------------------------------------------------------- pinning


def pinned(settings: Settings, which: int) -> list[str]:
    """The ``taskset`` prefix that keeps the server (``which`` 0) or wrk (1) on its core."""
    if settings.pin is None:
        return []
    return ["taskset", "-c", str(settings.pin[which])]


def allowed_cores(pid: int) -> str:
    """The cores ``pid`` may run on, as ``taskset`` would print them ("?" where unknown)."""
    try:
        cores = sorted(os.sched_getaffinity(pid))
    except (OSError, AttributeError):
        return "?"
    return ",".join(map(str, cores))


# --------------------------------------------------------------------------- hypercorn


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def request(port: int, route: Route, timeout: float = 2.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": route.content_type.decode()} if route.content_type else {}
        connection.request(route.method, route.target, body=route.body or None, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def children_of(parent: int) -> list[int]:
    """Pids whose parent is ``parent`` (scans /proc; empty on systems without it)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return children


def process_cpu_ns(pid: int) -> int:
    """On-CPU nanoseconds of all threads of ``pid`` (``/proc/<pid>/task/*/schedstat``)."""
    total = 0
    for schedstat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(schedstat.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


class Server:
    """One hypercorn process serving ``apps.build(name)`` with one ``worker`` worker."""

    def __init__(self, name: str, worker: str, log_dir: Path, prefix: list[str]) -> None:
        self.name = name
        self.worker = worker
        self.prefix = prefix  # taskset, when pinned
        self.port = free_port()
        self.log_path = log_dir / f"hypercorn-{worker}-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._pids: list[int] = []

    def start(self) -> None:
        command = [
            *self.prefix,  # taskset execs hypercorn: the pid stays the supervisor's
            sys.executable,
            "-m",
            "hypercorn",
            "--worker-class",
            self.worker,
            "--workers",
            "1",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--graceful-timeout",
            "1",
            "--error-logfile",
            "-",
            f"{HERE / 'apps.py'}:build({self.name!r})",  # hypercorn evals the name
        ]  # no --access-logfile: hypercorn's access log is off unless asked for
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=HERE.parent
            )

    def wait_ready(self) -> None:
        """Poll ``GET /`` until it answers; raise with the log's tail if it never does."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                break
            try:
                request(self.port, ROUTES[0], timeout=0.5)
            except OSError:
                time.sleep(0.1)
            else:
                return
        tail = self.log_path.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"hypercorn ({self.worker}) for {self.name} did not start:\n{tail}")

    def cpu_ns(self) -> int:
        """CPU time so far of the supervisor and its worker, from /proc (0 where unavailable).

        Sampled around each wrk run: the server's CPU per request barely moves when the machine
        is busy, unlike requests/s. The worker's pid is found once, after ``wait_ready``.
        """
        if self.process is None:
            return 0
        if not self._pids:
            self._pids = [self.process.pid, *children_of(self.process.pid)]
        return sum(process_cpu_ns(pid) for pid in self._pids)

    def cores(self) -> dict[str, str]:
        """The cores each of the server's processes may run on (pinning, checked)."""
        self.cpu_ns()  # finds the worker's pid
        return {str(pid): allowed_cores(pid) for pid in self._pids}

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # the supervisor shuts its worker down gracefully
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# --------------------------------------------------------------------------- the run


@dataclass
class Settings:
    apps: list[str]
    workers: list[str]
    reps: int
    duration: int  # wrk takes whole seconds
    warmup: int
    threads: int
    connections: int
    routes: list[str] = field(default_factory=lambda: [route.name for route in ROUTES])
    pin: tuple[int, int] | None = DEFAULT_PIN  # cores for (the server, wrk); None: unpinned

    @property
    def selected_routes(self) -> list[Route]:
        return [route for route in ROUTES if route.name in self.routes]


Key = tuple[str, str, str]  # (worker, app, route)


@dataclass
class Results:
    """Every wrk run, the per-repetition ratios to raw, and what could not be measured.

    ``ratios`` compares requests/s (app / raw); ``cpu_ratios`` compares the server's CPU time per
    request (raw / app), so that both read "fraction of raw's throughput", and the second is
    nearly free of the machine's scheduling noise.
    """

    runs: dict[Key, list[WrkResult]] = field(default_factory=dict)
    ratios: dict[Key, list[float]] = field(default_factory=dict)
    cpu_ratios: dict[Key, list[float]] = field(default_factory=dict)
    failures: dict[Key, str] = field(default_factory=dict)
    cores: dict[str, dict[str, str]] = field(default_factory=dict)  # "worker app" -> pid -> cores

    def pair(self, worker: str, route: str, runs: dict[str, WrkResult]) -> None:
        """Record each app's ratios to the raw run of the same repetition."""
        raw = runs.get("raw")
        if raw is None:
            return
        for name, run in runs.items():
            key = (worker, name, route)
            self.ratios.setdefault(key, []).append(run.rps / raw.rps)
            if run.server_cpu_us and raw.server_cpu_us:
                self.cpu_ratios.setdefault(key, []).append(raw.server_cpu_us / run.server_cpu_us)

    def rps(self, key: Key) -> float | None:
        runs = self.runs.get(key)
        return statistics.median(r.rps for r in runs) if runs else None

    def cpu_us(self, key: Key) -> float | None:
        values = [r.server_cpu_us for r in self.runs.get(key, []) if r.server_cpu_us]
        return statistics.median(values) if values else None

    def ratio(self, key: Key) -> float | None:
        ratios = self.ratios.get(key)
        return statistics.median(ratios) if ratios else None

    def cpu_ratio(self, key: Key) -> float | None:
        ratios = self.cpu_ratios.get(key)
        return statistics.median(ratios) if ratios else None

    def cpu_versus(self, worker: str, app: str, other: str, route: str) -> list[float]:
        """``app``'s server CPU per request over ``other``'s, one value per repetition.

        Runs of one key are stored in repetition order; a repetition where either has no CPU
        reading is left out.
        """
        mine = self.runs.get((worker, app, route), [])
        theirs = self.runs.get((worker, other, route), [])
        return [
            a.server_cpu_us / b.server_cpu_us
            for a, b in zip(mine, theirs, strict=False)
            if a.server_cpu_us and b.server_cpu_us
        ]


def check_routes(server: Server, routes: list[Route], results: Results) -> list[Route]:
    """The routes ``server`` answers correctly; the others are recorded as failures."""
    good = []
    for route in routes:
        try:
            status, body = request(server.port, route)
            reason = route.check(status, body)
        except OSError as exc:
            reason = f"{type(exc).__name__}: {exc}"
        if reason is None:
            good.append(route)
        else:
            results.failures[(server.worker, server.name, route.name)] = reason
    return good


def bench_worker(
    wrk: str, settings: Settings, worker: str, results: Results, scripts: dict[str, Path | None]
) -> None:
    log_dir = RESULTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    prefix = pinned(settings, 0)
    servers = {name: Server(name, worker, log_dir, prefix) for name in settings.apps}
    try:
        for server in servers.values():
            server.start()
        routes_of: dict[str, list[str]] = {}
        for name, server in list(servers.items()):
            try:
                server.wait_ready()
            except RuntimeError as exc:
                print(exc, file=sys.stderr)
                for route in settings.selected_routes:
                    results.failures[(worker, name, route.name)] = "server did not start"
                del servers[name]
                continue
            checked = check_routes(server, settings.selected_routes, results)
            routes_of[name] = [route.name for route in checked]
            results.cores[f"{worker} {name}"] = server.cores()
            run_wrk(wrk, settings, server.url + "/", None, settings.warmup)
        names = list(servers)
        for rep in range(settings.reps):
            for route in settings.selected_routes:
                live = [n for n in names if route.name in routes_of[n]]
                turn = rep % max(len(live), 1)
                rep_runs: dict[str, WrkResult] = {}
                for name in live[turn:] + live[:turn]:
                    server = servers[name]
                    cpu_before = server.cpu_ns()
                    outcome = run_wrk(
                        wrk,
                        settings,
                        server.url + route.target,
                        scripts[route.name],
                        settings.duration,
                    )
                    if outcome.requests:
                        outcome.server_cpu_us = (
                            (server.cpu_ns() - cpu_before) / 1e3 / outcome.requests
                        )
                    results.runs.setdefault((worker, name, route.name), []).append(outcome)
                    rep_runs[name] = outcome
                results.pair(worker, route.name, rep_runs)
            print(f"  {worker}: rep {rep + 1}/{settings.reps} done", file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()


# --------------------------------------------------------------------------- reporting


def table(
    settings: Settings,
    results: Results,
    worker: str,
    value: Callable[[Key], float | None],
    ratio: Callable[[Key], float | None],
    number: str,
) -> list[str]:
    """One markdown table: a row per route, ``value (ratio)`` per app."""
    lines = [
        "| route | " + " | ".join(settings.apps) + " |",
        "|---|" + "---:|" * len(settings.apps),
    ]
    for route in settings.selected_routes:
        cells = []
        for name in settings.apps:
            key = (worker, name, route.name)
            measured, relative = value(key), ratio(key)
            if key in results.failures:
                cells.append("fails")
            elif measured is None:
                cells.append("–")
            elif name == "raw" or relative is None:
                cells.append(format(measured, number))
            else:
                cells.append(f"{measured:{number}} ({relative:.2f}x)")
        lines.append(f"| `{route.name}` | " + " | ".join(cells) + " |")
    return [*lines, ""]


def verdicts(settings: Settings, results: Results) -> list[str]:
    """micropie's worst route against the issue's targets, by both measures."""
    lines = []
    for worker in settings.workers:
        for label, ratio in (("requests/s", results.ratio), ("server CPU", results.cpu_ratio)):
            ratios = [ratio((worker, "micropie", route.name)) for route in settings.selected_routes]
            measured = [r for r in ratios if r is not None]
            if not measured:
                continue
            worst = min(measured)
            verdict = "meets" if worst >= TARGETS[worker] else "misses"
            partial = "" if len(measured) == len(ratios) else " (not every route measured)"
            lines.append(
                f"- hypercorn-{worker}, by {label}: micropie's worst route is {worst:.2f}x raw, "
                f"{verdict} the ≥ {TARGETS[worker]}x target{partial}"
            )
    return lines


def versus_starlette(settings: Settings, results: Results) -> list[str]:
    """micropie's server CPU per request over Starlette's, per repetition (issue 19: ≤ 1)."""
    if not {"micropie", "starlette"} <= set(settings.apps):
        return []
    lines = [
        "### micropie / Starlette: server CPU per request (median, range over repetitions)\n",
        "| worker | route | micropie µs | starlette µs | micropie / starlette | range | ≤ 1 |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for worker in settings.workers:
        for route in settings.selected_routes:
            ratios = results.cpu_versus(worker, "micropie", "starlette", route.name)
            if not ratios:
                continue
            mine = results.cpu_us((worker, "micropie", route.name))
            theirs = results.cpu_us((worker, "starlette", route.name))
            median = statistics.median(ratios)
            lines.append(
                f"| {worker} | `{route.name}` | {mine or 0:.1f} | {theirs or 0:.1f} "
                f"| {median:.3f} | {min(ratios):.3f}–{max(ratios):.3f} "
                f"| {'yes' if median <= 1 else 'no'} |"
            )
    return [*lines, ""]


def pinning_note(settings: Settings, results: Results) -> str:
    if settings.pin is None:
        return "Unpinned (--no-pin): the server and wrk share whatever cores the scheduler gives."
    allowed = sorted({cores for pids in results.cores.values() for cores in pids.values()})
    return (
        f"Pinned: hypercorn (supervisor and worker) on core {settings.pin[0]}, wrk on core "
        f"{settings.pin[1]}; the servers' processes were allowed cores {' / '.join(allowed)}."
    )


def markdown(settings: Settings, results: Results, skipped: dict[str, str], env: Any) -> str:
    lines: list[str] = [
        pinning_note(settings, results),
        f"micropie from {env['micropie']['root']} at {env['micropie']['commit']}.\n",
    ]
    for worker in settings.workers:
        lines.append(f"### hypercorn-{worker}: median requests/s (ratio to raw)\n")
        lines += table(settings, results, worker, results.rps, results.ratio, ",.0f")
        lines.append(f"### hypercorn-{worker}: server CPU µs per request (raw's CPU / app's CPU)\n")
        lines += table(settings, results, worker, results.cpu_us, results.cpu_ratio, ".1f")
    lines += versus_starlette(settings, results)
    lines += verdicts(settings, results)
    noisy = [
        (key, r)
        for key, runs in results.runs.items()
        for r in runs
        if r.bad_status or r.socket_errors
    ]
    for (worker, name, route), r in noisy:
        lines.append(
            f"- warning: {name} on {worker}, `{route}`: {r.bad_status} non-2xx answers, "
            f"{r.socket_errors} socket errors in one run"
        )
    if results.failures or skipped:
        lines.append("\nNot measured:\n")
        for name, reason in skipped.items():
            lines.append(f"- {name}: does not import ({reason})")
        for (worker, name, route), reason in sorted(results.failures.items()):
            lines.append(f"- {name} on hypercorn-{worker}, `{route}`: {reason}")
    return "\n".join(lines)


def write_json(settings: Settings, results: Results, skipped: dict[str, str], env: Any) -> Path:
    RESULTS.mkdir(exist_ok=True)
    cells = [
        {
            "worker": worker,
            "app": name,
            "route": route,
            "median_rps": results.rps((worker, name, route)),
            "ratio_to_raw": results.ratio((worker, name, route)),
            "paired_ratios": results.ratios.get((worker, name, route), []),
            "median_server_cpu_us": results.cpu_us((worker, name, route)),
            "cpu_ratio_to_raw": results.cpu_ratio((worker, name, route)),
            "paired_cpu_ratios": results.cpu_ratios.get((worker, name, route), []),
            "cpu_over_starlette": results.cpu_versus(worker, name, "starlette", route),
            "runs": [vars(run) for run in runs],
        }
        for (worker, name, route), runs in sorted(results.runs.items())
    ]
    payload = {
        "kind": "wire",
        "settings": vars(settings),
        "environment": env,
        "environment_after": {"loadavg": os.getloadavg()},
        "pinned": settings.pin is not None,
        "server_cores": results.cores,
        "skipped": skipped,
        "failures": [
            {"worker": w, "app": a, "route": r, "reason": why}
            for (w, a, r), why in sorted(results.failures.items())
        ],
        "cells": cells,
    }
    path = RESULTS / f"wire-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def environment(wrk: str) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in ("anyio", "trio", "hypercorn", "starlette", "orjson"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    return {
        "micropie": micropie_checkout(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "versions": versions,
        "wrk": (wrk_version.stdout or wrk_version.stderr).splitlines()[0:1],
    }


def micropie_checkout() -> dict[str, str | None]:
    """Where the benchmarked micropie comes from: its checkout, commit, and whether it is dirty."""
    root = micropie_root()

    def git(*args: str) -> str | None:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    changed = git("status", "--porcelain", "--", "micropie")
    if commit is not None and changed:
        commit += " + uncommitted changes in micropie/"
    return {"root": str(root), "commit": commit}


def parse_args(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", default=",".join(DEFAULT_APPS), help="comma-separated")
    parser.add_argument("--workers", default=",".join(WORKERS), help="hypercorn worker classes")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of every run")
    parser.add_argument("--duration", type=int, default=1, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per server")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c")
    parser.add_argument("--quick", action="store_true", help="1 rep of 1 s runs")
    parser.add_argument(
        "--routes",
        default=",".join(route.name for route in ROUTES),
        help="comma-separated route names, e.g. 'GET /,GET /json,POST /echo json'",
    )
    parser.add_argument(
        "--pin",
        default=",".join(map(str, DEFAULT_PIN)),
        help="cores for the server and for wrk (taskset -c), default 1,0",
    )
    parser.add_argument("--no-pin", action="store_true", help="let the scheduler place both")
    parser.add_argument(
        "--micropie-root",
        help="benchmark the micropie package of this checkout (sets MICROPIE_BENCH_ROOT)",
    )
    args = parser.parse_args(argv)
    known = {route.name for route in ROUTES}
    routes = [name.strip() for name in args.routes.split(",") if name.strip()]
    unknown = [name for name in routes if name not in known]
    if unknown or not routes:
        parser.error(f"unknown routes {unknown}; choose among {sorted(known)}")
    pin: tuple[int, int] | None = None
    if not args.no_pin:
        try:
            server_core, wrk_core = (int(core) for core in args.pin.split(","))
        except ValueError:
            parser.error(f"--pin takes two core numbers, SERVER,WRK, not {args.pin!r}")
        if shutil.which("taskset") is None:
            parser.error("taskset (util-linux) is missing: install it or run with --no-pin")
        pin = (server_core, wrk_core)
    if args.micropie_root:
        root = Path(args.micropie_root).resolve()
        if not (root / "micropie" / "__init__.py").is_file():
            parser.error(f"{root} has no micropie package")
        os.environ["MICROPIE_BENCH_ROOT"] = str(root)  # read by apps.py here and in hypercorn
    names = [name for name in args.apps.split(",") if name]
    if "raw" not in names:
        names.insert(0, "raw")  # every ratio needs it
    if args.quick:
        args.reps, args.duration, args.warmup = 1, 1, 1
    return Settings(
        apps=names,
        workers=[w for w in args.workers.split(",") if w],
        reps=args.reps,
        duration=args.duration,
        warmup=args.warmup,
        threads=args.threads,
        connections=args.connections,
        routes=routes,
        pin=pin,
    )


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    wrk = ensure_wrk()
    ready, skipped = apps.load_all(tuple(settings.apps))
    for name, reason in skipped.items():
        print(f"skipping {name}: it does not import ({reason})", file=sys.stderr)
    settings.apps = ready
    env = environment(wrk)
    results = Results()
    with tempfile.TemporaryDirectory(prefix="micropie-wrk-") as tmp:
        scripts = {route.name: lua_script(route, Path(tmp)) for route in settings.selected_routes}
        for worker in settings.workers:
            bench_worker(wrk, settings, worker, results, scripts)
    print(markdown(settings, results, skipped, env))
    path = write_json(settings, results, skipped, env)
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()
