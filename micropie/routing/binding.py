"""From a request to a handler's arguments.

Binding inspects a handler's signature once (``HandlerPlan``, cached per function) and then fills
each parameter from the first source that has it: path segment, query, form field, JSON key,
uploaded file, default. Session values never bind: they are trusted state, read them from
``self.request.session``.

Finding the handler for a path is ``micropie.routing``'s job; it asks ``plan_for`` for the plan
of what it found and re-exports every name here, so ``routing.X`` keeps working.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from micropie.core.errors import HTTPError
from micropie.lifetimes.policy import HandlerPolicy, policy_of

__all__ = [
    "MISSING",
    "BindingError",
    "HandlerPlan",
    "Parameter",
    "PendingForm",
    "bind_http",
    "bind_parameters",
    "plan_for",
    "wait_for_form_fields",
]

MISSING: Any = object()
_PLAN_CACHE_LIMIT = 4096
_plans: dict[Any, HandlerPlan] = {}


# --- signatures ------------------------------------------------------------------------------


def _coerce_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(text)


_COERCERS: dict[Any, Callable[[str], Any]] = {int: int, float: float, bool: _coerce_bool}


def _coercer_for(annotation: Any) -> Callable[[str], Any] | None:
    """A converter for ``int``/``float``/``bool`` annotations (also ``X | None``), else ``None``."""
    if annotation in _COERCERS:
        return _COERCERS[annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            return _COERCERS.get(members[0])
    return None


@dataclass(frozen=True, slots=True)
class Parameter:
    name: str
    kind: inspect._ParameterKind
    default: Any
    coerce: Callable[[str], Any] | None


@dataclass(frozen=True, slots=True)
class HandlerPlan:
    """What binding needs to know about a handler, worked out once per function."""

    parameters: tuple[Parameter, ...]
    accepts_positional: bool
    var_keyword: bool
    is_coroutine: bool
    #: ``@shielded`` and ``@time_limit``, read once here rather than on every request.
    policy: HandlerPolicy


def _signature(handler: Callable[..., Any]) -> inspect.Signature:
    try:
        return inspect.signature(handler, eval_str=True)
    except Exception:  # unresolvable string annotations: bind without coercion
        return inspect.signature(handler)


def plan_for(raw: Any, handler: Callable[..., Any]) -> HandlerPlan:
    """The cached ``HandlerPlan`` for ``handler`` (keyed by its stable raw attribute)."""
    plan = _plans.get(raw)
    if plan is not None:
        return plan
    parameters = tuple(
        Parameter(p.name, p.kind, p.default, _coercer_for(p.annotation))
        for p in _signature(handler).parameters.values()
        # A wrapper's signature may still show ``self`` (``singledispatchmethod`` does).
        if p.name != "self"
    )
    positional = {inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD}
    plan = HandlerPlan(
        parameters=parameters,
        accepts_positional=any(
            p.kind in positional or p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters
        ),
        var_keyword=any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters),
        is_coroutine=inspect.iscoroutinefunction(handler),
        policy=policy_of(handler),
    )
    if len(_plans) >= _PLAN_CACHE_LIMIT:  # handlers replaced at run time: never grow unbounded
        _plans.clear()
    _plans[raw] = plan
    return plan


# --- binding ---------------------------------------------------------------------------------


def _from_request(request: Any, name: str) -> Any:
    """A named value from query, form, JSON object or files, in MicroPie's order."""
    values = request.query_params.get(name)
    if values:
        return values[0]
    values = request.body_params.get(name)
    if values:
        return values[0]
    body = request._json
    if isinstance(body, dict) and name in body:
        return body[name]
    return request.files.get(name, MISSING)


class BindingError(Exception):
    """A parameter could not be bound: ``Missing required parameter 'x'`` and the like."""

    def __init__(self, reason: str, name: str) -> None:
        super().__init__(f"{reason} '{name}'")
        self.name = name


def _coerced(parameter: Parameter, value: Any) -> Any:
    if parameter.coerce is None or not isinstance(value, str):
        return value
    try:
        return parameter.coerce(value)
    except ValueError:
        raise BindingError("Invalid value for parameter", parameter.name) from None


def bind_parameters(
    parameters: Sequence[Parameter], path: list[str], lookup: Callable[[str], Any]
) -> tuple[list[Any], dict[str, Any], set[str]]:
    """Bind ``parameters`` in order: next path segment, else ``lookup(name)``, else default.

    ``*args`` takes the remaining segments; keyword-only parameters go into the keyword
    arguments (and, as in MicroPie, consume path segments too). Returns the arguments and the
    names bound; raises ``BindingError`` for a missing or invalid value.
    """
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    used: set[str] = set()
    position = 0
    for parameter in parameters:
        kind = parameter.kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            args.extend(path[position:])
            position = len(path)
            continue
        if kind is inspect.Parameter.VAR_KEYWORD:
            continue
        if position < len(path):
            value = path[position]
            position += 1
        else:
            value = lookup(parameter.name)
        if value is MISSING:
            if parameter.default is inspect.Parameter.empty:
                raise BindingError("Missing required parameter", parameter.name)
            value = parameter.default
        else:
            value = _coerced(parameter, value)
        used.add(parameter.name)
        if kind is inspect.Parameter.KEYWORD_ONLY:
            kwargs[parameter.name] = value
        else:
            args.append(value)
    return args, kwargs, used


class PendingForm(Protocol):
    """A multipart form that is still arriving while the handler's arguments are bound."""

    async def field(self, name: str) -> Any:
        """Wait until field or file ``name`` arrives; ``MISSING`` if the form ends without it."""

    async def complete(self) -> None:
        """Wait until the whole form has arrived (raises ``HTTPError`` if it cannot)."""

    def check(self) -> None:
        """Raise the form's ``HTTPError`` now if the upload has already failed."""


async def wait_for_form_fields(plan: HandlerPlan, request: Any, form: PendingForm) -> None:
    """Wait, without polling, until every parameter ``bind_http`` will look for has arrived.

    Runs while a multipart form is still arriving: a parameter that no path segment or source
    has yet waits for its field or file (the parser stores it in ``request.body_params`` or
    ``request.files``), and ``**kwargs`` waits for the whole form.
    """
    position = len(request.path_params)
    for parameter in plan.parameters:
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            position = 0
        elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
            await form.complete()
        elif position > 0:
            position -= 1
        elif _from_request(request, parameter.name) is MISSING:
            await form.field(parameter.name)


def bind_http(plan: HandlerPlan, request: Any) -> tuple[list[Any], dict[str, Any]]:
    """Positional and keyword arguments for an HTTP handler, or ``HTTPError(400)``.

    Sources, in MicroPie's order: path segment, query, form field, JSON key, uploaded file.
    ``**kwargs`` collects the names the request supplies that no parameter took.
    """
    if not plan.parameters:
        return [], {}
    try:
        args, kwargs, used = bind_parameters(
            plan.parameters, request.path_params, partial(_from_request, request)
        )
    except BindingError as error:
        raise HTTPError(400, f"400 Bad Request: {error}") from None
    if plan.var_keyword:
        for name in _request_names(request):
            if name not in used and name not in kwargs:
                value = _from_request(request, name)
                if value is not MISSING:
                    kwargs[name] = value
    return args, kwargs


def _request_names(request: Any) -> list[str]:
    """Every name the request supplies, in source order, without duplicates."""
    names = [name for name, values in request.query_params.items() if values]
    names += request.body_params
    if isinstance(request._json, dict):
        names += request._json
    names += request.files
    return list(dict.fromkeys(names))
