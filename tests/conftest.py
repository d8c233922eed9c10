"""Shared fixtures: every async test runs on asyncio and on trio."""

from __future__ import annotations

import pytest

from tests.support.broadcast_fixtures import channel, url  # noqa: F401 - the broadcast tests' fixtures
from tests.support.tls import certificate_authority, tls_files  # noqa: F401 - the HTTP/2 tests' fixtures


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Parametrize every ``@pytest.mark.anyio`` test over both backends."""
    return str(request.param)
