"""The ``--workers N`` / ``--reload`` supervisor behind ``python -m micropie``.

It spawns N worker processes that serve the app with ``micropie.serving`` on shared, pre-bound
sockets (so ``--port 0`` works), the way a single process does: the same hypercorn worker
loop, the same fixes and the same ``graceful_timeout``. SIGINT/SIGTERM ask the workers to shut
down gracefully; SIGHUP or a changed source file (``--reload``) restarts them. The loop is a
small copy of ``hypercorn.run.run`` because hypercorn's exits 0 when a worker died, e.g. after
failing its lifespan startup; ours reports that and exits 1.

Only the supervisor handles signals. ``docker stop``, systemd and ``timeout`` signal the whole
process group, workers included; a worker that died of that signal would read as a failure.
So workers ignore SIGINT, SIGTERM and SIGHUP and stop when the supervisor tells them to (its
``shutdown_event``). The signals are blocked while a worker is spawned, so the worker is never
without that protection and the supervisor loses none of them.

It lives apart from the command line (``micropie.__main__``) because it is a different job:
the command line parses arguments and serves in its own process, the supervisor owns child
processes, signals and their exit statuses.
"""

from __future__ import annotations

import logging
import signal
from functools import partial
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

__all__ = ["EXIT_FAILED", "EXIT_OK", "serve_worker", "supervise"]

logger = logging.getLogger("micropie")

EXIT_OK = 0
EXIT_FAILED = 1

# How often the --reload supervisor looks for changed files (hypercorn uses the same period).
RELOAD_POLL_SECONDS = 1.0
# Extra time a stopping worker gets beyond hypercorn's own graceful and lifespan timeouts
# before the supervisor terminates it.
WORKER_EXIT_MARGIN_SECONDS = 5.0


#: The signals the supervisor handles and its workers ignore.
SUPERVISOR_SIGNALS = frozenset(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def serve_worker(config: Config, sockets: Sockets, shutdown_event: Event) -> None:
    """One worker process: serve ``config.application_path`` until ``shutdown_event`` is set.

    Runs ``micropie.serving.serve_on_sockets`` on ``config.worker_class`` ("trio" or
    "asyncio"); a failed startup raises, so the process exits non-zero.
    """
    for signum in SUPERVISOR_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)  # discards any that arrived while spawning
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SUPERVISOR_SIGNALS)

    import anyio
    from hypercorn.utils import check_multiprocess_shutdown_event

    from micropie.serving import serve_on_sockets
    from micropie.serving.loading import load_app

    app = load_app(config.application_path)
    anyio.run(
        partial(
            serve_on_sockets,
            app,
            config,
            sockets,
            shutdown_trigger=partial(
                check_multiprocess_shutdown_event, shutdown_event, anyio.sleep
            ),
        ),
        backend=config.worker_class,
    )


def supervise(config: Config) -> int:
    """Keep ``config.workers`` worker processes running until a signal or a worker failure.

    Returns 0 after a requested shutdown, 1 when a worker exited with a non-zero status (its
    traceback, e.g. hypercorn's ``LifespanFailureError``, is already on stderr) or when the
    address cannot be bound (one line names it).
    """
    from micropie.serving.hypercorn_glue import BindError, create_sockets

    try:
        sockets = create_sockets(config)
    except BindError as error:
        logger.error("%s", error)  # noqa: TRY400 - one line names the address: no traceback
        return EXIT_FAILED
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
            signal.signal(signal.SIGINT, request_stop)
            signal.signal(signal.SIGTERM, request_stop)
            if hasattr(signal, "SIGHUP"):
                signal.signal(signal.SIGHUP, request_restart)
            # Workers start with these signals blocked (the mask is inherited) and ignore them
            # before unblocking; here they stay pending until the workers are spawned.
            signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISOR_SIGNALS)
            try:
                while len(processes) < config.workers:
                    processes.append(_spawn(context, config, sockets, shutdown_event))
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, SUPERVISOR_SIGNALS)
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
    config: Config,
    sockets: Sockets,
    shutdown_event: Event,
) -> BaseProcess:
    process = context.Process(
        target=serve_worker,
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
            # SIGKILL: workers ignore SIGTERM (see the module docstring).
            logger.warning("Worker %s did not stop in %.0f s; killing it", process.pid, bound)
            process.kill()
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
