"""Does memory come back after uploads? Rounds of concurrent multipart uploads, RSS after each.

For each worker (hypercorn asyncio, trio) and app (micropie, Starlette as the anchor), a fresh
``load_apps.py`` server receives ``--rounds`` (10) rounds of ``--uploads`` (200) concurrent
``--size`` (1 MiB) multipart uploads; every upload must come back with its size and SHA-256.
The server's RSS (psutil) is read before the first round and after each (once the round's
answers are in and 0.5 s have passed). Then the app is asked to ``gc.collect()`` and glibc to
``malloc_trim(0)``, and RSS is read again: what the trim gives back was free memory the
allocator kept, not objects anyone holds.

Pass criterion (issue 16): RSS after the last round within 20 % of RSS after the first.

``--tracemalloc`` runs the same on servers started with ``LOAD_TRACEMALLOC=1``: after round 1
the app takes a tracemalloc snapshot, after the last round it answers the 15 allocation sites
whose live memory grew most since then. A site of ours in that list would be something kept
across requests. (Tracing costs memory of its own, so these runs' RSS is not the verdict.)

Run: ``python benchmarks/upload_memory.py`` (a few minutes) in the ``nox -s load``
environment, under ``flock -x /tmp/bench.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from load import MIB, RESULTS, Server, request, upload_round

HERE = Path(__file__).resolve().parent


async def wait_idle(server: Server, idle_tasks: int, within: float = 30.0) -> float:
    """Wait until the server runs no more tasks than when idle (+2); return the seconds taken.

    The clients have closed their connections once a round's answers are in, but the server
    may still be ending them: RSS read before that would count their buffers as "kept".
    """
    start = time.monotonic()
    while time.monotonic() - start < within:
        if (await server.stats())["tasks"] <= idle_tasks + 2:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # and freed what they held
    return time.monotonic() - start


async def measure(app: str, worker: str, args: argparse.Namespace) -> dict[str, object]:
    env = dict(item.split("=", 1) for item in args.env)
    if args.tracemalloc:
        env["LOAD_TRACEMALLOC"] = "1"
    server = Server(app, worker, 3.0, env)
    rss: list[float] = []
    settle: list[float] = []  # seconds until the round's connections had ended
    errors: list[str] = []
    sites: object = None
    try:
        await server.wait_ready()
        await asyncio.sleep(0.5)
        idle_tasks = (await server.stats())["tasks"]
        start = server.rss() / MIB
        for round_number in range(1, args.rounds + 1):
            intact, round_errors = await upload_round(server.port, args.uploads, args.size)
            errors += round_errors
            if intact != args.uploads:
                errors.append(f"round {round_number}: {intact}/{args.uploads} intact")
            settle.append(await wait_idle(server, idle_tasks))
            rss.append(server.rss() / MIB)
            if args.tracemalloc and round_number == 1:
                await request(server.port, "GET", "/memory?action=baseline")
        if args.tracemalloc:
            _, body = await request(server.port, "GET", "/memory?action=sites", within=120)
            sites = json.loads(body)
        _, body = await request(server.port, "GET", "/memory?action=allocators")
        before_trim = json.loads(body)
        await request(server.port, "GET", "/memory?action=collect")
        await request(server.port, "GET", "/memory?action=trim")
        await asyncio.sleep(0.2)
        trimmed = server.rss() / MIB
        _, body = await request(server.port, "GET", "/memory?action=allocators")
        after_trim = json.loads(body)
    finally:
        server.stop()
    first, last = rss[0], rss[-1]
    passed = not errors and last <= first * 1.2
    return {
        "worker": worker,
        "app": app,
        "start_mib": start,
        "rounds_mib": rss,
        "settle_seconds": settle,
        "trimmed_mib": trimmed,
        "passed": passed,
        "errors": errors[:10],
        "sites": sites,
        "allocators_before_trim": before_trim,
        "allocators_after_trim": after_trim,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="asyncio,trio")
    parser.add_argument("--apps", default="micropie,starlette")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--size", type=int, default=MIB)
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="server environment"
    )
    args = parser.parse_args()
    results = []
    print("| worker | app | start | after each round (MiB) | after gc + malloc_trim | pass |")
    print("|---|---|---|---|---|---|", flush=True)
    for worker in args.workers.split(","):
        for app in args.apps.split(","):
            result = asyncio.run(measure(app, worker, args))
            results.append(result)
            rounds = ", ".join(f"{value:.0f}" for value in result["rounds_mib"])  # type: ignore[attr-defined]
            verdict = "pass" if result["passed"] else "FAIL"
            print(
                f"| {worker} | {app} | {result['start_mib']:.0f} | {rounds} | "
                f"{result['trimmed_mib']:.0f} | {verdict} |",
                flush=True,
            )
            for when in ("before", "after"):
                shown = {
                    k: round(v, 1)
                    for k, v in result[f"allocators_{when}_trim"].items()  # type: ignore[attr-defined]
                }
                print(f"    {when} trim: {shown}")
            settled = ", ".join(f"{value:.1f}" for value in result["settle_seconds"])  # type: ignore[attr-defined]
            print(f"    seconds until the server was idle after each round: {settled}")
            if result["errors"]:
                print(f"errors: {result['errors']}")
            if result["sites"]:
                print(f"    traced now: {result['sites']['traced_kib']} KiB")  # type: ignore[index]
                for site in result["sites"]["sites"]:  # type: ignore[index]
                    print(f"    {site}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"upload-memory-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=1))
    failed = [r for r in results if r["app"] == "micropie" and not r["passed"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
