"""JSON bodies: ``max_json_size`` bounds them (413, like every other limit), below
``max_body_size``; large documents are parsed with the garbage collector paused and resumed.

The limit gets the triplet: at the limit (accepted), one over (413: before reading when
``Content-Length`` says so, while reading when it does not), and ``None`` (no limit).
"""

from __future__ import annotations

import gc

import anyio
import pytest

from micropie import App
from micropie.http import bodies
from tests.support.drive import post_in_chunks

pytestmark = pytest.mark.anyio

JSON = (b"content-type", b"application/json")
FORM = (b"content-type", b"application/x-www-form-urlencoded")


class Echo(App):
    async def echo(self) -> str:
        """How many items the JSON document has, or how long form field ``a`` is."""
        if self.request.body_params:
            return f"a: {len(self.request.body_params['a'][0])}"
        return f"items: {len(self.request.json('items'))}"


def document(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes: ``{"items":[0,0,...]}`` padded with spaces."""
    head, tail = b'{"items":[', b"]}"
    count = (size - len(head) - len(tail) + 1) // 2
    core = head + b",".join([b"0"] * count) + tail
    assert len(core) <= size
    return core + b" " * (size - len(core))


async def post(
    app: App, body: bytes, *, content_type: tuple[bytes, bytes] = JSON, length: bool = True
) -> tuple[int, bytes, int]:
    """Send ``body`` in messages of 64 KiB; the status, the answer and how many messages the
    app took (a limit crossed stops the reading)."""
    headers = [content_type]
    if length:
        headers.append((b"content-length", str(len(body)).encode()))
    with anyio.fail_after(20):
        return await post_in_chunks(app, "/echo", body, headers, chunk_size=65536)


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "no-length"])
async def test_a_json_body_at_the_limit_is_parsed_and_one_byte_over_is_413(length: bool) -> None:
    app = Echo(max_json_size=200_000)
    status, answer, _ = await post(app, document(200_000), length=length)
    assert (status, answer) == (200, b"items: 99994")
    status, answer, taken = await post(app, document(200_001), length=length)
    assert (status, answer) == (413, b"413 Payload Too Large")
    assert taken == (0 if length else 4)  # refused before reading, or once the limit is crossed


async def test_the_default_json_limit_is_1_mib_and_none_lifts_it() -> None:
    status, _, _ = await post(Echo(), document(1024 * 1024))
    assert status == 200
    status, _, _ = await post(Echo(), document(1024 * 1024 + 1))
    assert status == 413
    status, answer, _ = await post(Echo(max_json_size=None), document(3 * 1024 * 1024))
    assert (status, answer) == (200, b"items: 1572858")


async def test_the_smaller_of_max_body_size_and_max_json_size_applies() -> None:
    app = Echo(max_body_size=100_000, max_json_size=None)
    assert (await post(app, document(100_000)))[0] == 200
    assert (await post(app, document(100_001)))[0] == 413


async def test_max_json_size_does_not_limit_other_bodies() -> None:
    form = b"a=" + b"x" * 300_000
    status, answer, _ = await post(Echo(max_json_size=1000), form, content_type=FORM)
    assert status == 200
    assert answer == b"a: 300000"


def test_max_json_size_must_be_positive_or_none() -> None:
    with pytest.raises(ValueError, match="max_json_size must be positive or None"):
        Echo(max_json_size=0)


async def test_large_documents_leave_the_garbage_collector_as_they_found_it() -> None:
    """Concurrent large parses pause the collector and the last one resumes it; one that was
    disabled by the application stays disabled."""
    nested = b'{"items":[' + b",".join([b"[[],{}]"] * 100_000) + b"]}"
    assert len(nested) > bodies.OFFLOAD_THRESHOLD
    app = Echo(max_json_size=None)
    was_enabled = gc.isenabled()
    try:
        for enabled in (True, False):
            (gc.enable if enabled else gc.disable)()
            answers: list[tuple[int, bytes, int]] = []

            async def one() -> None:
                answers.append(await post(app, nested))  # noqa: B023 - awaited in the loop

            async with anyio.create_task_group() as task_group:
                for _ in range(4):
                    task_group.start_soon(one)
            assert [answer[:2] for answer in answers] == [(200, b"items: 100000")] * 4
            assert gc.isenabled() is enabled
    finally:
        (gc.enable if was_enabled else gc.disable)()


async def test_frozen_objects_stay_frozen_and_the_young_generation_is_left_empty() -> None:
    """After a large document, the collector's youngest generation does not hold it (the next
    allocation, on the event loop, would walk every container of it), and what an application
    froze with ``gc.freeze()`` stays frozen: the collector never sees it."""
    nested = b'{"items":[' + b",".join([b"[]"] * 100_000) + b"]}"
    app = Echo(max_json_size=None)
    was_enabled = gc.isenabled()
    gc.enable()
    try:
        for freeze_first in (False, True):
            marker: list[object] = []
            if freeze_first:
                gc.freeze()
            status, answer, _ = await post(app, nested)
            assert (status, answer) == (200, b"items: 100000")
            young, _, _ = gc.get_count()
            assert young < gc.get_threshold()[0]
            seen_by_the_collector = any(item is marker for item in gc.get_objects())
            assert seen_by_the_collector is not freeze_first
    finally:
        gc.unfreeze()
        (gc.enable if was_enabled else gc.disable)()
