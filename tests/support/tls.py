"""TLS for the HTTP/2 end-to-end tests: a throwaway certificate authority (trustme), a server
certificate for localhost and 127.0.0.1, and a client context that trusts it.

The fixtures are module-scoped (each module that uses them makes its certificate once) and
offered to every test by ``tests/conftest.py``.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

__all__ = ["certificate_authority", "client_context", "tls_files"]


@pytest.fixture(scope="module")
def certificate_authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_files(
    certificate_authority: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """``certfile``/``keyfile`` options for hypercorn: a certificate for localhost and 127.0.0.1."""
    folder: Path = tmp_path_factory.mktemp("tls")
    certificate = certificate_authority.issue_cert("localhost", "127.0.0.1")
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(b"".join(pem.bytes() for pem in certificate.cert_chain_pems))
    certificate.private_key_pem.write_to_path(str(keyfile))
    return {"certfile": str(certfile), "keyfile": str(keyfile)}


def client_context(certificate_authority: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts ``certificate_authority`` (and checks host names)."""
    context = ssl.create_default_context()
    certificate_authority.configure_trust(context)
    return context
