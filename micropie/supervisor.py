"""The ``--workers N`` / ``--reload`` supervisor behind ``python -m micropie``.

It spawns N hypercorn worker processes (hypercorn's own ``trio_worker``/``asyncio_worker`` on
shared, pre-bound sockets, so ``--port 0`` works). SIGINT/SIGTERM ask the workers to shut down
gracefully; SIGHUP or a changed source file (``--reload``) restarts them. The loop is a small
copy of ``hypercorn.run.run`` because hypercorn's exits 0 when a worker died, e.g. after failing
its lifespan startup; ours reports that and exits 1.

It lives apart from the command line (``micropie.__main__``) because it is a different job:
the command line parses arguments and serves in its own process, the supervisor owns child
processes, signals and their exit statuses.
"""

from __future__ import annotations

import logging
import signal
from multiprocessing import get_context
from multiprocessing.connection import wait
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hypercorn.config import Config, Sockets
    from hypercorn.typing import WorkerFunc

__all__ = ["EXIT_FAILED", "EXIT_OK", "supervise"]

logger = logging.getLogger("micropie")

EXIT_OK = 0
EXIT_FAILED = 1

# How often the --reload supervisor looks for changed files (hypercorn uses the same period).
RELOAD_POLL_SECONDS = 1.0
# Extra time a stopping worker gets beyond hypercorn's own graceful and lifespan timeouts
# before the supervisor terminates it.
WORKER_EXIT_MARGIN_SECONDS = 5.0


def _worker_function(worker_class: str) -> WorkerFunc:
    if worker_class == "trio":
        from hypercorn.trio.run import trio_worker

        return trio_worker
    from hypercorn.asyncio.run import asyncio_worker

    return asyncio_worker


def supervise(config: Config) -> int:
    """Keep ``config.workers`` worker processes running until a signal or a worker failure.

    Returns 0 after a requested shutdown, 1 when a worker exited with a non-zero status (its
    traceback, e.g. hypercorn's ``LifespanFailureError``, is already on stderr).
    """
    worker = _worker_function(config.worker_class)
    sockets = config.create_sockets()
    context = get_context("spawn")
    shutdown_event = context.Event()
    processes: list[BaseProcess] = []
    stopping = False
    restart_requested = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        logger.info("Received %s, shutting down", signal.Signals(signum).name)
        stopping = True
        shutdown_event.set()

    def request_restart(signum: int, frame: FrameType | None) -> None:
        nonlocal restart_requested
        restart_requested = True
        shutdown_event.set()  # the workers exit, which wakes the wait() below

    if config.use_reloader:
        _import_for_watching(config)
    watched: dict[Path, float] | None = None
    failed_code = 0
    try:
        while not stopping and failed_code == 0:
            # Workers inherit "ignore SIGINT": a Ctrl-C reaches the whole process group, and
            # only the supervisor decides how to shut down (through shutdown_event).
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            while len(processes) < config.workers:
                processes.append(_spawn(context, worker, config, sockets, shutdown_event))
            signal.signal(signal.SIGINT, request_stop)
            signal.signal(signal.SIGTERM, request_stop)
            if hasattr(signal, "SIGHUP"):
                signal.signal(signal.SIGHUP, request_restart)
            if config.use_reloader and watched is None:
                watched = _files_to_watch()  # one snapshot per generation of workers

            timeout = RELOAD_POLL_SECONDS if config.use_reloader else None
            wait([process.sentinel for process in processes], timeout=timeout)
            failed_code = _reap(processes)
            if not stopping and (restart_requested or (watched and _changed(watched))):
                logger.info("Restarting workers")
                restart_requested = False
                watched = None
                failed_code = failed_code or _stop_all(processes, shutdown_event, config)
                shutdown_event.clear()
    finally:
        failed_code = failed_code or _stop_all(processes, shutdown_event, config)
        for sock in [*sockets.secure_sockets, *sockets.insecure_sockets, *sockets.quic_sockets]:
            sock.close()
    if failed_code != 0:
        logger.error(
            "A worker exited with status %d (see its error above; a failed lifespan startup "
            "ends a worker this way); the server stopped",
            failed_code,
        )
        return EXIT_FAILED
    return EXIT_OK


def _spawn(
    context: SpawnContext,
    worker: WorkerFunc,
    config: Config,
    sockets: Sockets,
    shutdown_event: Event,
) -> BaseProcess:
    process = context.Process(
        target=worker,
        kwargs={"config": config, "sockets": sockets, "shutdown_event": shutdown_event},
    )
    process.daemon = config.daemon
    process.start()
    return process


def _reap(processes: list[BaseProcess]) -> int:
    """Forget the workers that exited; return the first non-zero exit status among them.

    A worker may exit 0 on its own (hypercorn's ``max_requests``); the loop replaces it.
    """
    exited = [process for process in processes if process.exitcode is not None]
    for process in exited:
        process.join()
        processes.remove(process)
    return _first_failure(exited)


def _stop_all(processes: list[BaseProcess], shutdown_event: Event, config: Config) -> int:
    """Ask every worker to shut down gracefully, terminating those that overrun their bound.

    Returns the first non-zero exit status (a terminated worker counts as failed).
    """
    shutdown_event.set()
    bound = config.graceful_timeout + config.shutdown_timeout + WORKER_EXIT_MARGIN_SECONDS
    for process in processes:
        process.join(timeout=bound)
        if process.exitcode is None:
            logger.warning("Worker %s did not stop in %.0f s; terminating it", process.pid, bound)
            process.terminate()
            process.join()
    stopped = list(processes)
    processes.clear()
    return _first_failure(stopped)


def _first_failure(processes: list[BaseProcess]) -> int:
    return next((p.exitcode for p in processes if p.exitcode), 0)


def _import_for_watching(config: Config) -> None:
    """Import the app in the supervisor so that its modules are among the watched files."""
    from hypercorn.utils import load_application

    load_application(config.application_path, config.wsgi_max_body_size)


def _files_to_watch() -> dict[Path, float]:
    from hypercorn.utils import files_to_watch

    return files_to_watch()


def _changed(watched: dict[Path, float]) -> bool:
    from hypercorn.utils import check_for_updates

    return check_for_updates(watched)
