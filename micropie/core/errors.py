"""Exceptions the framework raises for itself and the answers they turn into."""

from __future__ import annotations

import sys

import anyio

__all__ = ["ClientDisconnected", "HTTPError", "MultipartFileError", "is_send_failure"]


class HTTPError(Exception):
    """A request that cannot be served: answered with ``status`` and a plain-text ``body``.

    Raised while reading the body, routing or binding arguments. Like MicroPie's early exits,
    such answers skip ``after_request`` and the session save.
    """

    def __init__(self, status: int, body: str) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


class ClientDisconnected(Exception):
    """The client left before the request could be answered: nothing more is sent."""


class MultipartFileError(Exception):
    """An uploaded file did not arrive whole: cut short, too large or malformed.

    ``cause`` holds the original error. A handler that streams an upload to disk must treat this
    as "discard what you wrote": the file is incomplete.
    """

    def __init__(self, cause: BaseException | None = None) -> None:
        super().__init__("Multipart file upload did not complete")
        self.cause = cause


def is_send_failure(error: BaseException) -> bool:
    """Whether ``error``, raised by the server's ``send()``, means the client is gone.

    The ASGI spec asks servers to raise an ``OSError`` for a closed connection; a server built
    on anyio or trio streams may let their ``BrokenResourceError``/``ClosedResourceError``
    through instead. Trio's are checked only when trio is loaded: it is an optional extra.
    """
    if isinstance(error, OSError | anyio.BrokenResourceError | anyio.ClosedResourceError):
        return True
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(
        error, trio.BrokenResourceError | trio.ClosedResourceError
    )
