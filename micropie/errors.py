"""Exceptions the framework raises for itself and the answers they turn into."""

from __future__ import annotations

__all__ = ["ClientDisconnected", "HTTPError", "MultipartFileError"]


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
