"""A hint in the log when asyncio-only code fails on trio.

A MicroPie app written for asyncio (``asyncio.sleep``, aiofiles, an asyncio database driver)
fails on trio with errors that do not name the cause: ``RuntimeError: no running event loop``,
sniffio's ``AsyncLibraryNotFoundError``, or trio's ``TypeError: trio.run received unrecognized
yield message``. ``AsyncioOnTrioHint`` is a filter on the ``micropie`` logger (installed when
micropie is imported): when a record carries such an error and the code logging it runs on
trio, it adds one line to the message that says what happened and what to do. It sees every
error micropie logs (handlers, streams, WebSockets, middleware) without each of those places
having to know about backends.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

__all__ = ["HINT", "AsyncioOnTrioHint", "install", "is_asyncio_only_error"]

HINT = (
    "This error comes from asyncio-only code running on trio (asyncio.sleep, aiofiles, an"
    " asyncio driver...): serve the app on asyncio (python -m micropie APP --backend asyncio,"
    " the default) or use anyio/trio equivalents."
)

_ASYNCIO_ONLY_MESSAGES = (
    "no running event loop",
    "there is no current event loop",
    "unrecognized yield message",  # trio, awaiting an asyncio future
)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, the exceptions inside it (groups) and those it was raised from, each once."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)


def is_asyncio_only_error(error: BaseException) -> bool:
    """Whether ``error`` (or one it contains or was raised from) says "asyncio is not running"."""
    for current in _chain(error):
        if type(current).__name__ == "AsyncLibraryNotFoundError":  # sniffio's, not imported here
            return True
        if isinstance(current, RuntimeError | TypeError):
            message = str(current).lower()
            if any(text in message for text in _ASYNCIO_ONLY_MESSAGES):
                return True
    return False


def _running_on_trio() -> bool:
    try:
        import sniffio

        return sniffio.current_async_library() == "trio"
    except Exception:  # no sniffio, or no async library in this thread
        return False


class AsyncioOnTrioHint(logging.Filter):
    """Adds ``HINT`` as a second line of a record whose error is asyncio-only code on trio."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and _running_on_trio() and is_asyncio_only_error(error):
            record.msg = f"{record.getMessage()}\n{HINT}"
            record.args = None
        return True


_FILTER = AsyncioOnTrioHint()


def install(logger: logging.Logger) -> None:
    """Add the filter to ``logger`` (once, however often this is called)."""
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
