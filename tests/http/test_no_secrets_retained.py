"""Nothing that varies per request outlives its response in a framework cache.

A session cookie or a header value echoed from the request may be a secret. After the response
is sent and the app is gone, no dict, list or tuple anywhere in the process (``gc``) may still
hold it: a cache of encoded headers once kept the first 256 such values for the life of the
process.
"""

from __future__ import annotations

import gc
import uuid
from typing import Any

import anyio
import pytest

from micropie import App
from tests.support.drive import Client, http_scope

pytestmark = pytest.mark.anyio


class Echoes(App):
    async def login(self) -> str:
        self.request.session["user"] = "alice"
        return "welcome"

    async def echo(self, token: str) -> tuple[int, str, list[tuple[str, str]]]:
        return 200, "ok", [("X-Token", token), ("Location", f"/next?token={token}")]


def holders_of(secret: str) -> list[Any]:
    """Every dict, list or tuple that holds ``secret`` inside a str or bytes.

    ``gc.get_objects()`` lists only tracked containers, and CPython stops tracking a dict or
    tuple that holds only strings: those are found as the referents of tracked objects (a
    module's globals, for a module-level cache).
    """
    needle_text, needle_bytes = secret, secret.encode()

    def holds(item: Any) -> bool:
        if isinstance(item, str):
            return needle_text in item
        if isinstance(item, bytes):
            return needle_bytes in item
        if isinstance(item, tuple):
            return any(holds(part) for part in item if isinstance(part, str | bytes))
        return False

    tracked = gc.get_objects()
    untracked = [
        referent
        for container in tracked
        for referent in gc.get_referents(container)
        if isinstance(referent, dict | list | tuple) and not gc.is_tracked(referent)
    ]
    found = []
    for container in [*tracked, *untracked]:
        if isinstance(container, dict):
            items = [*container.keys(), *container.values()]
        elif isinstance(container, list | tuple):
            items = list(container)
        else:
            continue
        if any(holds(item) for item in items):
            found.append(container)
    return found


async def answer(app: App, scope: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    client = Client()
    with anyio.fail_after(5):
        await app(scope, client.receive, client.send)
    return list(client.sent[0]["headers"])


async def test_a_session_id_is_not_kept_after_its_response() -> None:
    app: App | None = Echoes()
    assert app is not None
    headers = await answer(app, http_scope("/login"))
    cookie = next(value for name, value in headers if name == b"Set-Cookie")
    session_id = cookie.split(b";")[0].split(b"=")[1].decode()
    assert len(session_id) == 36
    del headers, cookie, app  # the app's session store legitimately holds it until then
    gc.collect()
    assert holders_of(session_id) == []


async def test_a_header_value_from_the_request_is_not_kept_after_its_response() -> None:
    app = Echoes()
    first_token = ""
    for _ in range(300):  # more than any bounded cache would turn away
        token = uuid.uuid4().hex
        first_token = first_token or token
        scope = {**http_scope("/echo"), "query_string": f"token={token}".encode()}
        headers = await answer(app, scope)
        assert (b"X-Token", token.encode()) in headers
    del headers, scope
    gc.collect()
    assert holders_of(first_token) == []
