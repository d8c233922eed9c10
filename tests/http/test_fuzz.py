"""Property-based fuzzing of the HTTP path, through the app's ASGI interface, on both backends.

Hypothesis generates a request (method, path, query string, headers, a body of one of the types
we parse or of none, valid or broken), cuts the body into random ``receive()`` chunks and picks
the moment the client disappears, if it does: before a given ``receive()`` or after a given
``send()``. The app has every kind of handler: sync, async, an async-generator stream, a file
upload, JSON in and out, a form, binding of typed parameters, and two that raise (before and
during a stream). Whatever the request, these hold:

* at most one ``http.response.start``, and nothing after the last body message;
* no 500 unless a handler raised;
* a client that stays gets one complete response (unless the handler raised mid-stream);
* the call ends within ``CALL_BOUND`` seconds (no hang);
* no task is left behind once the call has returned.

Each example runs in its own ``anyio.run`` (as in ``test_multipart.py``), so that the task count
before and after is the event loop's alone.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from micropie import App

CALL_BOUND = 10.0
BOUNDARY = "fuzzboundary"
MAX_BODY = 4096


class Raised(Exception):
    """What the raising handlers raise."""


class FuzzApp(App):
    """Every kind of handler; ``raised`` records that a handler raised on purpose."""

    def __init__(self) -> None:
        super().__init__(max_body_size=MAX_BODY, max_multipart_parts=6, max_multipart_files=3)
        self.raised = False

    def index(self) -> str:
        return "sync"

    async def hello(self, name: str = "world", n: int = 0) -> str:
        return f"hello {name} {n}"

    async def stream(self) -> AsyncIterator[bytes]:
        async def chunks() -> AsyncIterator[bytes]:
            for n in range(3):
                await anyio.lowlevel.checkpoint()
                yield b"chunk %d;" % n

        return chunks()

    async def upload(self, file: dict[str, Any] | str) -> dict[str, Any]:
        if isinstance(file, str):  # a part with an empty filename is a plain field
            return {"size": len(file), "filename": None}
        size = 0
        while (chunk := await file["content"].get()) is not None:
            size += len(chunk)
        return {"size": size, "filename": file["filename"]}

    async def data(self) -> dict[str, Any]:
        if "json" in self.request.headers.get("content-type", ""):
            return {"json": self.request.json()}
        return {"form": self.request.body_params}

    async def boom(self) -> str:
        self.raised = True
        raise Raised("before the response")

    async def boom_stream(self) -> AsyncIterator[bytes]:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first"
            self.raised = True
            raise Raised("during the stream")

        return chunks()


PATHS = [
    "/",
    "/index",
    "/hello",
    "/hello/bob",
    "/hello/bob/7",
    "/stream",
    "/upload",
    "/data",
    "/boom",
    "/boom_stream",
    "/nope",
    "/_private",
    "/__class__",
    "/%5Fprivate",
    "//",
]

# --------------------------------------------------------------------------- bodies

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
small_text = st.text(max_size=30)


@st.composite
def multipart_body(draw: st.DrawFn) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 8))):
        name = draw(st.sampled_from(["file", "name", "n", "x", ""]))
        content = draw(st.binary(max_size=600))
        if draw(st.booleans()):
            filename = draw(st.sampled_from(["a.txt", "", "../../etc/passwd", "é.bin"]))
            head = f'content-disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            head += "content-type: application/octet-stream\r\n"
        else:
            head = f'content-disposition: form-data; name="{name}"\r\n'
        out += f"--{BOUNDARY}\r\n{head}\r\n".encode() + content + b"\r\n"
    out += f"--{BOUNDARY}--\r\n".encode()
    if draw(st.booleans()):  # broken: cut short or with garbage in the middle
        cut = draw(st.integers(0, len(out)))
        out = out[:cut] + draw(st.binary(max_size=20))
    return out


BODY_KINDS = ["none", "urlencoded", "json", "multipart", "other"]
#: The body kinds the handler behind a path reads, drawn for that path half the time.
KINDS_READ = {"/upload": ["multipart"], "/data": ["json", "urlencoded", "multipart"]}


@st.composite
def bodies(draw: st.DrawFn, path: str) -> tuple[str | None, bytes]:
    """``(content-type or None, body)`` of every kind we parse, valid or not."""
    kind = draw(st.sampled_from(BODY_KINDS))
    if path in KINDS_READ and draw(st.booleans()):
        kind = draw(st.sampled_from(KINDS_READ[path]))
    if kind == "none":
        return None, b""
    if kind == "urlencoded":
        pairs = draw(st.lists(st.tuples(small_text, small_text), max_size=6))
        body = urlencode(pairs).encode()
        if draw(st.booleans()):
            body = draw(st.binary(max_size=200)) + b"%" * draw(st.integers(0, 50))
        return "application/x-www-form-urlencoded", body
    if kind == "json":
        body = json.dumps(draw(json_values)).encode()
        if draw(st.booleans()):
            body = draw(st.sampled_from([b"[" * 3000, b"{", b"\xef\xbb\xbf{}", b"NaN", b""]))
        return draw(st.sampled_from(["application/json", "application/json; charset=utf-8"])), body
    if kind == "multipart":
        content_type = draw(
            st.sampled_from(
                [
                    f"multipart/form-data; boundary={BOUNDARY}",
                    f'multipart/form-data; boundary="{BOUNDARY}"',
                    "multipart/form-data",
                    "multipart/form-data; boundary=",
                    "multipart/form-data; boundary=other",
                ]
            )
        )
        return content_type, draw(multipart_body())
    return draw(st.text(max_size=40)), draw(st.binary(max_size=300))


# --------------------------------------------------------------------------- requests


@dataclass
class Case:
    scope: dict[str, Any]
    chunks: list[bytes]
    #: The client is gone from this ``receive()`` call on (0-based), if not None.
    leave_at_receive: int | None
    #: The client is gone once this many messages were sent, if not None.
    leave_after_sends: int | None


@st.composite
def cases(draw: st.DrawFn) -> Case:
    random_path = st.text(max_size=20).map(lambda text: "/" + text)
    path = draw(st.sampled_from(PATHS) | st.sampled_from(PATHS) | random_path)
    content_type, body = draw(bodies(path))
    headers: list[tuple[bytes, bytes]] = []
    if content_type is not None:
        headers.append((b"content-type", content_type.encode("utf-8", "replace")))
    length = draw(st.sampled_from(["exact", "none", "short", "long", "junk"]))
    if length != "none":
        value = {
            "exact": str(len(body)),
            "short": str(max(0, len(body) - 1)),
            "long": str(len(body) + 10),
            "junk": draw(st.sampled_from(["-1", "1e3", "abc", " 5", "99999999999999999999"])),
        }[length]
        headers.append((b"content-length", value.encode()))
    extra = st.tuples(
        st.sampled_from([b"cookie", b"x-any", b"accept", b"host", b"transfer-encoding"])
        | st.binary(min_size=1, max_size=10),
        st.binary(max_size=40),
    )
    headers += draw(st.lists(extra, max_size=4))
    method = draw(st.sampled_from(["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "BREW"]))
    query = draw(
        st.lists(st.tuples(st.sampled_from(["name", "n", "x"]), small_text), max_size=3).map(
            lambda pairs: urlencode(pairs).encode()
        )
        | st.binary(max_size=30)
    )
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": draw(st.sampled_from(["1.0", "1.1", "2"])),
        "method": method,
        "scheme": "http",
        "path": path,
        "query_string": query,
        "headers": headers,
    }
    if draw(st.booleans()):
        scope["raw_path"] = path.encode("utf-8", "surrogateescape")
        scope["root_path"] = ""
        scope["client"] = ("127.0.0.1", 5000)
        scope["server"] = ("127.0.0.1", 8000)
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=6)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    leave = draw(st.sampled_from(["stays", "receive", "send"]))
    return Case(
        scope,
        chunks,
        draw(st.integers(0, len(chunks) + 1)) if leave == "receive" else None,
        draw(st.integers(0, 4)) if leave == "send" else None,
    )


# --------------------------------------------------------------------------- the client double


@dataclass
class Client:
    """``receive``/``send`` for one case: the body in chunks, then waiting, or leaving."""

    case: Case
    sent: list[dict[str, Any]] = field(default_factory=list)
    receives: int = 0
    gone: anyio.Event = field(default_factory=anyio.Event)
    complete: anyio.Event = field(default_factory=anyio.Event)

    async def receive(self) -> dict[str, Any]:
        await anyio.lowlevel.checkpoint()
        index = self.receives
        self.receives += 1
        leave_at = self.case.leave_at_receive
        if leave_at is not None and index >= leave_at:
            self.gone.set()
        if self.gone.is_set():
            return {"type": "http.disconnect"}
        chunks = self.case.chunks
        if index < len(chunks):
            more = index < len(chunks) - 1
            return {"type": "http.request", "body": chunks[index], "more_body": more}
        # The body is in: like a server, answer the next receive() when the client leaves or
        # the response is complete (both end the connection for this request).
        async with anyio.create_task_group() as task_group:

            async def wait_for(event: anyio.Event) -> None:
                await event.wait()
                task_group.cancel_scope.cancel()

            task_group.start_soon(wait_for, self.gone)
            task_group.start_soon(wait_for, self.complete)
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        await anyio.lowlevel.checkpoint()
        if self.gone.is_set():
            return  # like hypercorn: sending to a client that left is a no-op
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.complete.set()
        leave_after = self.case.leave_after_sends
        if leave_after is not None and len(self.sent) >= leave_after:
            self.gone.set()


def running_tasks() -> int:
    """Tasks on the current event loop, the calling one included."""
    import sniffio

    if sniffio.current_async_library() == "trio":
        import trio

        count, pending = 0, [trio.lowlevel.current_root_task()]
        while pending:
            task = pending.pop()
            count += 1
            for nursery in task.child_nurseries:
                pending.extend(nursery.child_tasks)
        return count
    import asyncio

    return len(asyncio.all_tasks())


async def serve_one(case: Case) -> tuple[Client, FuzzApp, int, int]:
    app = FuzzApp()
    client = Client(case)
    before = running_tasks()
    with anyio.fail_after(CALL_BOUND):
        await app(case.scope, client.receive, client.send)
    for _ in range(3):  # let tasks that were cancelled on the way out finish unwinding
        await anyio.lowlevel.checkpoint()
    return client, app, before, running_tasks()


def check(case: Case, client: Client, app: FuzzApp, before: int, after: int) -> None:
    starts = [m for m in client.sent if m["type"] == "http.response.start"]
    assert len(starts) <= 1, client.sent
    if starts and starts[0]["status"] >= 500:
        assert app.raised, (starts[0], client.sent)
    finals = [
        i
        for i, m in enumerate(client.sent)
        if m["type"] == "http.response.body" and not m.get("more_body", False)
    ]
    if finals:
        assert finals == [len(client.sent) - 1], client.sent  # nothing after the end
    if not client.gone.is_set() and not app.raised:
        assert len(starts) == 1, client.sent
        assert finals, client.sent
    assert after == before, f"{after - before} task(s) left behind"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases())
def test_any_request_gets_at_most_one_answer_and_leaves_nothing(backend: str, case: Case) -> None:
    client, app, before, after = anyio.run(serve_one, case, backend=backend)
    starts = [m["status"] for m in client.sent if m["type"] == "http.response.start"]
    left = " (client left)" if client.gone.is_set() else ""
    event(f"status {starts[0] if starts else 'none'}{left}")  # --hypothesis-show-statistics
    check(case, client, app, before, after)
