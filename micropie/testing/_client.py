"""``TestClient``: the httpx client a test holds, owning the task group every app call runs in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any, Self

import httpx

from micropie.core.types import ASGIApp
from micropie.testing._app_call import _open_task_group
from micropie.testing._http import _ASGITransport
from micropie.testing._lifespan import _Lifespan
from micropie.testing._scopes import _websocket_request, _websocket_scope
from micropie.testing._websocket import WebSocketSession


class TestClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` that talks to an ASGI app in-process, on asyncio or trio.

    ``async with TestClient(app) as client`` runs lifespan startup on entry and shutdown on exit
    and lets responses stream (``client.stream(...)``); without ``async with`` each request runs
    the app to completion and buffers the body. Cookies persist across requests, as with any
    httpx client. The default ``base_url`` is ``https://testserver``: micropie's session cookie is
    ``Secure`` by default, and a client only sends a ``Secure`` cookie back over https, so a
    login test written the obvious way keeps its session (pass ``base_url="http://testserver"``
    to test what a plain-http client sees).

    - ``lifespan``: send lifespan events (only inside ``async with``).
    - ``raise_app_exceptions``: re-raise an exception that escapes the app in the test (it is a
      framework bug); when False the client answers 500 instead, or raises
      ``httpx.RemoteProtocolError`` if the response had already started.
    - ``client``, ``root_path``: the scope's ``client`` and ``root_path``.
    - ``disconnect_timeout``: how long an app call may keep running after its client left (or
      after ``lifespan.shutdown``) before it is cancelled and ``AppOutlivedClientError`` raised.

    Other keyword arguments go to ``httpx.AsyncClient`` (headers, cookies, follow_redirects...).
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        app: ASGIApp,
        *,
        base_url: str = "https://testserver",
        lifespan: bool = True,
        raise_app_exceptions: bool = True,
        client: tuple[str, int] = ("127.0.0.1", 50000),
        root_path: str = "",
        disconnect_timeout: float = 5.0,
        **httpx_kwargs: Any,
    ) -> None:
        self.app = app
        self.app_state: dict[str, Any] = {}
        self._asgi_transport = _ASGITransport(
            app,
            raise_app_exceptions=raise_app_exceptions,
            client=client,
            root_path=root_path,
            disconnect_timeout=disconnect_timeout,
            state=self.app_state,
        )
        self._use_lifespan = lifespan
        self._lifespan: _Lifespan | None = None  # one per ``async with``, with its streams
        self._exit_stack: AsyncExitStack | None = None
        super().__init__(base_url=base_url, transport=self._asgi_transport, **httpx_kwargs)

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        async with AsyncExitStack() as stack:
            stack.push_async_callback(super().__aexit__)
            if self._use_lifespan:
                self._lifespan = _Lifespan(
                    self.app, self.app_state, self._asgi_transport.disconnect_timeout
                )
                stack.callback(self._lifespan.close)
            task_group = await stack.enter_async_context(_open_task_group())
            self._asgi_transport.task_group = task_group
            stack.callback(setattr, self._asgi_transport, "task_group", None)
            if self._lifespan is not None:
                await self._lifespan.startup(task_group)
            self._exit_stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        stack, self._exit_stack = self._exit_stack, None
        task_group = self._asgi_transport.task_group
        if stack is None or task_group is None:
            raise RuntimeError("TestClient.__aexit__ without a matching __aenter__")
        async with stack:
            if exc_value is not None and not isinstance(exc_value, Exception):
                # Cancelled, KeyboardInterrupt...: no time for a graceful shutdown.
                task_group.cancel_scope.cancel()
                return
            try:
                await self._asgi_transport.close_open_exchanges()
            finally:
                if self._lifespan is not None:
                    await self._lifespan.shutdown()

    # -- WebSocket (see the docstring of ._websocket) -----------------------------------------

    @asynccontextmanager
    async def websocket_connect(
        self,
        path: str,
        subprotocols: list[str] | None = None,
        headers: dict[str, str] | list[tuple[str, str]] | httpx.Headers | None = None,
    ) -> AsyncIterator[WebSocketSession]:
        """Open a WebSocket connection to the app: ``async with client.websocket_connect("/chat")
        as ws``; the block yields once the app accepted.

        The handshake carries the client's headers and cookies, ``headers`` and the offered
        ``subprotocols``; cookies the app sets on accept go to the client's cookie jar (a
        ``Secure`` one, such as micropie's session cookie by default, is only sent back when
        ``base_url`` is ``https://``, the default; the scope's scheme is then ``wss``). Raises
        ``WebSocketRejected`` (with the app's ``code`` and ``reason``) when the app closes before
        accepting. Leaving the block closes the connection with 1000 and waits for the app call
        to return (see ``WebSocketSession.close``). Needs ``async with TestClient(app)``: the app
        call runs in the client's task group.
        """
        transport = self._asgi_transport
        if transport.task_group is None:
            raise RuntimeError(
                "websocket_connect() needs `async with TestClient(app) as client:`, whose task"
                " group runs the app call"
            )
        request = _websocket_request(self, path, subprotocols, headers)
        session = WebSocketSession(
            _websocket_scope(
                request,
                list(subprotocols or []),
                client=transport.client,
                root_path=transport.root_path,
                state=transport.state,
            ),
            transport,
            f"The app call for WebSocket {request.url.raw_path.decode()}",
        )
        transport.task_group.start_soon(session.call.run)
        try:
            await session.handshake()
            response = httpx.Response(101, headers=session.accept_headers, request=request)
            self.cookies.extract_cookies(response)
            yield session
        finally:
            await session.close()
