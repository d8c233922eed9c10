"""Developer tasks. ``nox -s tests`` runs the whole suite; ``nox -s serve`` serves an example."""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"


#: Programs the tests use for real, and the Debian packages that provide them.
SYSTEM_PACKAGES = {
    "redis-server": "redis-server",
    "chromium": "chromium",
    "chromedriver": "chromium-driver",
}


def install_system_packages(session: nox.Session) -> None:
    """apt-get install what the tests need and the machine lacks (as root, on Debian)."""
    missing = sorted({pkg for program, pkg in SYSTEM_PACKAGES.items() if not shutil.which(program)})
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        session.warn(f"install these Debian packages first: {' '.join(missing)}")
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=env)
    session.run("apt-get", "install", "-y", "-qq", *missing, external=True, env=env)


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, every concurrency test on asyncio and trio."""
    install_system_packages(session)
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check (with the ASYNC rules) and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[typecheck]")
    session.run("mypy", "micropie")


@nox.session
def serve(session: nox.Session) -> None:
    """Serve examples/hello on hypercorn's trio worker at http://127.0.0.1:8000."""
    session.install("-e", ".[all]")
    session.run(
        "python",
        "-m",
        "micropie",
        "examples.hello.app:app",
        "--backend",
        "trio",
        "--host",
        "127.0.0.1",
        "--port",
        "8000",
        *session.posargs,
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (in-process and over the wire); not part of CI."""
    session.install("-e", ".[bench]")
    for script in ("inprocess", "wire", "websocket", "uploads"):
        session.run("python", f"benchmarks/{script}.py", *session.posargs)
    # benchmarks/fanout.py needs redis-server; run it by hand (see docs/broadcast.md).


@nox.session
def load(session: nox.Session) -> None:
    """Load and fault suite (benchmarks/load.py) on hypercorn's asyncio and trio workers.

    Not part of the default run. ``nox -s load -- --smoke`` is the CI subset (under a minute);
    ``nox -s load -- --help`` lists the options.
    """
    session.install("-e", ".[bench]", "psutil>=5.9", "websockets>=13.0")
    session.run("python", "benchmarks/load.py", *session.posargs)
