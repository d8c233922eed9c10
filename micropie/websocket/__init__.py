"""The ``WebSocket`` a ``ws_`` handler receives, and the lifetime of its connection.

Theory of operation
-------------------
``dispatch.WebSocketConnection`` does the handshake, routing and sessions; then it calls the
handler inside the block ``_lifetime.enter_lifetime``/``exit_lifetime`` open and close: the
handler's own cancel scope, and nothing else per connection.

* The handler reads ``receive()`` itself while it waits in ``receive_*()``: no task hop per
  message, which is what an echo or chat handler does all day. The app's sweeper sweeps every
  connection each round; a handler that has read nothing since the last round and is not
  waiting in ``receive()`` now (a push-only loop, a long computation) gets a *pump* task that
  reads for it from then on, into a small bounded memory stream (``INBOX_SIZE``): a handler
  that does not read stops the pump, the server's own queue fills, and the server stops reading
  the socket (backpressure). Without a sweeper (no lifespan) the pump starts at once. A message
  over the app's ``ws_max_message_size`` is answered with close 1009.
* On ``websocket.disconnect`` every pending and later ``receive_*`` raises ``ConnectionClosed``
  (after the messages that arrived before it), every send raises it at once, and
  ``HANDLER_GRACE_AFTER_CLOSE`` seconds later the handler is cancelled if it is still running
  (it was blocked elsewhere: a push loop, a sleep, a queue): a deadline on its scope, not a
  task. A handler that closed the connection itself is trusted to finish on its own (until
  shutdown).
* Once the connection is closed, by anyone, nothing calls ``receive()`` again, and a message
  type the server must not send ends the connection (1011): a ``receive()`` that answers at
  once (a test double, a buggy server) can never make a loop of ours spin.
* The connection's tasks (``ws.start_soon``, the pump, the 1001 at shutdown) run in the app's
  task group (the sweeper's), each in a cancel scope the connection holds
  (``lifetimes.connection_tasks``): when the handler ends they are cancelled and awaited, so
  none outlives the connection, and a connection that starts none pays for no task group.
  Without lifespan the connection opens a task group of its own for them.
* Graceful shutdown (``App.begin_shutdown``, called by ``app.serve()`` and the CLI) closes
  every open connection with 1001 at once (its sends and receives raise ``ConnectionClosed``)
  and cancels its handler ``HANDLER_GRACE_AFTER_CLOSE`` later; a cancellation from outside
  (plain hypercorn, when its graceful timeout ends) closes it with 1001 from a shielded,
  time-bounded scope, then propagates.

Limits of what a framework can do on hypercorn: the app is told 1006 for every client close;
on the trio worker a ``send()`` to a client that stopped reading sits in a shielded scope and
cannot be cancelled; protocol violations drop the TCP connection without a close frame.

The package: ``_socket`` holds ``WebSocket``, the connection's state machine: what a handler
calls (the per-message path included) and every transition of the framework's side (the pump,
the closes, the handler's scope and tasks), with the states and transitions listed at its top.
``_lifetime`` is the block a handler runs in, ``dispatch`` serves a connection (handshake,
routing, sessions, middleware) and is what the app's sweeper sweeps; ``_messages`` holds the
per-message helpers, ``_errors`` the exceptions and close codes.
"""

from micropie.websocket._errors import (
    INTERNAL_ERROR,
    ConnectionClosed,
    ConnectionNotOpen,
    Refused,
    close_message,
    only_connection_closed,
)
from micropie.websocket._socket import (
    DEFAULT_MAX_MESSAGE_SIZE,
    HANDLER_GRACE_AFTER_CLOSE,
    INBOX_SIZE,
    WebSocket,
)
from micropie.websocket._socket import SENDS_BETWEEN_CHECKPOINTS as SENDS_BETWEEN_CHECKPOINTS
from micropie.websocket._socket import SHUTDOWN_CLOSE_TIMEOUT as SHUTDOWN_CLOSE_TIMEOUT

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "HANDLER_GRACE_AFTER_CLOSE",
    "INBOX_SIZE",
    "INTERNAL_ERROR",
    "ConnectionClosed",
    "ConnectionNotOpen",
    "Refused",
    "WebSocket",
    "close_message",
    "only_connection_closed",
]
