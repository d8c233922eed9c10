"""The ``WebSocket`` a ``ws_`` handler receives, and the lifetime of its connection.

Theory of operation
-------------------
``websocket_dispatch.WebSocketConnection`` does the handshake, routing and sessions; then it
calls the handler inside the block ``_lifetime.enter_lifetime``/``exit_lifetime`` open and
close: the handler's own cancel scope, and nothing else per connection.

* The handler reads ``receive()`` itself while it waits in ``receive_*()``: no task hop per
  message, which is what an echo or chat handler does all day. The app's disconnect sweeper
  checks every connection each interval; a handler that has read nothing since the last sweep
  and is not waiting in ``receive()`` now (a push-only loop, a long computation) gets a *pump*
  task that reads for it from then on, into a small bounded memory stream (``INBOX_SIZE``): a
  handler that does not read stops the pump, the server's own queue fills, and the server stops
  reading the socket (backpressure). Without a sweeper (no lifespan) the pump starts at once.
  A message over the app's ``ws_max_message_size`` is answered with close 1009.
* On ``websocket.disconnect`` every pending and later ``receive_*`` raises ``ConnectionClosed``
  (after the messages that arrived before it), every send raises it at once, and
  ``DISCONNECT_GRACE`` seconds later the handler is cancelled if it is still running (it was
  blocked elsewhere: a push loop, a sleep, a queue): a deadline on its scope, not a task. A
  handler that closed the connection itself is trusted to finish on its own (until shutdown).
* Once the connection is closed, by anyone, nothing calls ``receive()`` again, and a message
  type the server must not send ends the connection (1011): a ``receive()`` that answers at
  once (a test double, a buggy server) can never make a loop of ours spin.
* The connection's tasks (``ws.start_soon``, the pump, the 1001 at shutdown) run in the app's
  task group (the sweeper's), each in a cancel scope the connection holds
  (``connection_tasks.ConnectionTasks``): when the handler ends they are cancelled and awaited,
  so none outlives the connection, and a connection that starts none pays for no task group.
  Without lifespan the connection opens a task group of its own for them.
* Graceful shutdown (``App.begin_shutdown``, called by ``app.serve()`` and the CLI) closes
  every open connection with 1001 at once (its sends and receives raise ``ConnectionClosed``)
  and cancels its handler ``DISCONNECT_GRACE`` later;
  a cancellation from outside (plain hypercorn, when its graceful timeout ends) closes it with
  1001 from a shielded, time-bounded scope, then propagates.

Per message the cost is what an echo benchmark against a raw ASGI app measures
(``benchmarks/websocket.py``): so ``receive_*``/``send_*`` hand back the one coroutine that does
the work instead of awaiting it (each frame between the app and the server is paid at every
suspension, and kept alive by every open connection), and sends take a flag, not a lock.

Limits of what a framework can do on hypercorn: the app is told 1006 for every client close;
on the trio worker a ``send()`` to a client that stopped reading sits in a shielded scope and
cannot be cancelled; protocol violations drop the TCP connection without a close frame.

The package: ``_socket`` holds ``WebSocket``, what a handler calls (the per-message path
included); the framework's side of a connection is module-level functions taking it: ``_pump``
reads for a handler that does not (the sweeper's check, the pump, disconnects and messages over
the limit), ``_lifetime`` is the block a handler runs in and how the connection ends (closed
after the handler, 1001 at shutdown). ``_state`` holds what both sides use (the connection's
state, its send turn, its tasks), ``_messages`` the per-message helpers, ``_errors`` the
exceptions and close codes.
"""

from micropie.websocket._errors import (
    INTERNAL_ERROR,
    ConnectionClosed,
    ConnectionNotOpen,
    Refused,
    close_message,
    only_connection_closed,
)
from micropie.websocket._lifetime import SHUTDOWN_CLOSE_TIMEOUT as SHUTDOWN_CLOSE_TIMEOUT
from micropie.websocket._pump import DISCONNECT_GRACE, INBOX_SIZE
from micropie.websocket._socket import DEFAULT_MAX_MESSAGE_SIZE, WebSocket
from micropie.websocket._socket import SENDS_BETWEEN_CHECKPOINTS as SENDS_BETWEEN_CHECKPOINTS

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DISCONNECT_GRACE",
    "INBOX_SIZE",
    "INTERNAL_ERROR",
    "ConnectionClosed",
    "ConnectionNotOpen",
    "Refused",
    "WebSocket",
    "close_message",
    "only_connection_closed",
]
