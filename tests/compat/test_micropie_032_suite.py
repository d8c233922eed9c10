"""MicroPie 0.32's own WebSocket tests, run unchanged against this package.

Those tests drive a connection with ``AsyncMock(return_value={"type": "websocket.connect"})``:
a ``receive()`` that answers at once, forever, with a message the server must not send twice.
A framework that keeps calling ``receive()`` after the app's close, or loops on a message type
it does not expect, spins the event loop there. The tests are MicroPie's, so they are not copied
into this repository: this test downloads the 0.32 sdist from PyPI with pip (hash-pinned, cached
in pytest's cache directory when it is enabled), extracts ``tests.py`` alone (not MicroPie's
``micropie.py``) and runs exactly ``TESTS`` in a subprocess with this package importable. A
failed download fails the test: the guarantee is not checked without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

import micropie

VERSION = "0.32"
SDIST = f"micropie-{VERSION}.tar.gz"
SDIST_SHA256 = "e49f00611c8894dcbc9f29668f18ed76f3ebce444a8bcbb8939dc53299b04bb7"
ROOT = Path(__file__).absolute().parent.parent.parent

#: The WebSocket tests of MicroPie 0.32's ``tests.py`` that must pass unchanged.
TESTS = [
    "TestWebSocket::test_websocket_session_uses_app_timeout",
    "TestWebSocket::test_websocket_rotates_unknown_client_session_id",
    "TestWebSocket::test_malformed_websocket_query_is_tolerated",
    "TestWebSocket::test_websocket_cookie_respects_secure_configuration",
    "TestWebSocket::test_websocket_accept_uses_custom_session_id_validator",
    "TestWebSocket::test_websocket_handler_exception_is_logged",
    "TestFastPaths::test_websocket_argument_binding_uses_cached_metadata",
    "TestFastPaths::test_websocket_keyword_only_and_var_keyword_binding",
]

DOWNLOAD_TIMEOUT = 120
#: All eight take about two seconds; a spinning event loop never ends, so this bounds it.
RUN_TIMEOUT = 60


@pytest.fixture(scope="module")
def micropie_032_tests(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A directory holding only MicroPie 0.32's ``tests.py`` (and an empty pytest config)."""
    cache = getattr(request.config, "cache", None)
    download = (
        Path(cache.mkdir(f"micropie-{VERSION}-sdist"))
        if cache is not None
        else tmp_path_factory.mktemp("micropie-sdist")
    )
    if not (download / SDIST).exists():
        requirement = download / "requirement.txt"
        requirement.write_text(f"micropie=={VERSION} --hash=sha256:{SDIST_SHA256}\n")
        pip = subprocess.run(
            [
                sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                "--require-hashes", "-r", str(requirement), "-d", str(download),
                "--disable-pip-version-check", "--quiet",
            ],
            capture_output=True,
            text=True,
            timeout=DOWNLOAD_TIMEOUT,
            check=False,
        )  # fmt: skip
        assert pip.returncode == 0, f"pip could not download MicroPie {VERSION}:\n{pip.stderr}"
    suite = tmp_path_factory.mktemp("micropie-032-tests")
    with tarfile.open(download / SDIST) as sdist:
        member = sdist.extractfile(f"micropie-{VERSION}/tests.py")
        assert member is not None
        (suite / "tests.py").write_bytes(member.read())
    (suite / "pytest.ini").write_text("[pytest]\n")  # not this repository's configuration
    return suite


def test_micropie_032s_websocket_tests_pass_unchanged(micropie_032_tests: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    report = micropie_032_tests / "report.xml"
    where = subprocess.run(
        [sys.executable, "-c", "import micropie; print(micropie.__file__)"],
        cwd=micropie_032_tests,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=True,
    )
    assert Path(where.stdout.strip()) == Path(micropie.__file__)  # ours, not MicroPie's
    run = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-c", "pytest.ini", "-p", "no:cacheprovider",
            "-p", "no:randomly", "-q", f"--junitxml={report}",
            *(f"tests.py::{test}" for test in TESTS),
        ],
        cwd=micropie_032_tests,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    cases = ElementTree.parse(report).getroot().iter("testcase")
    outcomes = {
        f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}": [
            child.tag for child in case if child.tag in ("failure", "error", "skipped")
        ]
        for case in cases
    }
    assert outcomes == {test: [] for test in TESTS}, output
