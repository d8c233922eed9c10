"""What a handler asks of its request's lifetime: ``@shielded`` and ``@time_limit``.

The decorators only mark the function (an attribute on it, the function itself unchanged, so
binding sees its real signature); routing reads the marks once per handler into its plan
(``HandlerPolicy``), and the app acts on them per request at the cost of reading the plan:

* ``@shielded``: the client leaving does not cancel the handler (``ConnectionScope.keep_running``).
  Cancellation from outside still reaches it: the server cancels it when its graceful shutdown
  runs out, and body limits and ``body_timeout`` still end the body it reads.
* ``@time_limit(seconds)``: the handler runs in a cancel scope with that deadline, from when it
  starts; ``None`` lifts the app's ``request_timeout`` for this handler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["APP_DEFAULT", "HandlerPolicy", "policy_of", "shielded", "time_limit"]

_F = TypeVar("_F", bound=Callable[..., Any])

_SHIELDED = "__micropie_shielded__"
_TIME_LIMIT = "__micropie_time_limit__"


class _AppDefault:
    """The handler has no ``@time_limit``: the app's ``request_timeout`` applies."""

    def __repr__(self) -> str:
        return "APP_DEFAULT"


APP_DEFAULT: Any = _AppDefault()


@dataclass(frozen=True, slots=True)
class HandlerPolicy:
    """A handler's marks: whether it is shielded, and its time limit (``APP_DEFAULT``: none)."""

    shielded: bool = False
    time_limit: float | None = APP_DEFAULT


#: The policy of a handler with no marks: shared, so plain handlers cost no object.
PLAIN = HandlerPolicy()


def shielded(handler: _F) -> _F:
    """Let ``handler`` run to the end when its client leaves.

    Its result is then discarded (there is no one to answer), changes to a session the client
    already had are saved, and middleware and ``after_request`` run as for any request. It is
    still bounded: server shutdown cancels it when ``graceful_timeout`` runs out, and body
    limits and ``body_timeout`` still apply. A streamed response still stops when its client
    leaves. Use it for handlers whose work must not stop half-way (a payment, a migration);
    for one write inside a handler, a shield (``anyio.CancelScope(shield=True)``) is enough.
    """
    setattr(handler, _SHIELDED, True)
    return handler


def time_limit(seconds: float | None) -> Callable[[_F], _F]:
    """Give a handler ``seconds`` from when it starts, overriding the app's ``request_timeout``.

    When they run out, the handler is cancelled as if its client had left (shielded blocks
    finish first) and the client gets ``503 Service Unavailable: Request timed out``; a
    streamed response that has started is cut off instead. ``@time_limit(None)``: no limit for
    this handler, whatever the app's ``request_timeout``.
    """
    if seconds is not None and (not isinstance(seconds, int | float) or not seconds > 0):
        raise ValueError(f"time_limit needs a positive number of seconds or None, not {seconds!r}")
    if seconds is not None and math.isinf(seconds):
        seconds = None

    def mark(handler: _F) -> _F:
        setattr(handler, _TIME_LIMIT, seconds)
        return handler

    return mark


def policy_of(handler: Any) -> HandlerPolicy:
    """The marks on ``handler`` (a function, a bound method or any callable)."""
    function = getattr(handler, "__func__", handler)
    marked_shielded = getattr(function, _SHIELDED, False) is True
    limit = getattr(function, _TIME_LIMIT, APP_DEFAULT)
    if not marked_shielded and limit is APP_DEFAULT:
        return PLAIN
    return HandlerPolicy(shielded=marked_shielded, time_limit=limit)
