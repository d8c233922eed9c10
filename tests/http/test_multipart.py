"""Streaming multipart uploads: what a handler sees (docs/guides/uploads.md; the differences
from MicroPie 0.32 are docs/migration.md, "Uploads").

Every test drives ``app(scope, receive, send)`` in-process on asyncio and trio. Uploads are
either scripted messages (``asgi.run_app``) or an ``Upload``: a client that produces its body
lazily, counts what the app has read and can stop, wait or leave at a chosen point.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import micropie.http.multipart._form
from micropie import App, HttpMiddleware, InMemorySessionBackend, MultipartFileError
from micropie.http.multipart import (
    ABANDONED_UPLOAD_GRACE,
    CHECKPOINT_EVERY,
    UploadStream,
    parse_boundary,
)
from tests.support.asgi import Message, attach, body, http_scope, run_app
from tests.support.drive import lifespan

BOUNDARY = "test-boundary"

# --- building bodies -------------------------------------------------------------------------


def field(name: str, value: str | bytes) -> bytes:
    """One text part (without its leading boundary)."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    return f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + data


def file_part(
    name: str, filename: str, data: bytes, content_type: str | None = "text/plain"
) -> bytes:
    """One file part (without its leading boundary)."""
    head = f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    return head.encode("utf-8") + b"\r\n" + data


def multipart(*parts: bytes, boundary: str = BOUNDARY) -> bytes:
    """A complete body: each part behind a boundary, then the closing boundary."""
    delimiter = b"--" + boundary.encode("latin-1")
    out = b"".join(delimiter + b"\r\n" + p + b"\r\n" for p in parts)
    return out + delimiter + b"--\r\n"


def file_head(name: str, filename: str, boundary: str = BOUNDARY) -> bytes:
    """The start of a body whose first part is a file: the file's bytes follow."""
    return b"--" + boundary.encode() + b"\r\n" + file_part(name, filename, b"")


def tail(*parts: bytes, boundary: str = BOUNDARY) -> bytes:
    """What follows a file's bytes: the next parts and the closing boundary."""
    return b"\r\n" + multipart(*parts, boundary=boundary)


def upload_scope(path: str = "/upload", content_type: str | None = None, **extra: Any) -> Any:
    value = content_type or f"multipart/form-data; boundary={BOUNDARY}"
    return http_scope(path, "POST", [(b"content-type", value.encode("latin-1"))], **extra)


def in_messages(data: bytes, size: int) -> list[Message]:
    """``data`` as ``http.request`` messages of ``size`` bytes each."""
    pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    return [body(p, more_body=i < len(pieces) - 1) for i, p in enumerate(pieces)]


def make_app(**settings_: Any) -> App:
    return App(session_backend=InMemorySessionBackend(), **settings_)


async def read_all(stream: Any) -> bytes:
    chunks = []
    while (chunk := await stream.get()) is not None:
        chunks.append(chunk)
    return b"".join(chunks)


class Upload:
    """A client sending a body lazily: ``receive`` hands out ``chunks`` one by one.

    ``sent`` counts body bytes the app has read. ``gate(n)`` is an event the client waits for
    before it sends chunk ``n``; ``reached(n)`` is set once the app has read chunk ``n``. After
    the body the client waits for the response and then disconnects; with ``leave_after`` it
    disconnects after that many chunks; with ``more`` the body never ends.
    """

    def __init__(
        self, chunks: Iterable[bytes], *, leave_after: int | None = None, more: bool = False
    ) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._leave_after = leave_after
        self._more = more  # keep the body open forever (more_body=True on the last chunk)
        self._gates: dict[int, anyio.Event] = {}
        self._reached: dict[int, anyio.Event] = {}
        self._next: bytes | None = None
        self.index = 0
        self.sent = 0
        self.cancelled = 0
        self.messages: list[Message] = []
        self.finished = anyio.Event()
        self.body_done = anyio.Event()

    def gate(self, index: int) -> anyio.Event:
        """An event the client waits for before it sends chunk ``index``."""
        return self._gates.setdefault(index, anyio.Event())

    def reached(self, index: int) -> anyio.Event:
        """An event set once the app has read chunk ``index``."""
        return self._reached.setdefault(index, anyio.Event())

    async def receive(self) -> Message:
        try:
            return await self._receive()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise

    async def _receive(self) -> Message:
        await anyio.lowlevel.checkpoint()
        if self._leave_after is not None and self.index >= self._leave_after:
            return {"type": "http.disconnect"}
        if self.index in self._gates:
            await self._gates[self.index].wait()
        if self.body_done.is_set():
            await self.finished.wait()
            return {"type": "http.disconnect"}
        if self._next is None:
            self._next = next(self._chunks, None)
            if self._next is None:
                if self._more:
                    await anyio.sleep_forever()
                self.body_done.set()
                return body(b"")
        chunk, self._next = self._next, next(self._chunks, None)
        if self.index in self._reached:
            self._reached[self.index].set()
        self.index += 1
        self.sent += len(chunk)
        last = self._next is None and not self._more
        if last:
            self.body_done.set()
        return body(chunk, more_body=not last)

    async def send(self, message: Message) -> None:
        self.messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            self.finished.set()
        await anyio.lowlevel.checkpoint()

    @property
    def status(self) -> int:
        starts = [m for m in self.messages if m["type"] == "http.response.start"]
        assert len(starts) == 1, self.messages
        return int(starts[0]["status"])

    @property
    def body(self) -> bytes:
        return b"".join(m["body"] for m in self.messages if m["type"] == "http.response.body")

    async def run(self, app: App, scope: Any, deadline: float = 5.0) -> Upload:
        with anyio.fail_after(deadline):
            await app(scope, self.receive, self.send)
        self.finished.set()
        return self


