"""Small helpers for living with task groups.

``collapse_excgroups`` is the one place where exception groups are unwrapped: a framework task
group that fails with a single exception re-raises that exception itself (with its own
``__cause__``, ``__context__`` and traceback), so users, middleware and logs never see an
``ExceptionGroup`` for one error. Several concurrent failures stay a group.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["collapse_excgroups", "sole_exception"]


def sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside ``group`` (through nested groups), or ``None`` for several."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        if len(error.exceptions) != 1:
            return None
        error = error.exceptions[0]
    return error


@contextmanager
def collapse_excgroups() -> Iterator[None]:
    try:
        yield
    except BaseExceptionGroup as group:
        error = sole_exception(group)
        if error is None:
            raise
    else:
        return
    # Raised outside the ``except`` block so that Python keeps the error's own ``__context__``.
    raise error
