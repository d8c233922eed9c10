"""Hostile multipart input: every attack gets a fast, bounded answer (docs/limits.md,
"Multipart uploads"; docs/migration.md, "Uploads").

Limits answer 413, malformed input 400, and nothing an attacker sends may stall the event loop,
grow memory without bound or reach a response header.
"""

from __future__ import annotations

import itertools
import tracemalloc
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from micropie import App
from tests.http.test_multipart import (
    BOUNDARY,
    CHUNK,
    Upload,
    field,
    file_head,
    file_part,
    in_messages,
    make_app,
    multipart,
    read_all,
    repeated,
    tail,
    upload_scope,
)
from tests.support.asgi import attach, body, http_scope, run_app

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
FIELD_TOO_LARGE = (413, b"413 Payload Too Large: Multipart form field")
MALFORMED = (400, b"400 Bad Request: Malformed multipart body")


def fresh(count: int) -> Iterator[bytes]:
    """``count`` new 64 KiB chunks (distinct objects, so holding them costs real memory)."""
    for _ in range(count):
        yield b"x" * 65536


def note_app(**settings: Any) -> tuple[App, list[str]]:
    """An app whose ``/upload`` binds the text field ``note``; records every call."""
    app = make_app(**settings)
    calls: list[str] = []

    @attach(app)
    async def upload(self: App, note: str) -> str:
        calls.append(note)
        return str(len(note))

    return app, calls


#: "Does not hang": a bound for one hostile request, many times what it takes on a loaded
#: machine. How fast hostile bodies are answered, and what a GET beside them waits, are a
#: benchmark's questions (benchmarks/hostile_bodies.py), not a test's: the tests count work.
HANG_GUARD = 5.0


# --- a text field is limited while it streams -------------------------------------------------


@pytest.mark.parametrize("message_size", [None, 1024])
async def test_text_field_of_exactly_the_limit_is_accepted(message_size: int | None) -> None:
    app, _ = note_app()
    data = multipart(field("note", b"a" * MiB))
    messages = in_messages(data, message_size) if message_size else [body(data)]
    conn = await run_app(app, upload_scope(), messages)
    assert (conn.status, conn.body) == (200, str(MiB).encode())


@pytest.mark.parametrize("message_size", [None, 1024])
async def test_text_field_one_byte_over_the_limit_is_413(message_size: int | None) -> None:
    """CVE-2024-47874 / CVE-2024-49767: counted across chunks, before the handler."""
    app, calls = note_app()
    data = multipart(field("note", b"a" * (MiB + 1)))
    messages = in_messages(data, message_size) if message_size else [body(data)]
    conn = await run_app(app, upload_scope(), messages)
    assert ((conn.status, conn.body), calls) == (FIELD_TOO_LARGE, [])


# --- part and file counts ----------------------------------------------------------------------


def count_app(**settings: Any) -> tuple[App, list[int]]:
    app = make_app(**settings)
    calls: list[int] = []

    @attach(app)
    async def first(self: App, p0: str) -> str:
        calls.append(1)
        return "ok"

    @attach(app)
    async def every(self: App, **form: Any) -> str:
        calls.append(len(form))
        return str(len(form))

    return app, calls


@pytest.mark.parametrize("path", ["/first", "/every"])
async def test_1001_parts_are_413_before_the_handler(path: str) -> None:
    """CVE-2023-30798 and friends: ``max_multipart_parts`` (default 1000)."""
    app, calls = count_app()
    data = multipart(*(field(f"p{i}", "x") for i in range(1001)))
    conn = await run_app(app, upload_scope(path), [body(data)])
    assert (conn.status, conn.body) == (413, b"413 Payload Too Large: Too many multipart parts")
    assert calls == []


async def test_1000_parts_are_accepted() -> None:
    app, calls = count_app()
    data = multipart(*(field(f"p{i}", "x") for i in range(1000)))
    conn = await run_app(app, upload_scope("/every"), in_messages(data, 4096))
    assert (conn.status, conn.body, calls) == (200, b"1000", [1000])


async def test_too_many_files_are_413() -> None:
    app, calls = count_app(max_multipart_files=10)
    data = multipart(*(file_part(f"f{i}", "f.txt", b"x") for i in range(11)))
    conn = await run_app(app, upload_scope("/every"), [body(data)])
    assert (conn.status, conn.body) == (413, b"413 Payload Too Large: Too many multipart files")
    assert calls == []
    data = multipart(*(file_part(f"f{i}", "f.txt", b"x") for i in range(10)))
    conn = await run_app(app, upload_scope("/every"), [body(data)])
    assert (conn.status, conn.body) == (200, b"10")


async def test_1001_one_byte_files_are_413_with_the_defaults() -> None:
    app, _ = count_app()
    data = multipart(*(file_part(f"f{i}", "f", b"x") for i in range(1001)))
    conn = await run_app(app, upload_scope("/every"), [body(data)])
    assert conn.status == 413