def repeated(piece: bytes, count: int) -> Iterator[bytes]:
    """``count`` times the same bytes object (cheap to send many megabytes)."""
    for _ in range(count):
        yield piece


CHUNK = b"x" * 65536
FIELD_TOO_LARGE = (413, b"413 Payload Too Large: Multipart form field")


# --- what the handler gets -------------------------------------------------------------------


@pytest.mark.anyio
async def test_fields_and_files_reach_the_handler() -> None:
    app = make_app()

    @attach(app)
    async def upload(self: App, title: str, doc: dict[str, Any]) -> dict[str, Any]:
        return {
            "title": title,
            "tags": self.request.body_params["tag"],
            "filename": doc["filename"],
            "content_type": doc["content_type"],
            "data": (await read_all(doc["content"])).decode(),
            "again": await doc["content"].get(),
        }

    data = multipart(
        field("title", "hello"),
        field("tag", "a"),
        field("tag", "b"),
        file_part("doc", "notes.txt", b"line one\r\nline two", "text/plain; charset=utf-8"),
    )
    conn = await run_app(app, upload_scope(), [body(data)])
    assert conn.status == 200
    result = json.loads(conn.body)
    assert result == {
        "title": "hello",
        "tags": ["a", "b"],
        "filename": "notes.txt",
        "content_type": "text/plain; charset=utf-8",
        "data": "line one\r\nline two",
        "again": None,
    }


@pytest.mark.anyio
async def test_file_without_content_type_is_octet_stream_and_iterable() -> None:
    app = make_app()

    @attach(app)
    async def upload(self: App, blob: dict[str, Any]) -> str:
        chunks = [chunk async for chunk in blob["content"]]
        return f"{blob['content_type']} {b''.join(chunks).hex()}"

    data = multipart(file_part("blob", "b.bin", b"\x00\xff\r\n", content_type=None))
    conn = await run_app(app, upload_scope(), [body(data)])
    assert (conn.status, conn.body) == (200, b"application/octet-stream 00ff0d0a")


@pytest.mark.anyio
async def test_utf8_split_across_chunks_is_decoded_whole() -> None:
    """MicroPie 0.32 decoded each chunk alone and lost split characters.

    docs/migration.md, Uploads: UTF-8 split across chunks.
    """
    app = make_app()
    text = "abécd – ünïcödé 😀"

    @attach(app)
    async def upload(self: App, note: str) -> str:
        return note

    conn = await run_app(app, upload_scope(), in_messages(multipart(field("note", text)), 1))
    assert conn.body.decode() == text


@pytest.mark.anyio
@pytest.mark.parametrize(
    "content_type",
    [
        'multipart/form-data; boundary="test-boundary"',
        "Multipart/Form-Data; BOUNDARY=test-boundary",
        'multipart/form-data; charset=utf-8; boundary="test-boundary"; x=y',
        "multipart/form-data;boundary=test-boundary ",
    ],
)
async def test_quoted_boundaries_and_any_case_work(content_type: str) -> None:
    """Quoted boundaries and ``Multipart/Form-Data`` are recognised.

    docs/migration.md, Uploads: ``Multipart/Form-Data``, quoted boundaries.
    """
    app = make_app()

    @attach(app)
    async def upload(self: App, note: str) -> str:
        return note

    conn = await run_app(
        app, upload_scope(content_type=content_type), [body(multipart(field("note", "ok")))]
    )
    assert (conn.status, conn.body) == (200, b"ok")


