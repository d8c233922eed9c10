"""Wire benchmark: requests/s through hypercorn (asyncio and trio workers), measured with wrk.

Each app from ``apps.py`` is served by its own hypercorn process (``--workers 1``, 127.0.0.1, a
free port, access log off). ``wrk`` (Debian package ``wrk``; installed here when missing and
running as root) loads one route at a time over loopback only, for a bounded time. POST routes
are sent through a tiny generated Lua script.

How the numbers are made, and why:

- Every route is checked once per server with a plain HTTP request before it is loaded; a wrong
  answer skips that (app, route) instead of timing an error page.
- One warm-up run per server, then ``--reps`` repetitions. In each repetition every route is run
  on every app back to back, the app order rotating, so raw and each app share the machine's
  state of the moment (this 2-core machine is shared: wrk takes one core, the server the other).
- requests/s is the median over repetitions; the ratio to raw is the median of the per-repetition
  ratios (each app run against the raw run next to it). A ratio above 1 is not a miracle; it is
  the noise floor of the run.

Run: ``python benchmarks/wire.py`` (about 3 minutes) or ``--quick`` (about 40 s). Prints
markdown; writes JSON to ``benchmarks/results/``.
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
from apps import ROUTES, Route

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WORKERS = ("asyncio", "trio")
DEFAULT_APPS = ("raw", "micropie", "starlette")
STARTUP_TIMEOUT = 20.0  # seconds for hypercorn to import the app and answer GET /
TARGETS = {"asyncio": 0.93, "trio": 0.95}  # micropie's wire targets from the issue


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
    command = [wrk, f"-t{settings.threads}", f"-c{settings.connections}", f"-d{seconds}s"]
    if script is not None:
        command += ["-s", str(script)]
    done = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=seconds + 30, check=True
    )
    return parse_wrk(done.stdout)


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

    def __init__(self, name: str, worker: str, log_dir: Path) -> None:
        self.name = name
        self.worker = worker
        self.port = free_port()
        self.log_path = log_dir / f"hypercorn-{worker}-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._pids: list[int] = []

    def start(self) -> None:
        command = [
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


def check_routes(server: Server, results: Results) -> list[Route]:
    """The routes ``server`` answers correctly; the others are recorded as failures."""
    good = []
    for route in ROUTES:
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
    servers = {name: Server(name, worker, log_dir) for name in settings.apps}
    try:
        for server in servers.values():
            server.start()
        routes_of: dict[str, list[str]] = {}
        for name, server in list(servers.items()):
            try:
                server.wait_ready()
            except RuntimeError as exc:
                print(exc, file=sys.stderr)
                for route in ROUTES:
                    results.failures[(worker, name, route.name)] = "server did not start"
                del servers[name]
                continue
            routes_of[name] = [route.name for route in check_routes(server, results)]
            run_wrk(wrk, settings, server.url + "/", None, settings.warmup)
        names = list(servers)
        for rep in range(settings.reps):
            for route in ROUTES:
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
    for route in ROUTES:
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
            ratios = [ratio((worker, "micropie", route.name)) for route in ROUTES]
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


def markdown(settings: Settings, results: Results, skipped: dict[str, str]) -> str:
    lines: list[str] = []
    for worker in settings.workers:
        lines.append(f"### hypercorn-{worker}: median requests/s (ratio to raw)\n")
        lines += table(settings, results, worker, results.rps, results.ratio, ",.0f")
        lines.append(f"### hypercorn-{worker}: server CPU µs per request (raw's CPU / app's CPU)\n")
        lines += table(settings, results, worker, results.cpu_us, results.cpu_ratio, ".1f")
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
            "runs": [vars(run) for run in runs],
        }
        for (worker, name, route), runs in sorted(results.runs.items())
    ]
    payload = {
        "kind": "wire",
        "settings": vars(settings),
        "environment": env,
        "environment_after": {"loadavg": os.getloadavg()},
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
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "versions": versions,
        "wrk": (wrk_version.stdout or wrk_version.stderr).splitlines()[0:1],
    }


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
    args = parser.parse_args(argv)
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
        scripts = {route.name: lua_script(route, Path(tmp)) for route in ROUTES}
        for worker in settings.workers:
            bench_worker(wrk, settings, worker, results, scripts)
    print(markdown(settings, results, skipped))
    path = write_json(settings, results, skipped, env)
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()
