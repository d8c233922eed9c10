"""Developer tasks. ``nox -s tests`` runs the whole suite on every supported Python (one of them:
``nox -s tests-3.11``); ``nox -s serve`` serves an example."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import nox

nox.needs_version = ">=2025.2.9"  # nox.project.dependency_groups

#: The Pythons CI runs the whole suite on; each must be installed (see ``add_pyenv_pythons``).
PYTHONS = ["3.11", "3.12", "3.13"]

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"
# A Python that is not installed fails the run: a skipped interpreter is not a pass. And nox
# never downloads one (CI machines only reach package registries).
nox.options.error_on_missing_interpreters = True
nox.options.download_python = "never"


def runs(program: str) -> bool:
    """Whether ``program -c pass`` works: a pyenv shim exists for every installed version but
    fails for those that are not selected (``pyenv global``/``PYENV_VERSION``)."""
    try:
        return (
            subprocess.run([program, "-c", "pass"], capture_output=True, timeout=30).returncode == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def add_pyenv_pythons() -> None:
    """Put pyenv's interpreters for ``PYTHONS`` on PATH when ``pythonX.Y`` does not run as is.

    pyenv installs each version under ``$PYENV_ROOT/versions/X.Y.Z/bin``; its shims only run the
    selected versions. The newest installed patch release of each missing X.Y is used. A version
    found neither way stays missing, and nox then fails naming it.
    """
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    directories = []
    for version in PYTHONS:
        program = f"python{version}"
        found = shutil.which(program)
        if found is not None and runs(found):
            continue
        release = re.compile(rf"{re.escape(version)}\.(\d+)")
        installed = [
            (int(match.group(1)), path / "bin" / program)
            for path in pyenv_root.glob("versions/*")
            if (match := release.fullmatch(path.name))
        ]
        for _, candidate in sorted(installed, reverse=True):
            if runs(str(candidate)):
                directories.append(str(candidate.parent))
                break
    if directories:
        os.environ["PATH"] = os.pathsep.join([*directories, os.environ.get("PATH", "")])


add_pyenv_pythons()

#: The developer tools are PEP 735 dependency groups in pyproject.toml (not extras a user could
#: install); ``group(name)`` lists one for ``session.install``, whatever pip the session has.
PYPROJECT = nox.project.load_toml("pyproject.toml")


def group(name: str) -> tuple[str, ...]:
    """The requirements of dependency group ``name``."""
    return nox.project.dependency_groups(PYPROJECT, name)


#: Branch coverage (percent) the whole suite must reach: raise it as tests are added.
COVERAGE_FLOOR = 91

#: Programs the tests use for real, and the Debian packages that provide them.
SYSTEM_PACKAGES = {
    "redis-server": "redis-server",
    "chromium": "chromium",
    "chromedriver": "chromium-driver",
}


def install_system_packages(session: nox.Session, *, whole_suite: bool) -> None:
    """apt-get install what the tests need and the machine lacks (as root, on Debian).

    Without root or apt-get the whole suite stops here, naming the packages (some of its tests
    would fail anyway); a selection only warns, since it may not need them.
    """
    missing = sorted({pkg for program, pkg in SYSTEM_PACKAGES.items() if not shutil.which(program)})
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        command = f"apt-get install -y {' '.join(missing)}"
        why = "not root" if shutil.which("apt-get") else "no apt-get"
        message = f"the tests need programs this machine lacks ({why}); install them: {command}"
        if whole_suite:
            session.error(message)
        session.warn(f"{message} (tests of this selection that need them will fail)")
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=env)
    session.run("apt-get", "install", "-y", "-qq", *missing, external=True, env=env)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole suite on one Python, every concurrency test on asyncio and trio.

    ``nox -s tests`` runs it on every Python in PYTHONS; ``nox -s tests-3.11 -- tests/http``
    runs one folder on one Python. Branch coverage of the package is measured in this process
    (servers started as subprocesses are not counted); the whole suite must reach
    ``COVERAGE_FLOOR``, a selection (a path, ``-k`` or ``-m``) has no floor.
    """
    selects = any(
        arg in ("-k", "-m") or arg.startswith(("tests", "-k", "-m")) for arg in session.posargs
    )
    install_system_packages(session, whole_suite=not selects)
    session.install("-e", ".[all]", *group("test"))
    coverage = ["--cov=micropie", "--cov-branch", "--cov-report=term:skip-covered"]
    if not selects:
        coverage.append(f"--cov-fail-under={COVERAGE_FLOOR}")
    session.run("python", "-m", "pytest", *coverage, *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check (with the ASYNC rules), ruff format --check, and lint-imports: the layers
    and the import cycles (contracts in pyproject.toml)."""
    session.install("-e", ".", *group("lint"))  # lint-imports reads the installed package
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[all]", *group("typecheck"))
    session.run("mypy", "micropie")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site into site/ with ``mkdocs build --strict``.

    ``nox -s docs -- serve`` serves it with live reload instead. The code samples the pages
    include (docs_src/) are run by tests/test_docs_samples.py in ``nox -s tests``.
    """
    session.install("-e", ".[all]", *group("docs"))
    session.env["NO_MKDOCS_2_WARNING"] = "1"  # Material's notice about its successor
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", *session.posargs[1:])
    else:
        session.run("mkdocs", "build", "--strict", *session.posargs)


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


#: What MicroPie 0.32's examples import beyond micropie, and what scripts/compat_032.py uses.
COMPAT_PACKAGES = ["httpx>=0.27", "websockets>=13.0", "pydantic>=2", "aiofiles>=23"]


@nox.session
def compat(session: nox.Session) -> None:
    """MicroPie 0.32's own examples, unchanged, under micropie on asyncio; prints a table.

    Downloads the MicroPie 0.32 sdist from PyPI when it runs (so it needs the network, and is
    not one of the default sessions), serves each self-contained example with
    ``python -m micropie`` and checks its answers over real HTTP and WebSockets
    (scripts/compat_032.py). ``nox -s compat -- hello_world sessions`` runs some of them.
    """
    session.install("-e", ".[all]", *COMPAT_PACKAGES)
    session.run("python", "scripts/compat_032.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (in-process and over the wire); not part of CI."""
    session.install("-e", ".[all]", *group("bench"))
    for script in ("inprocess", "wire", "websocket", "uploads"):
        session.run("python", f"benchmarks/{script}.py", *session.posargs)
    # benchmarks/fanout.py needs redis-server; run it by hand (see docs/broadcast.md).


@nox.session
def load(session: nox.Session) -> None:
    """Load and fault suite (benchmarks/load.py) on hypercorn's asyncio and trio workers.

    Not part of the default run. ``nox -s load -- --smoke`` is the CI subset (under a minute);
    ``nox -s load -- --help`` lists the options.
    """
    session.install(
        "-e", ".[all]", *group("bench"), "psutil>=5.9", "websockets>=13.0", "sniffio>=1.3"
    )
    session.run("python", "benchmarks/load.py", *session.posargs)
