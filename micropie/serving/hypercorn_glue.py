"""What ``micropie.serving`` needs from hypercorn, in one place.

``serving`` says *how* a server runs under structured concurrency; this module knows hypercorn:
its lazy import (hypercorn is an optional dependency,
``pip install 'micropie-anyio[serve]'``), its ``Config`` and bind rules, its app wrapper, which
of its worker loops fits the running event loop, and how it reads an app's lifespan.

Apps that "decline" lifespan by returning at once from the lifespan call crash hypercorn's trio
worker; ``StartupWatcher`` turns that return into an exception, which both workers read as
"no lifespan support" (see ``LifespanNotSupportedError``).

Two defects of hypercorn itself are worked around here:

* Its trio worker can die of a ``BusyResourceError`` when a client closes a WebSocket while the
  app does (``fix_hypercorn_trio_send_eof``, applied by ``serve`` and by a micropie ``App``'s
  lifespan startup; docs/hypercorn-trio-send-eof.md has the details and the upstream report).
* Its asyncio worker ignores ``graceful_timeout`` on Python >= 3.12.1 while a request is
  still running (``StartupWatcher.cancel_app_calls``), and on older Pythons it cancels whole
  connections at that moment instead of the app calls on them (``worker_config``).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import logging
import socket
import sys
import traceback
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import anyio

from micropie.core.types import ASGIApp, Message, Receive, Scope, Send
from micropie.lifetimes.cancel_scopes import native_current_task

if TYPE_CHECKING:
    from hypercorn.config import Config, Sockets
    from hypercorn.typing import AppWrapper

__all__ = [
    "BindError",
    "LifespanNotSupportedError",
    "StartupWatcher",
    "bound_address",
    "config_class",
    "create_sockets",
    "fix_hypercorn_trio_send_eof",
    "fix_loaded_hypercorn",
    "make_config",
    "worker_config",
    "worker_serve_for_current_backend",
    "wrap",
]

logger = logging.getLogger("micropie")

_INSTALL_HINT = "Serving needs hypercorn: pip install 'micropie-anyio[serve]'"

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

    On asyncio it also remembers the task of every app call still running, so that
    ``cancel_app_calls()`` can enforce ``graceful_timeout``: hypercorn's asyncio worker awaits
    ``asyncio.Server.wait_closed()`` before its own ``graceful_timeout`` cancellation, and since
    Python 3.12.1 that waits for every connection to end (hypercorn issue 308), so a request
    that never ends would keep the server up for ever. Cancelling the app's call lets hypercorn
    finish that connection (a 500 if nothing was sent, or the end of the response) and stop.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.ready = anyio.Event()
        #: The message of a ``lifespan.shutdown.failed``: hypercorn's asyncio worker raises for
        #: it and its trio worker does not, so ``serve`` raises it itself, alike on both.
        self.shutdown_failure: str | None = None
        self._app_calls: weakref.WeakSet[Any] | None = None  # of asyncio tasks
        if _current_backend() == "asyncio":
            self._app_calls = weakref.WeakSet()
            self._current_task = native_current_task("asyncio")

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """The app's own call for a connection: no frame of ours in every request's stack
        (hypercorn is told the app is ASGI, so it need not be a coroutine function)."""
        if scope["type"] != "lifespan":
            if self._app_calls is not None:
                # Called synchronously by hypercorn's per-request task: that task is the call.
                task = self._current_task()
                if task is not None:
                    self._app_calls.add(task)
            return self.app(scope, receive, send)
        return self._lifespan(scope, receive, send)

    def cancel_app_calls(self) -> int:
        """Cancel every app call still running (asyncio only); return how many."""
        running = [task for task in self._app_calls or () if not task.done()]
        for task in running:
            task.cancel()
        return len(running)

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


class BindError(OSError):
    """The server cannot listen on its address (in use, not permitted, not an address here).

    An ``OSError`` with the original ``errno``, whose message names the address:
    ``Cannot listen on 127.0.0.1:8000: Address already in use``.
    """

    def __str__(self) -> str:
        return str(self.strerror)


def create_sockets(config: Config) -> Sockets:
    """``config.create_sockets()``, raising ``BindError`` (which names the address) for an
    address that cannot be bound."""
    try:
        return config.create_sockets()
    except OSError as error:
        _close_sockets_left_open(error)
        addresses = ", ".join(config.bind)
        reason = error.strerror or str(error)
        raise BindError(error.errno, f"Cannot listen on {addresses}: {reason}") from error


def _close_sockets_left_open(error: BaseException) -> None:
    """Close the sockets ``Config.create_sockets`` made before ``error``: hypercorn leaves them
    open (the one that failed to bind, and those bound before it), so they would leak until
    garbage collection (a ``ResourceWarning``) in a process that carries on."""
    for frame, _ in traceback.walk_tb(error.__traceback__):
        for value in frame.f_locals.values():
            candidates = value if isinstance(value, list) else [value]
            for candidate in candidates:
                if isinstance(candidate, socket.socket):
                    candidate.close()


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

        fix_hypercorn_trio_send_eof()
        return trio_worker_serve
    from hypercorn.asyncio.run import worker_serve as asyncio_worker_serve

    return asyncio_worker_serve


#: How long after micropie cancels the app calls still running at ``graceful_timeout`` hypercorn's
#: asyncio worker may cancel the connections still open: a backstop for a client that does not
#: close its end, given time to spare for one that does.
CONNECTION_CANCEL_DELAY = 1.0


def worker_config(config: Config) -> Config:
    """The ``Config`` hypercorn's worker loop for the running event loop gets.

    On asyncio, a copy whose ``graceful_timeout`` ends ``CONNECTION_CANCEL_DELAY`` later: when
    ``graceful_timeout`` runs out, micropie cancels the app calls still running
    (``StartupWatcher.cancel_app_calls``), and each connection then ends the way hypercorn ends
    it after a response (HTTP/2: the stream's end, GOAWAY, close). Below Python 3.12.1 the worker
    would cancel the connections' tasks at that same moment, and the race cuts HTTP/2
    connections mid-stream (no END_STREAM, no GOAWAY) and, on Python 3.11, logs a traceback from
    ``asyncio.streams`` for each. The trio worker cancels app calls and connections together in
    one cancel scope, so its config is left as it is.
    """
    if _current_backend() == "trio":
        return config
    delayed = copy.copy(config)
    delayed.graceful_timeout = config.graceful_timeout + CONNECTION_CANCEL_DELAY
    return delayed


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


# --- hypercorn's trio worker: send_eof() racing send_all() --------------------------------------

#: SHA-256 of the source of ``hypercorn.trio.tcp_server.TCPServer._close`` and ``protocol_send``
#: as the fix below was written for (hypercorn 0.18.0, and earlier releases with the same code).
#: Other code is left alone: it may have fixed the race, or changed what the fix relies on.
_TRIO_TCP_SERVER_SOURCES = {
    "_close": "bc73c4ae25a1ceec1d535639443b57b3d3dea8b03c5375d58bf9702b8056ee15",
    "protocol_send": "225856426bff7be02990c0badb90f51f801db14ac5db0f3d0c210cafbeb528ab",
}


def fix_hypercorn_trio_send_eof() -> bool:
    """Stop hypercorn's trio worker from dying when a client closes as the app closes.

    Hypercorn's trio ``TCPServer`` writes to its ``SocketStream`` from several tasks and
    serialises ``send_all`` with ``send_lock``, but ``_close`` calls ``send_eof()`` without
    it. When the app closes a WebSocket just as the client's close frame arrives, the app's task
    is in ``send_eof()`` (which holds trio's "one sender at a time" guard across a checkpoint)
    while the reading task answers the close frame with ``send_all()``, which raises
    ``trio.BusyResourceError``. Nothing catches it, and it ends the whole server process.

    The replacement ``_close`` sends the EOF under ``send_lock``: when the lock is free it takes
    it, so a concurrent ``send_all`` waits and then finds the stream closed (which hypercorn
    handles); when this task already holds it (``_close`` called from within ``protocol_send``)
    nobody else can be sending; when another task holds it, that task is sending, so the EOF is
    skipped and the stream just closed, which is what hypercorn already does when ``send_eof()``
    finds another sender. Either way the stream is closed as before.

    Applied only to the code it was written for (see ``_TRIO_TCP_SERVER_SOURCES``); idempotent.
    Returns whether the fix is in place. Imports hypercorn's trio worker: call it where that
    worker serves (``serve()`` and a micropie ``App`` do it themselves; for another ASGI app
    under ``hypercorn --worker-class trio``, call it in the app's module).
    """
    from hypercorn.trio.tcp_server import TCPServer

    if getattr(TCPServer._close, "_micropie_fix", False):
        return True
    for name, expected in _TRIO_TCP_SERVER_SOURCES.items():
        try:
            source = inspect.getsource(getattr(TCPServer, name))
        except (AttributeError, OSError, TypeError):
            source = ""
        if hashlib.sha256(source.encode()).hexdigest() != expected:
            logger.debug(
                "hypercorn's trio TCPServer.%s is not the code the send_eof fix was written "
                "for; leaving it alone",
                name,
            )
            return False
    setattr(TCPServer, "_close", _close_under_send_lock(TCPServer._close))  # noqa: B010
    return True


def _close_under_send_lock(
    close: Callable[[Any], Awaitable[None]],
) -> Callable[[Any], Awaitable[None]]:
    """Hypercorn's trio ``TCPServer._close``, taking ``send_lock`` for its ``send_eof()``."""
    current_task = native_current_task("trio")

    async def _close(server: Any) -> None:
        lock = server.send_lock  # a trio.Lock
        owner = lock.statistics().owner
        if owner is current_task():
            await close(server)  # inside protocol_send: no other task can be sending
        elif owner is not None:
            await server.stream.aclose()  # another task is sending: no EOF, as hypercorn does
        else:
            lock.acquire_nowait()
            try:
                await close(server)
            finally:
                lock.release()

    _close.__doc__ = close.__doc__
    _close._micropie_fix = True  # type: ignore[attr-defined]
    return _close


def fix_loaded_hypercorn() -> None:
    """Apply the fixes above to the hypercorn worker this process runs, if it runs one.

    Called by a micropie ``App`` at lifespan startup, which is how an ``App`` served by plain
    ``hypercorn --worker-class trio`` gets the fix. Imports nothing that is not loaded yet.
    """
    if "hypercorn.trio.tcp_server" in sys.modules and _current_backend() == "trio":
        fix_hypercorn_trio_send_eof()
