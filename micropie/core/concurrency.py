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


def sole_exception(
    group: BaseExceptionGroup[BaseException], *, levels: int | None = None
) -> BaseException | None:
    """The one exception inside ``group`` (through nested groups, or ``levels`` of them), or
    ``None`` for several."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and levels != 0:
        if len(error.exceptions) != 1:
            return None
        error = error.exceptions[0]
        levels = None if levels is None else levels - 1
    return error


@contextmanager
def collapse_excgroups(*, levels: int | None = None) -> Iterator[None]:
    """Re-raise a group's sole exception; ``levels=1`` unwraps only the group of the task
    group it surrounds, so a group that user code raised inside it comes out as it was."""
    try:
        yield
    except BaseExceptionGroup as group:
        error = sole_exception(group, levels=levels)
        if error is None:
            raise
    else:
        return
    # Python sets the ``__context__`` of an exception raised while another is handled, and
    # ``contextlib`` throws into this generator while the group is handled: the log would show
    # the error twice, inside the group and again "during handling" of it. So the error's own
    # ``__context__`` is put back once it is raised.
    context = error.__context__
    try:
        raise error
    finally:
        error.__context__ = context