async def test_whole_body_over_max_body_size_is_413() -> None:
    app, calls = note_app(max_body_size=1000)
    data = multipart(field("note", b"a" * 2000))
    conn = await run_app(app, upload_scope(), in_messages(data, 100))
    assert ((conn.status, conn.body), calls) == ((413, b"413 Payload Too Large"), [])


# --- part headers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "part",
    [
        b'Content-Disposition: form-data; name="note"\r\n'
        + b"".join(b"X-H%d: v\r\n" % i for i in range(8))
        + b"\r\nvalue",
        b'Content-Disposition: form-data; name="note"\r\nX-Long: ' + b"a" * 5000 + b"\r\n\r\nv",
    ],
    ids=["nine-headers", "5KB-header"],
)
async def test_oversized_part_headers_are_400_before_the_rest_of_the_body(part: bytes) -> None:
    """CVE-2026-42561 / CVE-2026-34516: at most 8 headers of ~4 KB per part.

    The headers come in one message and 4 MiB of the part's value after them: the answer comes
    from the headers alone, without reading on.
    """
    app, calls = note_app()
    headers = part.partition(b"\r\n\r\n")[0]
    first = b"--" + BOUNDARY.encode() + b"\r\n" + headers + b"\r\n\r\n"
    upload = Upload([first, *repeated(CHUNK, 64), tail()])
    await upload.run(app, upload_scope(), deadline=HANG_GUARD)
    assert ((upload.status, upload.body), calls) == (MALFORMED, [])
    assert upload.sent == len(first)


# --- huge preamble or epilogue ------------------------------------------------------------------