def test_boundary_parsing() -> None:
    assert parse_boundary("multipart/form-data; boundary=abc") == "abc"
    assert parse_boundary('multipart/form-data; boundary="a\\"b;c"') == 'a"b;c'
    assert parse_boundary('multipart/form-data; x="boundary=no"; boundary=yes') == "yes"
    assert parse_boundary("multipart/form-data; flag; Boundary=CaseKept") == "CaseKept"
    assert parse_boundary("multipart/form-data") is None
    assert parse_boundary("multipart/form-data; boundary=") is None
    assert parse_boundary("multipart/form-data; name=x") is None


@pytest.mark.anyio
async def test_empty_filename_is_an_empty_text_field() -> None:
    """MicroPie: an empty file input (``filename=""``) binds as the text ``""``."""
    app = make_app()

    @attach(app)
    async def upload(self: App, pick: Any) -> str:
        return f"{pick!r} {self.request.files!r}"

    data = multipart(file_part("pick", "", b"", "application/octet-stream"))
    conn = await run_app(app, upload_scope(), [body(data)])
    assert conn.body == b"'' {}"


@pytest.mark.anyio
async def test_last_file_with_a_name_wins() -> None:
    app = make_app()

    @attach(app)
    async def upload(self: App, **form: Any) -> str:
        return str(await read_all(self.request.files["f"]["content"]))

    data = multipart(file_part("f", "1.txt", b"first"), file_part("f", "2.txt", b"second"))
    conn = await run_app(app, upload_scope(), [body(data)])
    assert conn.body == b"b'second'"


@pytest.mark.anyio
async def test_missing_parameters_use_defaults_or_answer_400() -> None:
    app = make_app()

    @attach(app)
    async def optional(self: App, note: str = "default") -> str:
        return note

    @attach(app)
    async def required(self: App, note: str) -> str:
        return note

    data = multipart(field("other", "x"))
    conn = await run_app(app, upload_scope("/optional"), in_messages(data, 7))
    assert (conn.status, conn.body) == (200, b"default")
    conn = await run_app(app, upload_scope("/required"), in_messages(data, 7))
    assert (conn.status, conn.body) == (400, b"400 Bad Request: Missing required parameter 'note'")


@pytest.mark.anyio
async def test_kwargs_wait_for_the_whole_form() -> None:
    app = make_app()

    @attach(app)
    async def upload(self: App, **form: Any) -> str:
        return f"{form['a']} {form['b']} {sorted(form)}"

    data = multipart(field("a", "1"), file_part("f", "f.txt", b"..."), field("b", "2"))
    conn = await run_app(app, upload_scope(), in_messages(data, 5))
    assert conn.body == b"1 2 ['a', 'b', 'f']"


@pytest.mark.anyio
async def test_subapp_handoff_sees_a_complete_form() -> None:
    """MicroPie ``test_multipart_subapp_handoff_uses_completed_parse``."""
    child = make_app()
    app = make_app()

    @attach(child)
    async def upload(self: App, file: dict[str, Any]) -> bytes:
        return await read_all(file["content"])

    class MountChild(HttpMiddleware):
        async def before_request(self, request: Any) -> None:
            request._subapp = child
            request._subapp_path = "/upload"

        async def after_request(self, *args: Any) -> None:
            return None

    app.middlewares.append(MountChild())
    data = multipart(file_part("file", "a.txt", b"complete file"))
    conn = await run_app(app, upload_scope("/anything"), in_messages(data, 10))
    assert (conn.status, conn.body) == (200, b"complete file")


# --- streaming: the handler runs while the upload arrives ------------------------------------


@pytest.mark.anyio
async def test_handler_starts_before_the_upload_has_finished() -> None:
    app = make_app()
    upload_ = Upload([file_head("doc", "d.txt"), b"first ", b"second", tail()])
    handler_started = upload_.gate(2)  # the client sends "second" only after the handler ran

    @attach(app)
    async def upload(self: App, doc: dict[str, Any]) -> bytes:
        first = await doc["content"].get()
        handler_started.set()
        rest = await read_all(doc["content"])
        return first + b"|" + rest

    await upload_.run(app, upload_scope())
    assert (upload_.status, upload_.body) == (200, b"first |second")


