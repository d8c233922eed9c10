"""What ``micropie.serving`` needs from hypercorn, in one place.

``serving`` says *how* a server runs under structured concurrency; this module knows hypercorn:
its lazy import (hypercorn is an optional dependency, ``pip install micropie[serve]``), its
``Config`` and bind rules, its app wrapper, which of its worker loops fits the running event
loop, and how it reads an app's lifespan.

Apps that "decline" lifespan by returning at once from the lifespan call crash hypercorn's trio
worker; ``StartupWatcher`` turns that return into an exception, which both workers read as
"no lifespan support" (see ``LifespanNotSupportedError``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import anyio

from .types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from hypercorn.config import Config, Sockets
    from hypercorn.typing import AppWrapper

__all__ = [
    "LifespanNotSupportedError",
    "StartupWatcher",
    "bound_address",
    "config_class",
    "make_config",
    "worker_serve_for_current_backend",
    "wrap",
]

_INSTALL_HINT = "Serving needs hypercorn: pip install micropie[serve]"

# Hypercorn options that `host`/`port` own: a second way to bind would make the address that
# `started()` reports ambiguous.
_BIND_OPTIONS = frozenset({"bind", "insecure_bind", "quic_bind"})


class LifespanNotSupportedError(Exception):
    """Raised to hypercorn for an app whose lifespan call returned before ``lifespan.shutdown``.

    Many apps "support" lifespan by returning at once (``if scope["type"] != "http":
    return``). Hypercorn's trio worker then crashes (``ClosedResourceError``) when it sends the
    next lifespan event, while an exception makes both workers carry on without lifespan, as the
    ASGI spec asks. So an early return is turned into this exception.
    """


class StartupWatcher:
    """Pass every scope to the app; set ``ready`` once lifespan startup is over.

    "Over" means the app sent ``lifespan.startup.complete``, or its lifespan call ended without
    reporting a failure (an app that does not speak lifespan: hypercorn carries on without it).
    After ``lifespan.startup.failed`` hypercorn aborts, so ``ready`` stays unset.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.ready = anyio.Event()
        #: The message of a ``lifespan.shutdown.failed``: hypercorn's asyncio worker raises for
        #: it and its trio worker does not, so ``serve`` raises it itself, alike on both.
        self.shutdown_failure: str | None = None

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """The app's own call for a connection: no frame of ours in every request's stack
        (hypercorn is told the app is ASGI, so it need not be a coroutine function)."""
        if scope["type"] != "lifespan":
            return self.app(scope, receive, send)
        return self._lifespan(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        startup_failed = False
        shutdown_received = False

        async def watch_receive() -> Message:
            nonlocal shutdown_received
            message = await receive()
            shutdown_received = shutdown_received or message["type"] == "lifespan.shutdown"
            return message

        async def watch_send(message: Message) -> None:
            nonlocal startup_failed
            startup_failed = startup_failed or message["type"] == "lifespan.startup.failed"
            if message["type"] == "lifespan.shutdown.failed":
                self.shutdown_failure = str(message.get("message", ""))
            await send(message)
            if message["type"] == "lifespan.startup.complete":
                self.ready.set()

        try:
            await self.app(scope, watch_receive, watch_send)
            if not shutdown_received and not startup_failed:
                raise LifespanNotSupportedError("the app's lifespan call returned early")
        finally:
            if not startup_failed:
                self.ready.set()


def make_config(host: str, port: int, options: dict[str, Any]) -> Config:
    """Hypercorn's ``Config`` bound to ``host:port``, with the caller's ``options`` set.

    Raises ``TypeError`` for an option hypercorn does not have or one that binds elsewhere.
    """
    config = config_class()()
    for name, value in options.items():
        if name in _BIND_OPTIONS:
            raise TypeError(f"serve() binds host= and port=; {name}= is not supported")
        if name.startswith("_") or not hasattr(config, name):
            raise TypeError(f"serve() got an unknown hypercorn option {name!r}")
        setattr(config, name, value)
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    return config


def bound_address(sockets: Sockets) -> tuple[str, int]:
    """The ``(host, port)`` the first TCP socket is bound to: the real port when 0 was asked."""
    sock = [*sockets.secure_sockets, *sockets.insecure_sockets][0]
    host, port = sock.getsockname()[:2]
    return str(host), int(port)


def wrap(app: ASGIApp, config: Config) -> AppWrapper:
    """``app`` as hypercorn's worker loops call it: an ASGI app (never WSGI)."""
    from hypercorn.typing import ASGIFramework
    from hypercorn.utils import wrap_app

    # Our ASGI aliases are plain mappings; hypercorn's are TypedDicts describing the same thing.
    return wrap_app(cast("ASGIFramework", app), config.wsgi_max_body_size, "asgi")


def worker_serve_for_current_backend() -> Callable[..., Awaitable[None]]:
    """Hypercorn's worker loop for the running event loop.

    We call ``worker_serve`` (what hypercorn's public ``serve`` and its worker processes call)
    because it accepts pre-bound ``sockets`` on both backends; the public ``serve`` does not.
    """
    if _current_backend() == "trio":
        from hypercorn.trio.run import worker_serve as trio_worker_serve

        return trio_worker_serve
    from hypercorn.asyncio.run import worker_serve as asyncio_worker_serve

    return asyncio_worker_serve


def _current_backend() -> str:
    try:
        import sniffio
    except ImportError:  # trio depends on sniffio: without it, this cannot be trio
        return "asyncio"
    return sniffio.current_async_library()


def config_class() -> type[Config]:
    """Hypercorn's ``Config``, or an ``ImportError`` that says how to install it."""
    try:
        from hypercorn.config import Config
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return Config