@pytest.mark.parametrize("where", ["preamble", "epilogue"])
async def test_huge_preamble_or_epilogue_is_answered_and_the_loop_stays_responsive(
    where: str,
) -> None:
    """CVE-2024-53981 / CVE-2026-40347: 16 MiB around the form, in 64 messages.

    A GET sent once 8 of them are in is answered before the rest have come.
    """
    app, _ = note_app(max_body_size=32 * MiB)

    @attach(app)
    async def index(self: App) -> str:
        return "still here"

    @attach(app)
    async def whole(self: App, **form: Any) -> str:  # waits for the end of the body
        return str(form["note"])

    junk = [b"\r\n" + b"\x00" * (MiB // 4 - 2)] * 64
    form = multipart(field("note", "hello"))
    chunks = [*junk, b"\r\n" + form] if where == "preamble" else [form, *junk]
    upload = Upload(chunks)
    answered_at: list[int] = []  # how many chunks of the body the app had read by then

    async def get_while_attacked() -> None:
        await upload.reached(8).wait()
        conn = await run_app(app, http_scope("/"))
        assert conn.body == b"still here"
        answered_at.append(upload.index)

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(get_while_attacked)
            await upload.run(app, upload_scope("/whole"), deadline=HANG_GUARD)
    assert (upload.status, upload.body) == (200, b"hello")
    assert answered_at[0] < len(chunks)  # the GET was answered while the body still came in


# --- ReDoS-shaped headers ------------------------------------------------------------------------


async def test_backslash_runs_in_the_boundary_are_answered_fast() -> None:
    """CVE-2024-24762 / CVE-2026-28356: ``boundary="\\\\\\\\…a`` (unterminated)."""
    app, calls = note_app()
    content_type = 'multipart/form-data; boundary="' + "\\" * 64 + "a"
    conn = await run_app(
        app, upload_scope(content_type=content_type), [body(b"--x--\r\n")], deadline=HANG_GUARD
    )
    assert conn.status == 400
    assert calls == []


async def test_backslash_runs_in_content_disposition_are_answered_fast() -> None:
    app, _ = note_app()
    part = b'Content-Disposition: form-data; name="' + b"\\" * 4000 + b"\r\n\r\nvalue"
    conn = await run_app(app, upload_scope(), [body(multipart(part))], deadline=HANG_GUARD)
    assert conn.status in (200, 400)


# --- boundary and framing -------------------------------------------------------------------------


async def test_no_boundary_is_400() -> None:
    app, calls = note_app()
    conn = await run_app(app, upload_scope(content_type="multipart/form-data"), [body(b"x")])
    assert ((conn.status, conn.body), calls) == ((400, b"400 Bad Request: Missing boundary"), [])


async def test_boundary_over_70_characters_is_malformed() -> None:
    app, calls = note_app()
    long = "b" * 71
    data = multipart(field("note", "x"), boundary=long)
    conn = await run_app(
        app, upload_scope(content_type=f"multipart/form-data; boundary={long}"), [body(data)]
    )
    assert ((conn.status, conn.body), calls) == (MALFORMED, [])
    longest = "b" * 70
    data = multipart(field("note", "x"), boundary=longest)
    conn = await run_app(
        app, upload_scope(content_type=f"multipart/form-data; boundary={longest}"), [body(data)]
    )
    assert (conn.status, conn.body) == (200, b"1")


@pytest.mark.parametrize("cut", [10, 40, -20, -3])
async def test_truncated_body_is_malformed(cut: int) -> None:
    app, calls = note_app()
    data = multipart(field("other", "x"), field("note", "value"))[:cut]
    conn = await run_app(app, upload_scope(), in_messages(data, 16))
    assert ((conn.status, conn.body), calls) == (MALFORMED, [])


async def test_garbage_is_malformed() -> None:
    app, calls = note_app()
    conn = await run_app(app, upload_scope(), [body(b"--" + BOUNDARY.encode() + b"\nnonsense")])
    assert ((conn.status, conn.body), calls) == (MALFORMED, [])


# --- client-chosen names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "received"),
    [
        ("../../etc/passwd", "../../etc/passwd"),
        ("a%0D%0AX-Injected: yes.txt", "a\r\nX-Injected: yes.txt"),
    ],
)
async def test_filenames_reach_the_handler_verbatim_and_never_inject_headers(
    sent: str, received: str
) -> None:
    app = make_app()
    seen: list[str] = []

    @attach(app)
    async def upload(self: App, doc: dict[str, Any]) -> tuple[int, str, list[tuple[str, str]]]:
        seen.append(doc["filename"])
        return 200, "ok", [("Content-Disposition", f'attachment; filename="{doc["filename"]}"')]

    conn = await run_app(app, upload_scope(), [body(multipart(file_part("doc", sent, b"x")))])
    assert seen == [received]
    assert conn.status == 200
    names = [name.lower() for name, _ in conn.start["headers"]]
    assert b"x-injected" not in names
    assert all(b"\r" not in v and b"\n" not in v for _, v in conn.start["headers"])


async def test_rfc2231_name_parameters_are_ignored() -> None:
    """PYSEC-2026-3041: ``name*=`` cannot smuggle a different field name."""
    app = make_app()

    @attach(app)
    async def upload(self: App, **form: Any) -> str:
        return repr(sorted(form))

    part = b"Content-Disposition: form-data; name=\"safe\"; name*=UTF-8''admin\r\n\r\nv"
    conn = await run_app(app, upload_scope(), [body(multipart(part))])
    assert conn.body == b"['safe']"


# --- memory: many slow consumers ---------------------------------------------------------------


async def test_concurrent_large_uploads_to_handlers_that_do_not_read_stay_bounded() -> None:
    """20 uploads of ~16 MiB each, held by handlers that never read: memory stays bounded."""
    app = make_app()
    count, chunks = 20, 16 * MiB // len(CHUNK) - 1
    started, release = anyio.Event(), anyio.Event()
    running: list[int] = []

    @attach(app)
    async def upload(self: App, big: dict[str, Any]) -> str:
        running.append(1)
        if len(running) == count:
            started.set()
        await release.wait()
        return "not read"

    uploads = [
        Upload(itertools.chain([file_head("big", "b")], fresh(chunks), [tail()]))
        for _ in range(count)
    ]
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for one in uploads:
                    tg.start_soon(one.run, app, upload_scope())
                await started.wait()
                await anyio.wait_all_tasks_blocked()
                held = [one.sent for one in uploads]
                peak = tracemalloc.get_traced_memory()[1] - baseline
                release.set()
    finally:
        tracemalloc.stop()
    assert max(held) == len(file_head("big", "b"))  # binding read the headers, then nothing
    assert peak < 40 * MiB, f"peak {peak / MiB:.1f} MiB"
    assert [(one.status, one.body) for one in uploads] == [(200, b"not read")] * count


async def test_one_byte_messages_keep_the_loop_responsive() -> None:
    """A 64 KiB upload sent one byte per ``receive()``; a GET meanwhile is answered."""
    app = make_app()

    @attach(app)
    async def upload(self: App, doc: dict[str, Any]) -> str:
        return str(len(await read_all(doc["content"])))

    @attach(app)
    async def index(self: App) -> str:
        return "still here"

    data = multipart(file_part("doc", "d", b"z" * 65536))
    client = Upload([data[i : i + 1] for i in range(len(data))])
    answered_at: list[int] = []  # how many bytes of the body the app had read by then

    async def get_while_attacked() -> None:
        await client.reached(len(data) // 2).wait()
        conn = await run_app(app, http_scope("/"))
        assert conn.body == b"still here"
        answered_at.append(client.index)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(get_while_attacked)
            await client.run(app, upload_scope(), deadline=20)
    assert (client.status, client.body) == (200, b"65536")
    assert answered_at[0] < len(data) // 2 + 1000  # answered within 1,000 of 32 K more receives