@pytest.mark.anyio
async def test_binding_a_field_behind_an_unread_file_does_not_deadlock() -> None:
    """The handler binds ``after``, which follows a large file it has not read yet."""
    app = make_app()
    size = 4 * 1024 * 1024
    upload_ = Upload(
        [
            file_head("big", "b.bin"),
            *repeated(CHUNK, size // len(CHUNK)),
            tail(field("after", "yes")),
        ]
    )

    @attach(app)
    async def upload(self: App, big: dict[str, Any], after: str) -> str:
        return f"{after} {len(await read_all(big['content']))}"

    await upload_.run(app, upload_scope())
    assert upload_.body == f"yes {size}".encode()


@pytest.mark.anyio
async def test_files_can_be_read_in_any_order() -> None:
    app = make_app()
    one, two = b"1" * 600_000, b"2" * 600_000
    data = multipart(file_part("a", "a", one), file_part("b", "b", two), field("c", "3"))

    @attach(app)
    async def upload(self: App, c: str, b: dict[str, Any], a: dict[str, Any]) -> str:
        second = await read_all(b["content"])
        first = await read_all(a["content"])
        return f"{c} {first == one} {second == two}"

    upload_ = Upload(in_messages_bytes(data, 65536))
    await upload_.run(app, upload_scope())
    assert upload_.body == b"3 True True"


def in_messages_bytes(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.anyio
@pytest.mark.parametrize("later_first", [False, True], ids=["in-order", "later-first"])
async def test_two_files_read_at_once_by_two_tasks(later_first: bool) -> None:
    """Concurrent readers take turns reading the body; neither waits for the other forever."""
    app = make_app()
    one, two = bytes(range(256)) * 3000, b"2" * 700_000
    data = multipart(field("x", "1"), file_part("a", "a", one), file_part("b", "b", two))
    results: dict[str, bytes] = {}

    @attach(app)
    async def upload(self: App, x: str, **form: Any) -> str:
        async def read(name: str) -> None:
            results[name] = await read_all(self.request.files[name]["content"])

        async with anyio.create_task_group() as task_group:
            for name in ("b", "a") if later_first else ("a", "b"):
                task_group.start_soon(read, name)
        return "ok"

    upload_ = Upload(in_messages_bytes(data, 65536))
    await upload_.run(app, upload_scope())
    assert (upload_.status, results == {"a": one, "b": two}) == (200, True)


@pytest.mark.anyio
async def test_two_tasks_read_one_file_while_it_arrives() -> None:
    """The second reader waits for the first one's read, then takes its turn."""
    app = make_app()
    pieces = [bytes([65 + i]) * 70_000 for i in range(12)]
    upload_ = Upload([file_head("doc", "d"), *pieces, tail()])
    got: list[list[bytes]] = [[], []]

    @attach(app)
    async def upload(self: App, doc: dict[str, Any]) -> str:
        async def read(into: list[bytes]) -> None:
            async for chunk in doc["content"]:
                into.append(chunk)
                await anyio.lowlevel.checkpoint()  # let the other reader in

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(read, got[0])
            task_group.start_soon(read, got[1])
        return "ok"

    await upload_.run(app, upload_scope())
    assert upload_.status == 200
    assert b"".join(sorted(got[0] + got[1])) == b"".join(pieces)
    assert got[0]
    assert got[1]


@pytest.mark.anyio
async def test_a_reader_cancelled_while_reading_the_body_hands_over_to_the_next() -> None:
    app = make_app()
    upload_ = Upload([file_head("a", "a") + b"one", b"two", tail()])
    second_message = upload_.gate(1)
    seen: list[Any] = []

    @attach(app)
    async def upload(self: App, a: dict[str, Any]) -> str:
        stream = a["content"]
        seen.append(await stream.get())
        first_scope = anyio.CancelScope()

        async def first_reader() -> None:
            with first_scope:
                await stream.get()  # waits for the client, holding the turn to read
            seen.append("first reader cancelled")

        async def second_reader() -> None:
            seen.append(await read_all(stream))  # waits for the first reader's turn

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(first_reader)
            await anyio.wait_all_tasks_blocked()
            task_group.start_soon(second_reader)
            await anyio.wait_all_tasks_blocked()
            first_scope.cancel()
            await anyio.wait_all_tasks_blocked()
            second_message.set()
        return "ok"

    await upload_.run(app, upload_scope())
    assert (upload_.status, seen) == (200, [b"one", "first reader cancelled", b"two"])


@pytest.mark.anyio
async def test_an_endless_body_that_never_blocks_does_not_starve_the_loop() -> None:
    """``receive()`` that returns at once, forever: reading still yields to other tasks."""
    app = make_app(max_body_size=None)
    reading, other_ran = anyio.Event(), anyio.Event()
    head = body(file_head("doc", "d"), more_body=True)
    chunk = body(CHUNK, more_body=True)
    limit = 64 * CHECKPOINT_EVERY  # a bound for the test, not for the app

    @attach(app)
    async def upload(self: App, doc: dict[str, Any]) -> str:
        size = 0
        while not other_ran.is_set() and size < limit:
            size += len(await doc["content"].get() or b"")
            reading.set()
        return str(size)

    messages = itertools.chain([head], itertools.repeat(chunk))

    async def receive() -> Message:
        return next(messages)  # never yields

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def other() -> None:
        await reading.wait()
        other_ran.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(other)
            await app(upload_scope(), receive, send)
    read = int(sent[-1]["body"])
    # asyncio runs the other task at the first checkpoint; trio may pick either task first
    # after each one, so allow a few (a loop that never yields reads all of ``limit``).
    assert 0 < read <= limit // 2


@pytest.mark.anyio
async def test_a_handler_that_does_not_read_holds_the_upload_back() -> None:
    """Backpressure: the app stops reading the body while the handler's file is unread."""
    app = make_app()
    total = 8 * 1024 * 1024
    upload_ = Upload([file_head("big", "b.bin"), *repeated(CHUNK, total // len(CHUNK)), tail()])
    bound, read_now = anyio.Event(), anyio.Event()
    sent_while_unread: list[int] = []

    @attach(app)
    async def upload(self: App, big: dict[str, Any]) -> str:
        bound.set()
        await read_now.wait()
        return str(len(await read_all(big["content"])))

    async with anyio.create_task_group() as tg:
        tg.start_soon(upload_.run, app, upload_scope())
        await bound.wait()
        await anyio.wait_all_tasks_blocked()
        sent_while_unread.append(upload_.sent)
        read_now.set()
    # binding read up to the file's headers; nothing more is read while nobody reads the file
    assert sent_while_unread[0] == len(file_head("big", "b.bin"))
    assert (upload_.status, upload_.body) == (200, str(total).encode())


@pytest.mark.anyio
async def test_handler_returning_without_draining_a_large_file_stops_the_upload() -> None:
    """The response is sent at once; the parser is cancelled and awaited."""
    app = make_app()
    total = 15 * 1024 * 1024
    upload_ = Upload([file_head("big", "b.bin"), *repeated(CHUNK, total // len(CHUNK)), tail()])

    @attach(app)
    async def upload(self: App, big: dict[str, Any]) -> str:
        first = await big["content"].get()
        return f"sniffed {len(first)}"

    await upload_.run(app, upload_scope())
    assert upload_.status == 200
    assert upload_.body.startswith(b"sniffed ")
    assert upload_.sent < 2 * 1024 * 1024


@pytest.mark.anyio
async def test_middleware_short_circuit_stops_the_parser() -> None:
    """``before_request`` answers 401; the upload is not read on."""
    app = make_app()
    called: list[str] = []

    class Deny(HttpMiddleware):
        async def before_request(self, request: Any) -> dict[str, Any]:
            return {"status_code": 401, "body": "no"}

        async def after_request(self, *args: Any) -> None:
            return None

    @attach(app)
    async def upload(self: App, big: Any) -> str:
        called.append("handler")
        return "unreachable"

    app.middlewares.append(Deny())
    upload_ = Upload([file_head("big", "b.bin"), *repeated(CHUNK, 10_000)], more=True)
    await upload_.run(app, upload_scope())
    assert (upload_.status, upload_.body, called) == (401, b"no", [])
    assert upload_.sent < 2 * 1024 * 1024


# --- failures ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_truncated_upload_never_looks_complete() -> None:
    """A body that ends before the closing boundary fails the open file.

    docs/migration.md, Uploads: An upload cut short.
    """
    app = make_app()
    seen: list[Any] = []

    @attach(app)
    async def upload(self: App, doc: dict[str, Any]) -> str:
        try:
            await read_all(doc["content"])
        except MultipartFileError as error:
            seen.append(error.cause)
        return "handler answer"

    messages = [body(file_head("doc", "d.txt") + b"partial", more_body=True), body(b"")]
    conn = await run_app(app, upload_scope(), messages)
    assert (conn.status, conn.body) == (400, b"400 Bad Request: Malformed multipart body")
    assert len(seen) == 1


@pytest.mark.anyio
async def test_limit_reached_mid_upload_wakes_the_reader() -> None:
    """MicroPie ``test_multipart_limit_terminates_open_file_queue``: 413, reader sees failure."""
    first = file_head("file", "a.txt") + b"hello"
    app = make_app(max_body_size=len(first) + 1)
    failures: list[MultipartFileError] = []

    @attach(app)
    async def upload(self: App, file: dict[str, Any]) -> str:
        try:
            await read_all(file["content"])
        except MultipartFileError as error:
            failures.append(error)
            return "caught"
        raise AssertionError("A truncated file was reported as complete")

    messages = [body(first, more_body=True), body(b" world" + tail())]
    conn = await run_app(app, upload_scope(), messages)
    assert (conn.status, conn.body) == (413, b"413 Payload Too Large")
    assert [f.cause.status for f in failures] == [413]  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_a_handler_that_lets_the_upload_failure_propagate_gets_the_upload_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = file_head("file", "a.txt") + b"hello"
    app = make_app(max_body_size=len(first) + 1)

    @attach(app)
    async def upload(self: App, file: dict[str, Any]) -> bytes:
        return await read_all(file["content"])

    messages = [body(first, more_body=True), body(b" world" + tail())]
    conn = await run_app(app, upload_scope(), messages)
    assert (conn.status, conn.body) == (413, b"413 Payload Too Large")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.anyio
async def test_a_failure_known_while_binding_prevents_the_handler() -> None:
    app = make_app(max_form_field_size=4)
    called: list[str] = []

    @attach(app)
    async def upload(self: App, first: str, later: str = "") -> str:
        called.append(first)
        return "unreachable"

    data = multipart(field("first", "ok"), field("note", "12345"))
    conn = await run_app(app, upload_scope(), [body(data)])
    assert (conn.status, conn.body) == (413, b"413 Payload Too Large: Multipart form field")
    assert called == []


@pytest.mark.anyio
async def test_a_failure_met_in_the_read_that_brought_the_bound_file_prevents_the_handler() -> None:
    """The file the handler binds and a bad field after it arrive in one message."""
    app = make_app(max_form_field_size=4)
    called: list[str] = []

    @attach(app)
    async def upload(self: App, doc: dict[str, Any]) -> str:
        called.append("handler")
        return "side effect"

    data = multipart(file_part("doc", "d", b"x"), field("note", "12345"))
    conn = await run_app(app, upload_scope(), [body(data)])
    assert (conn.status, conn.body, called) == (*FIELD_TOO_LARGE, [])


@pytest.mark.anyio
async def test_a_handler_that_asks_for_nothing_reads_nothing() -> None:
    """Nothing binds a form field or reads a file: the body is never read, the answer stands."""
    app = make_app(max_form_field_size=4)

    @attach(app)
    async def upload(self: App) -> str:
        return "ok"

    client = Upload([multipart(field("note", "12345")), *repeated(CHUNK, 100)], more=True)
    await client.run(app, upload_scope())
    assert (client.status, client.body, client.sent) == (200, b"ok", 0)


@pytest.mark.anyio
async def test_a_failure_while_the_handler_runs_replaces_its_answer() -> None:
    """The handler's own read meets a bad field after its file: its answer is replaced."""
    app = make_app(max_form_field_size=4)
    data = multipart(file_part("doc", "d", b"xyz"), field("note", "12345"))
    cut = data.index(b"xyz") + 2  # the file's last byte and end come with the bad field
    client = Upload([data[:cut], data[cut:]])
    read: list[bytes] = []

    @attach(app)
    async def upload(self: App, doc: dict[str, Any]) -> str:
        read.append(await read_all(doc["content"]))
        return "ok"

    await client.run(app, upload_scope())
    assert (client.status, client.body, read) == (*FIELD_TOO_LARGE, [b"xyz"])


#: Run with the app's lifespan (one sweeper enforces body deadlines for all requests) or
#: without it (each request puts the deadline on its own scope): both paths must behave alike.
SWEEPER = pytest.mark.parametrize("sweeper", [True, False], ids=["lifespan", "no-lifespan"])
TIMED_OUT = (408, b"408 Request Timeout: Failed to receive body")


@pytest.mark.anyio
@SWEEPER
async def test_stalled_upload_answers_408(sweeper: bool) -> None:
    """MicroPie ``test_stalled_multipart_receive_returns_408``."""
    app = make_app(body_timeout=0.05)

    @attach(app)
    async def upload(self: App, file: Any) -> str:
        return "unreachable"

    upload_ = Upload([file_head("x", "x")], more=True)
    async with lifespan(app, running=sweeper):
        await upload_.run(app, upload_scope())
    assert (upload_.status, upload_.body) == TIMED_OUT


@pytest.mark.anyio
@SWEEPER
async def test_a_stall_while_the_handler_reads_answers_408(sweeper: bool) -> None:
    app = make_app(body_timeout=0.05)
    interrupted: list[str] = []

    @attach(app)
    async def upload(self: App, doc: dict[str, Any]) -> bytes:
        try:
            return await read_all(doc["content"])
        finally:
            interrupted.append("reader interrupted")

    upload_ = Upload([file_head("doc", "d") + b"first"], more=True)
    async with lifespan(app, running=sweeper):
        await upload_.run(app, upload_scope())
    assert ((upload_.status, upload_.body), interrupted) == (TIMED_OUT, ["reader interrupted"])


@pytest.mark.anyio
@SWEEPER
async def test_a_handler_slow_to_read_is_not_timed_out(sweeper: bool) -> None:
    """The body deadline runs only while a read waits for the client, never between reads."""
    app = make_app(body_timeout=0.05)

    @attach(app)
    async def upload(self: App, doc: dict[str, Any]) -> bytes:
        first = await doc["content"].get()
        await anyio.sleep(0.25)  # slow work, five body timeouts long: the client did not stall
        return first + b"|" + await read_all(doc["content"])

    upload_ = Upload([file_head("doc", "d") + b"first", b"second", tail()])
    async with lifespan(app, running=sweeper):
        await upload_.run(app, upload_scope())
    assert (upload_.status, upload_.body) == (200, b"first|second")


@pytest.mark.anyio
async def test_unexpected_parser_failure_is_logged_and_answers_400(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenParser:
        def __init__(self, boundary: bytes) -> None:
            pass

        def parse(self, chunk: bytes) -> Any:
            raise RuntimeError("broken multipart body")

    monkeypatch.setattr(micropie.http.multipart._form, "PushMultipartParser", BrokenParser)
    app = make_app()

    @attach(app)
    async def upload(self: App, file: Any) -> str:
        return "unreachable"

    conn = await run_app(app, upload_scope(), [body(b"whatever")])
    assert (conn.status, conn.body) == (400, b"400 Bad Request: Malformed multipart body")
    assert [r.getMessage() for r in caplog.records] == ["Failed to parse multipart request body"]


@pytest.mark.anyio
async def test_without_the_multipart_package_answers_500(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(micropie.http.multipart._form, "MULTIPART_INSTALLED", False)
    app = make_app()

    @attach(app)
    async def upload(self: App, file: Any) -> str:
        return "unreachable"

    conn = await run_app(app, upload_scope(), [body(multipart(field("a", "b")))])
    assert (conn.status, conn.body) == (500, b"500 Internal Server Error")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "Multipart form data requires the 'multipart' package")
    ]


# --- the client leaving ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_client_leaving_mid_upload_fails_the_file_and_sends_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The reader's ``get()`` raises; no response, no ERROR log."""
    app = make_app()
    failures: list[BaseException] = []

    @attach(app)
    async def upload(self: App, doc: dict[str, Any]) -> str:
        try:
            await read_all(doc["content"])
        except MultipartFileError as error:
            failures.append(error)
            return "cleaned up"
        return "complete?"

    upload_ = Upload([file_head("doc", "d"), *repeated(CHUNK, 100)], leave_after=20)
    await upload_.run(app, upload_scope())
    assert upload_.messages == []
    assert len(failures) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.anyio
async def test_client_leaving_while_binding_waits_never_runs_the_handler() -> None:
    app = make_app()
    called: list[str] = []

    @attach(app)
    async def upload(self: App, later: str) -> str:
        called.append(later)
        return later

    upload_ = Upload([multipart(field("first", "1"))[:-20], b"more"], leave_after=1)
    await upload_.run(app, upload_scope())
    assert (upload_.messages, called) == ([], [])


@pytest.mark.anyio
async def test_client_leaving_after_the_upload_cancels_the_handler() -> None:
    app = make_app()
    cancelled = anyio.Event()
    started = anyio.Event()

    @attach(app)
    async def upload(self: App, note: str) -> str:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        return "unreachable"

    messages: list[Any] = [body(multipart(field("note", "x")))]

    async def leave(conn: Any) -> None:
        await started.wait()

    messages += [leave, {"type": "http.disconnect"}]
    conn = await run_app(app, upload_scope(), messages)
    assert cancelled.is_set()
    assert conn.sent == []


@pytest.mark.anyio
async def test_a_reader_gets_a_moment_to_clean_up_after_the_client_left() -> None:
    app = make_app()
    cleaned: list[str] = []

    @attach(app)
    async def upload(self: App, doc: dict[str, Any]) -> str:
        try:
            await read_all(doc["content"])
        except MultipartFileError:
            await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()
            cleaned.append("removed partial file")
            return "cleaned up"
        return "complete?"

    upload_ = Upload([file_head("doc", "d"), CHUNK, CHUNK], leave_after=3, more=True)
    await upload_.run(app, upload_scope())
    assert (upload_.messages, cleaned) == ([], ["removed partial file"])


@pytest.mark.anyio
@SWEEPER
async def test_a_handler_that_ignores_its_client_leaving_mid_upload_is_cancelled(
    sweeper: bool,
) -> None:
    app = make_app()
    cancelled = anyio.Event()

    @attach(app)
    async def upload(self: App, doc: dict[str, Any]) -> str:
        try:
            await read_all(doc["content"])
        except MultipartFileError:
            pass  # ... and carry on as if nothing happened
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        return "unreachable"

    upload_ = Upload([file_head("doc", "d"), CHUNK, CHUNK], leave_after=3, more=True)
    start = anyio.current_time()
    async with lifespan(app, running=sweeper):
        await upload_.run(app, upload_scope())
    assert (cancelled.is_set(), upload_.messages) == (True, [])
    assert anyio.current_time() - start < ABANDONED_UPLOAD_GRACE + 1.0


@pytest.mark.anyio
async def test_cancellation_from_outside_propagates() -> None:
    app = make_app()
    started = anyio.Event()
    after_app: list[str] = []

    @attach(app)
    async def upload(self: App, doc: dict[str, Any]) -> str:
        started.set()
        await anyio.sleep_forever()
        return "unreachable"

    upload_ = Upload([file_head("doc", "d"), b"data"], more=True)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def serve() -> None:
                await app(upload_scope(), upload_.receive, upload_.send)
                after_app.append("the app swallowed the cancellation")

            tg.start_soon(serve)
            await started.wait()
            tg.cancel_scope.cancel()
    assert after_app == []
    assert upload_.messages == []


# --- UploadStream on its own ------------------------------------------------------------------


class FakeForm:
    """An ``UploadStream``'s source that delivers the next of ``pieces`` on each pull."""

    def __init__(self, stream_pieces: list[bytes | None]) -> None:
        self.pieces = stream_pieces
        self.pulls = 0
        self.ended = False
        self.stream = UploadStream(self)

    async def pull(self) -> None:
        self.pulls += 1
        piece = self.pieces.pop(0)
        if piece is None:
            self.stream._finish()
        else:
            self.stream._put(piece)


@pytest.mark.anyio
async def test_upload_stream_queue_compatibility() -> None:
    form = FakeForm([b"c", None])
    stream = form.stream
    assert stream.empty()
    assert stream.qsize() == 0
    with pytest.raises(anyio.WouldBlock):
        stream.get_nowait()
    stream._put(b"a")
    stream._put(b"b")
    assert stream.qsize() == 2
    assert stream.get_nowait() == b"a"
    assert (await stream.get(), form.pulls) == (b"b", 0)  # buffered: nothing read
    assert (await stream.get(), form.pulls) == (b"c", 1)  # empty: the reader pulls
    assert (await stream.get(), form.pulls) == (None, 2)
    stream._abort(RuntimeError("too late"))  # a complete file stays complete
    assert (await stream.get(), stream.get_nowait(), stream.empty()) == (None, None, False)

    broken = FakeForm([]).stream
    broken._put(b"partial")
    cause = RuntimeError("cut")
    broken._abort(cause)
    with pytest.raises(MultipartFileError) as info:
        await broken.get()
    assert info.value.cause is cause
    with pytest.raises(MultipartFileError):
        broken.get_nowait()


# --- chunking never changes the result --------------------------------------------------------

_names = st.text(alphabet="abcdefgh", min_size=1, max_size=4)
_parts = st.lists(
    st.tuples(
        _names,
        st.one_of(st.none(), st.text(alphabet="xyz.", min_size=1, max_size=5)),
        st.binary(max_size=300),
    ),
    max_size=5,
)


def _chunkings(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


async def _parse_with(app: App, chunks: list[bytes]) -> Any:
    upload_ = Upload(chunks)
    await upload_.run(app, upload_scope())
    assert upload_.status == 200, upload_.body
    return upload_.body


def _form_app() -> App:
    app = make_app()

    @attach(app)
    async def upload(self: App, **form: Any) -> str:
        files = {
            n: (f["filename"], (await read_all(f["content"])).hex())
            for n, f in self.request.files.items()
        }
        return repr((self.request.body_params, files))

    return app


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=_parts, cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=30))
def test_any_chunking_gives_the_same_form(backend: str, parts: list[Any], cuts: list[int]) -> None:
    encoded = []
    for name, filename, data in parts:
        # text fields must be valid UTF-8 to compare decoded values byte for byte
        if filename is None:
            encoded.append(field(name, data.decode("latin-1")))
        else:
            encoded.append(file_part(name, filename, data))
    data = multipart(*encoded)
    app = _form_app()

    async def both() -> tuple[Any, Any]:
        whole = await _parse_with(app, [data])
        pieces = await _parse_with(app, _chunkings(data, cuts))
        return whole, pieces

    whole, pieces = anyio.run(both, backend=backend)
    assert whole == pieces


@pytest.mark.anyio
async def test_one_byte_chunks_give_the_same_form() -> None:
    data = multipart(
        field("a", "é" * 300),
        file_part("f", "f.bin", bytes(range(256)) * 8),
        field("b", "\r\n--test-boundar"),
        file_part("g", "g.bin", b"\r\n-" * 100),
    )
    app = _form_app()
    assert await _parse_with(app, in_messages_bytes(data, 1)) == await _parse_with(app, [data])
