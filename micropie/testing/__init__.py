"""An in-process test client for ASGI apps, on asyncio and trio.

``TestClient`` is an ``httpx.AsyncClient`` whose transport calls an ASGI app directly: no socket,
no server, no thread. It runs on whichever backend the test runs on, because everything it does
goes through anyio.

Theory of operation
-------------------
*Who owns the tasks.* Used as ``async with TestClient(app) as client``, the client opens an anyio
task group in ``__aenter__`` and closes it in ``__aexit__``. The lifespan call and every request's
app call run as tasks in that group, so nothing the app does can outlive the ``async with`` block.
An app call never raises into the group: its exception is stored and re-raised in the test, in the
task that made the request, as itself (never wrapped in an ``ExceptionGroup``).

*Streaming and backpressure.* A request returns as soon as the app sends ``http.response.start``.
The body then flows through a bounded anyio memory stream of ``RESPONSE_BUFFER_CHUNKS`` chunks:
when the test reads slowly, the app's ``await send(...)`` blocks, as it would behind a socket whose
peer stops reading. ``client.get(...)`` reads the whole body, ``client.stream(...)`` lets the test
read chunk by chunk while the app is still running.

*What a disconnect means.* ``receive()`` hands the app the request body (``http.request`` messages
in the chunks httpx produced, ``more_body`` true until the last) and then blocks. It returns
``{"type": "http.disconnect"}`` once the response is complete or the client left: the test closed
the response before its end (left ``client.stream(...)`` early) or the request was cancelled.
After the client left, ``send()`` drops every message, like a server does; it raises nothing,
because this client speaks ASGI spec 2.3. Closing a response then waits for the app call to
return, at most ``disconnect_timeout`` seconds. An app still running after that has outlived its
client, which is a bug in the app under test: it is cancelled and ``AppOutlivedClientError`` is
raised. ``client.get(...)`` therefore returns only after the app call has returned, so work the
app does after its last body chunk has happened (and its exceptions surface) by then.

*WebSockets.* ``client.websocket_connect(path)`` runs a ``websocket`` app call the same way, in
the client's task group (so only inside ``async with``), and yields a ``WebSocketSession``;
the docstring of ``micropie.testing._websocket`` explains the handshake, the buffering and the
two ways to close.

*Without ``async with``.* ``client = TestClient(app)`` works too, with no lifespan: each request
opens its own task group, runs the app to completion and buffers the whole body before the
response is handed back. An endless stream (server-sent events) then never returns; stream those
inside ``async with``.

Layout
------
``_client`` holds ``TestClient``; ``_http`` the HTTP transport and the exchange behind one request,
``_responses`` the response and body streams it hands to httpx; ``_websocket`` the WebSocket
session; ``_lifespan`` the lifespan protocol; ``_app_call`` the app call as a task and its task
group; ``_scopes`` the scope the app sees; ``_errors`` the exceptions a test can get.
"""

from __future__ import annotations

from micropie.testing._client import TestClient
from micropie.testing._errors import (
    AppOutlivedClientError,
    ASGIProtocolError,
    LifespanError,
    WebSocketClosed,
    WebSocketRejected,
)
from micropie.testing._http import RESPONSE_BUFFER_CHUNKS as RESPONSE_BUFFER_CHUNKS
from micropie.testing._websocket import WEBSOCKET_BUFFER_MESSAGES as WEBSOCKET_BUFFER_MESSAGES
from micropie.testing._websocket import WebSocketSession

__all__ = [
    "ASGIProtocolError",
    "AppOutlivedClientError",
    "LifespanError",
    "TestClient",
    "WebSocketClosed",
    "WebSocketRejected",
    "WebSocketSession",
]

# The public classes say they live here, where they are imported from (as httpx's do): reprs and
# tracebacks name ``micropie.testing.TestClient``, as before the module became a package.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
