"""Nothing that varies per request outlives its response in a framework cache.

A session cookie or a header value echoed from the request may be a secret. After the response
is sent and the app is gone, no dict, list or tuple anywhere in the process (``gc``) may still
hold it: a cache of encoded headers once kept the first 256 such values for the life of the
process.
"""

from __future__ import annotations

import gc
import sys
import uuid
from types import CoroutineType, FrameType, GeneratorType, ModuleType
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


#: What ``holders_of`` does not enter: other modules, and running code.
_NOT_SEARCHED = (ModuleType, FrameType, CoroutineType, GeneratorType)
#: Most objects the search below visits; far more than micropie's own state holds.
SEARCH_LIMIT = 1_000_000


def holders_of(secret: str) -> list[Any]:
    """Every container reachable from micropie's modules that holds ``secret`` in a str or bytes.

    A cache that outlives its response is reachable from a module (its globals, a class, a
    function's closure or ``lru_cache``): so the search walks ``gc.get_referents`` from every
    ``micropie`` module, without entering other modules (the stdlib's and the test runner's,
    coverage's data included, which are large and not ours), nor running code (frames and
    coroutines: the test's own locals hold the secret, and no cache lives there). Unlike a scan
    of ``gc.get_objects()``, this also finds dicts and tuples of strings, which CPython does not
    track.
    """
    needle_text, needle_bytes = secret, secret.encode()
    roots = [module for name, module in sys.modules.items() if name.split(".")[0] == "micropie"]
    seen = {id(module) for module in roots}
    pending: list[Any] = list(roots)
    found = []
    while pending:
        assert len(seen) < SEARCH_LIMIT, "the search left micropie's own state"
        container = pending.pop()
        for item in gc.get_referents(container):
            if isinstance(item, str):
                if needle_text in item:
                    found.append(container)
            elif isinstance(item, bytes):
                if needle_bytes in item:
                    found.append(container)
            elif id(item) not in seen and not isinstance(item, _NOT_SEARCHED):
                seen.add(id(item))
                pending.append(item)
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
