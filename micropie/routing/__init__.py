"""From a path to a handler.

Routing is MicroPie's: ``/a/b/c`` calls ``a("b", "c")``, ``/`` calls ``index``, an unknown name
falls back to ``index`` when it takes positional parameters. Only callables a subclass defines
are routes: names starting with ``_`` or ``ws_``, anything the ``App`` base class itself defines
(``serve``, ``run``, ``request`` …), properties and other data attributes are never routes, and
looking a name up never evaluates a property.

Turning the request into the handler's arguments is ``micropie.routing.binding``'s job; its names
are re-exported here so that callers can keep writing ``routing.bind_http`` and the like.
"""

from __future__ import annotations

import enum
import types
from collections.abc import Callable
from typing import Any

from micropie.routing.binding import (
    MISSING,
    BindingError,
    HandlerPlan,
    Parameter,
    PendingForm,
    bind_http,
    bind_parameters,
    plan_for,
    wait_for_form_fields,
)

__all__ = [
    "MISSING",
    "BindingError",
    "HandlerPlan",
    "HandlerTable",
    "Lookup",
    "Parameter",
    "PendingForm",
    "bind_http",
    "bind_parameters",
    "plan_for",
    "resolve_handler",
    "wait_for_form_fields",
]


class Lookup(enum.Enum):
    """Why a name is not a route: nothing by that name, or something that is not a handler."""

    MISSING = "missing"
    NOT_A_ROUTE = "not a route"


def _static_attribute(owner: object, name: str, base: type) -> Any:
    """Find ``name`` on ``owner`` without running descriptors (like ``inspect.getattr_static``).

    Attributes of the framework's own ``base`` class count as missing: they are never routes,
    and a path such as ``/run`` reaches ``index("run")`` just as it did in MicroPie.
    """
    class_attribute: Any = Lookup.MISSING
    for klass in type(owner).__mro__:
        if name in klass.__dict__:
            if klass is not base and klass is not object:
                class_attribute = klass.__dict__[name]
            break
    if class_attribute is not Lookup.MISSING:
        kind = type(class_attribute)
        if hasattr(kind, "__set__") or hasattr(kind, "__delete__"):
            return class_attribute  # data descriptors win over the instance dict
    return getattr(owner, "__dict__", {}).get(name, class_attribute)


def _is_route_like(attribute: Any) -> bool:
    """Whether a raw attribute may be a handler: callables and non-data descriptors of them."""
    kind = type(attribute)
    if isinstance(attribute, property) or hasattr(kind, "__set__") or hasattr(kind, "__delete__"):
        return False
    return callable(attribute) or hasattr(kind, "__get__")


def resolve_handler(
    owner: object, name: str, base: type
) -> tuple[Any, Callable[..., Any]] | Lookup:
    """Return ``(raw attribute, bound callable)`` for route ``name``, or why there is none.

    The raw attribute is stable across requests (a ``partialmethod`` makes a new bound object on
    every access), so it keys the signature cache. A property is never evaluated.
    """
    raw = _static_attribute(owner, name, base)
    if raw is Lookup.MISSING:
        return Lookup.MISSING
    if not _is_route_like(raw):
        return Lookup.NOT_A_ROUTE
    if isinstance(raw, types.FunctionType):
        return raw, types.MethodType(raw, owner)
    try:
        handler = getattr(owner, name)
    except Exception:
        return Lookup.NOT_A_ROUTE
    return (raw, handler) if callable(handler) else Lookup.NOT_A_ROUTE


class HandlerTable:
    """Route lookup for one app, remembering what it found for methods its class defines.

    A hit is checked against the class on every request (one dict lookup), so a handler
    replaced at run time, on the instance or on the class, is seen at once.
    """

    def __init__(self, owner: object, base: type) -> None:
        self._owner = owner
        self._base = base
        self._known: dict[str, tuple[type, types.FunctionType, HandlerPlan]] = {}

    def lookup(self, name: str) -> tuple[Callable[..., Any], HandlerPlan] | Lookup:
        owner = self._owner
        known = self._known.get(name)
        if known is not None:
            klass, raw, plan = known
            if klass.__dict__.get(name) is raw and name not in owner.__dict__:
                return types.MethodType(raw, owner), plan
        found = resolve_handler(owner, name, self._base)
        if isinstance(found, Lookup):
            return found
        raw, handler = found
        plan = plan_for(raw, handler)
        if isinstance(raw, types.FunctionType) and name not in owner.__dict__:
            klass = next(k for k in type(owner).__mro__ if k.__dict__.get(name) is raw)
            self._known[name] = (klass, raw, plan)
        return handler, plan
