"""Serve any ASGI app on hypercorn, from inside a trio or asyncio program or from a script.

Theory of operation
-------------------
``serve()`` runs hypercorn's worker for the event loop it finds itself on (trio or asyncio)
inside the caller's own task group, and keeps three promises:

1. **The address is known before anyone connects.** We create and bind the listening sockets
   ourselves (through hypercorn's ``Config.create_sockets``, so every bind rule is hypercorn's)
   and put them in listening state at once. Port 0 therefore works on both workers, even though
   ``hypercorn.asyncio.serve`` has no ``task_status``. A client that connects while the app is
   still starting up waits in the kernel's backlog instead of being refused.

2. **``started()`` means "ready".** ``task_status.started((host, port))`` is called once the
   app has acknowledged ``lifespan.startup`` (or has declined the lifespan protocol, which
   hypercorn tolerates). A thin wrapper around the app watches the lifespan messages to learn
   this; every other scope goes straight through. A failed startup never calls ``started()``:
   the error propagates to whoever called ``task_group.start(serve, ...)``.

3. **Cancelling the caller's scope stops the server gracefully, on both backends.** Cancelling
   ``hypercorn.asyncio`` from outside corrupts its shutdown (``InvalidStateError``), and
   cancelling the trio worker skips the app's lifespan shutdown. So hypercorn always runs in a
   shielded child task and is only ever stopped through its ``shutdown_trigger``: the serving
   task turns its own cancellation (or the caller's ``shutdown_trigger`` returning) into that
   trigger, then waits for hypercorn. The shield is bounded by hypercorn's own timeouts: open
   connections get ``graceful_timeout`` (default 3 s) to finish and are then cancelled (idle
   keep-alive connections are closed at once), then lifespan shutdown gets
   ``shutdown_timeout``. A cancellation that arrives during startup takes effect once startup
   is over (bounded by ``startup_timeout``).

Apps that "decline" lifespan by returning at once from the lifespan call crash hypercorn's trio
worker; ``StartupWatcher`` turns that return into an exception, which both workers read as
"no lifespan support" (see ``micropie.serving.hypercorn_glue``).

Hypercorn is an optional dependency (``pip install 'micropie-anyio[serve]'``) and is imported
lazily; ``micropie.serving.hypercorn_glue`` adapts its API (config, bound address, app wrapper,
worker loop).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import anyio
from anyio.abc import TaskStatus

from micropie.core.concurrency import sole_exception
from micropie.core.types import ASGIApp
from micropie.serving.hypercorn_glue import (
    BindError,
    StartupWatcher,
    bound_address,
    config_class,
    create_sockets,
    fix_hypercorn_trio_send_eof,
    make_config,
    worker_config,
    worker_serve_for_current_backend,
    wrap,
)

if TYPE_CHECKING:
    from hypercorn.config import Config, Sockets
    from hypercorn.typing import AppWrapper

__all__ = ["BindError", "fix_hypercorn_trio_send_eof", "run", "serve", "serve_on_sockets"]

#: Exit status of ``run()`` when the address cannot be bound (as ``python -m micropie``).
EXIT_CANNOT_BIND = 1

logger = logging.getLogger("micropie")

ShutdownTrigger = Callable[[], Awaitable[object]]


async def serve(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    task_status: TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
    shutdown_trigger: ShutdownTrigger | None = None,
    **config_options: Any,
) -> None:
    """Serve ``app`` on hypercorn until cancelled or until ``shutdown_trigger`` returns.

    Runs on whichever event loop is current (trio or asyncio) and is meant to live in the
    caller's task group::

        host, port = await task_group.start(partial(serve, app, port=0))

    ``task_status.started((host, port))`` reports the bound address (port 0 picks a free port)
    once the app's lifespan startup is complete. ``config_options`` are hypercorn ``Config``
    attributes (``graceful_timeout=1``, ``keep_alive_timeout=...``, ``certfile``/``keyfile``...).

    Returns after a graceful shutdown caused by ``shutdown_trigger``; re-raises the caller's
    cancellation after a graceful shutdown caused by it (see the module docstring for bounds).
    Raises ``ImportError`` without hypercorn, ``TypeError`` for an unknown option, ``BindError``
    (an ``OSError`` whose message names the address) when the address cannot be bound, and
    hypercorn's ``LifespanFailureError`` when the app fails its startup (``started()`` is then
    never called). Installs no signal handlers: that is the caller's business (``run()`` does
    it for scripts).
    """
    config = make_config(host, port, config_options)
    await serve_on_sockets(
        app,
        config,
        create_sockets(config),
        task_status=task_status,
        shutdown_trigger=shutdown_trigger,
    )


async def serve_on_sockets(
    app: ASGIApp,
    config: Config,
    sockets: Sockets,
    *,
    task_status: TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
    shutdown_trigger: ShutdownTrigger | None = None,
) -> None:
    """``serve()`` on sockets bound already, with a complete hypercorn ``Config``.

    For the worker processes of ``supervisor``, which share the supervisor's sockets.
    Closes the sockets when it returns.
    """
    try:
        for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
            sock.listen(config.backlog)
        address = bound_address(sockets)
        watcher = StartupWatcher(app)
        await _serve_until_stopped(
            wrap(watcher, config), config, sockets, address, watcher, task_status, shutdown_trigger
        )
    finally:
        # The asyncio worker closes its sockets itself, the trio worker never does; closing a
        # closed socket is a no-op, so close them all here.
        for sock in [*sockets.secure_sockets, *sockets.insecure_sockets, *sockets.quic_sockets]:
            sock.close()


def run(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: Literal["asyncio", "trio"] = "asyncio",
    **config_options: Any,
) -> None:
    """Serve ``app`` in this process until SIGINT or SIGTERM; blocks. For scripts.

    Starts an event loop with ``anyio.run`` on ``backend`` and shuts down gracefully on the
    first SIGINT or SIGTERM (open requests get ``graceful_timeout``, then lifespan shutdown
    runs). Runs on asyncio unless ``backend="trio"``, as hypercorn and uvicorn do.

    An address that cannot be bound (a port in use) logs one line naming it and exits the
    script with status 1 (``SystemExit``), like ``python -m micropie``. Otherwise raises what
    ``serve()`` raises, e.g. ``LifespanFailureError`` for a failed startup.
    """
    config_class()  # without hypercorn, fail before starting an event loop
    try:
        anyio.run(
            partial(_serve_until_signalled, app, host=host, port=port, **config_options),
            backend=backend,
        )
    except BindError as error:
        logger.error("%s", error)  # noqa: TRY400 - one line names the address: no traceback
        raise SystemExit(EXIT_CANNOT_BIND) from None


async def _serve_until_signalled(app: ASGIApp, **options: Any) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def first_signal() -> None:
            async for signum in signals:
                logger.info("Received %s, shutting down", signal.Signals(signum).name)
                return

        await serve(app, shutdown_trigger=first_signal, **options)


async def _serve_until_stopped(
    hypercorn_app: AppWrapper,
    config: Config,
    sockets: Sockets,
    address: tuple[str, int],
    watcher: StartupWatcher,
    task_status: TaskStatus[tuple[str, int]],
    shutdown_trigger: ShutdownTrigger | None,
) -> None:
    """Run hypercorn shielded in a child task; stop it through its trigger, never by cancelling.

    This task reports ``started()`` itself (anyio and trio expect the started task to do so)
    and turns its own cancellation into ``stop``; hypercorn's child task then shuts down
    gracefully and the task group waits for it. ``graceful_timeout`` after ``stop``, the app
    calls still running are cancelled (asyncio: see ``StartupWatcher``; hypercorn's trio worker
    does it itself), so the shutdown ends on time on every Python.
    """
    worker_serve = worker_serve_for_current_backend()
    stop = anyio.Event()
    done = anyio.Event()
    failure: Exception | None = None

    async def enforce_graceful_timeout() -> None:
        await stop.wait()
        await anyio.sleep(config.graceful_timeout)
        cancelled = watcher.cancel_app_calls()
        if cancelled:
            logger.info("Cancelled %d requests still running after graceful_timeout", cancelled)

    async def run_hypercorn() -> None:
        nonlocal failure
        try:
            with anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as deadline:
                    deadline.start_soon(enforce_graceful_timeout)
                    await worker_serve(
                        hypercorn_app,
                        worker_config(config),
                        sockets=sockets,
                        shutdown_trigger=stop.wait,
                    )
                    deadline.cancel_scope.cancel()
        except Exception as exc:
            # Raised below, outside our task group, so that callers see the error itself: not
            # wrapped by our task group, nor by the trio worker's nurseries.
            failure = _unwrap(exc)
        finally:
            done.set()
            watcher.ready.set()  # wake the waiter below even when startup never completed

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(run_hypercorn)
        begin_stop = _stopper(watcher.app, stop)
        if shutdown_trigger is not None:
            task_group.start_soon(_set_when_returned, shutdown_trigger, begin_stop)
        try:
            await watcher.ready.wait()
            if not done.is_set():
                task_status.started(address)
            await done.wait()
        finally:
            begin_stop()
            task_group.cancel_scope.cancel()  # the trigger; hypercorn's task is shielded
    if failure is not None:
        raise failure
    if watcher.shutdown_failure is not None:
        from hypercorn.utils import LifespanFailureError

        raise LifespanFailureError("shutdown", watcher.shutdown_failure)


def _unwrap(error: Exception) -> Exception:
    if isinstance(error, ExceptionGroup):
        sole = sole_exception(error)
        if isinstance(sole, Exception):
            return sole
    return error


async def _set_when_returned(trigger: ShutdownTrigger, stop: Callable[[], None]) -> None:
    try:
        await trigger()
    finally:
        stop()


def _stopper(app: ASGIApp, stop: anyio.Event) -> Callable[[], None]:
    """Begin a graceful shutdown: tell the app first (a micropie ``App`` then closes its
    WebSockets with 1001 and ends its streams), then let hypercorn stop accepting and wait."""

    def begin() -> None:
        if stop.is_set():
            return
        try:
            begin_shutdown = getattr(app, "begin_shutdown", None)
            if callable(begin_shutdown):
                begin_shutdown()
        except Exception:
            logger.exception("The app failed to begin its shutdown")
        finally:
            stop.set()  # whatever the app did, hypercorn must stop

    return begin
