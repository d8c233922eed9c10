"""``python -m micropie module:app``: serve an ASGI app on hypercorn.

Two ways to run, one command line:

* ``--workers 0`` (the default) serves in this process through ``micropie.serving.run``:
  SIGINT and SIGTERM shut down gracefully on both backends, and a failed lifespan startup
  raises here, so the exit status says so.
* ``--workers N`` (N >= 1) or ``--reload`` runs a supervisor (``micropie.serving.supervisor``) that
  spawns N worker processes serving the app the same way, on shared, pre-bound sockets (so
  ``--port 0`` works). SIGINT/SIGTERM, to the supervisor or to the whole process group (``docker
  stop``, systemd, ``timeout``), ask the workers to shut down gracefully; SIGHUP or a changed
  source file (``--reload``) restarts them. Unlike ``hypercorn.run.run``, which exits 0 when a
  worker died (e.g. after failing its lifespan startup), the supervisor reports that and exits 1.

Exit status: 0 after a clean shutdown, 1 when the server or a worker failed (a failed lifespan
startup included), 2 for a bad command line or an app that cannot be loaded.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import platform
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from micropie.core.types import ASGIApp
from micropie.serving import run
from micropie.serving.loading import AppLoadError, load_app
from micropie.serving.supervisor import EXIT_FAILED, EXIT_OK, supervise

if TYPE_CHECKING:
    from hypercorn.config import Config

logger = logging.getLogger("micropie")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT

LOG_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(message)s"

DESCRIPTION = "Serve an ASGI application (a micropie App or any other) on hypercorn."
EPILOG = """\
examples:
  python -m micropie hello:app
  python -m micropie hello:app --port 0 --backend trio
  python -m micropie myproject.web:app --host 0.0.0.0 --workers 4
  python -m micropie hello:app --reload

APP is MODULE:ATTRIBUTE. MODULE is an importable dotted name (the current directory is
searched first) or a path to a .py file; ATTRIBUTE defaults to "app".
With --port 0 a free port is chosen; the log line "Running on http://HOST:PORT" names it.
The default backend is asyncio, as for hypercorn and uvicorn: a MicroPie app that calls
asyncio-only code (asyncio.sleep, aiofiles) runs as it is; trio programs pass --backend trio.

exit status: 0 clean shutdown, 1 server or worker failure (including a failed lifespan
startup), 2 bad command line or unloadable app.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error("--workers must be 0 or more")
    level = args.log_level.upper()
    logging.config.dictConfig(_logging_config(level))
    try:
        # Also done before spawning workers (which import it again): one clear error and
        # status 2 instead of a traceback from every worker.
        app = load_app(args.app)
    except AppLoadError as exc:
        parser.error(str(exc))  # exits with status 2
    if args.workers > 0 or args.reload:
        return supervise(_worker_config(args, level))
    return _serve_here(app, args, level)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m micropie",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("app", metavar="APP", help="the application, as MODULE:ATTRIBUTE")
    parser.add_argument("--version", action="version", version=version_line())
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="port to bind, 0 for any free port (default: 8000)"
    )
    parser.add_argument(
        "--backend",
        choices=["asyncio", "trio"],
        default="asyncio",
        help="event loop to run on (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="0: serve in this process (default); N >= 1: spawn N worker processes",
    )
    parser.add_argument(
        "--reload",
        action="store_true",
        help="restart the workers when a source file changes (development; implies a worker)",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error", "critical"],
        default="info",
        type=str.lower,
        help="log level of the server and the micropie logger (default: %(default)s)",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log every request to stdout in hypercorn's access-log format",
    )
    return parser


def version_line() -> str:
    """What ``--version`` prints: the distribution's name and version, the import name and the
    Python that runs it (the distribution is not called ``micropie``: that is MicroPie 0.32)."""
    from micropie import __version__

    return (
        f"micropie-anyio {__version__} (import name micropie) on Python {platform.python_version()}"
    )


def _serve_here(app: ASGIApp, args: argparse.Namespace, level: str) -> int:
    failure: Exception | None = None
    try:
        run(
            app,
            host=args.host,
            port=args.port,
            backend=args.backend,
            loglevel=level,
            **_access_log_options(args),
        )
    except KeyboardInterrupt:  # Ctrl-C before run() installed its signal handlers
        return EXIT_INTERRUPTED
    except SystemExit as exited:  # run() logged the one line (an address it cannot bind)
        return exited.code if isinstance(exited.code, int) else EXIT_FAILED
    except Exception as exc:
        failure = exc
    if failure is None:
        return EXIT_OK
    # One line names the cause (e.g. "Lifespan failure in startup. 'database unreachable'");
    # the traceback is for --log-level debug.
    logger.error("Server failed: %s", failure)
    logger.debug("Server failure details", exc_info=failure)
    return EXIT_FAILED


def _logging_config(level: str) -> dict[str, Any]:
    """Send micropie's log to stderr in hypercorn's format (applied in every worker too)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"micropie": {"format": LOG_FORMAT, "datefmt": "[%Y-%m-%d %H:%M:%S %z]"}},
        "handlers": {
            "micropie": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "micropie",
            }
        },
        "loggers": {"micropie": {"level": level, "handlers": ["micropie"], "propagate": False}},
    }


def _worker_config(args: argparse.Namespace, level: str) -> Config:
    from hypercorn.config import Config

    config = Config()
    config.application_path = args.app
    config.bind = [f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}"]
    config.worker_class = args.backend
    config.workers = max(args.workers, 1)
    config.use_reloader = args.reload
    config.loglevel = level
    config.logconfig_dict = _logging_config(level)
    for name, value in _access_log_options(args).items():
        setattr(config, name, value)
    return config


def _access_log_options(args: argparse.Namespace) -> dict[str, Any]:
    """Hypercorn's access log to stdout (``accesslog="-"``), in its default format."""
    return {"accesslog": "-"} if args.access_log else {}


if __name__ == "__main__":
    sys.exit(main())
