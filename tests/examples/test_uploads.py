"""The upload, streaming, static-file and pastebin examples work as their docstrings say."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from examples.file_uploads.app import UploadApp, safe_name
from examples.pastebin.app import PastebinApp
from examples.static_content.app import StaticApp
from examples.streaming.app import StreamingApp, parse_range
from micropie import MultipartFileError
from tests.http.test_multipart import (
    BOUNDARY,
    CHUNK,
    Upload,
    field,
    file_head,
    file_part,
    in_messages,
    multipart,
    repeated,
    tail,
    upload_scope,
)
from tests.support.asgi import body, http_scope, run_app
from tests.support.servers import running_server

pytestmark = pytest.mark.anyio


def test_every_example_module_builds_its_app() -> None:
    import examples.file_uploads.app
    import examples.pastebin.app
    import examples.static_content.app
    import examples.streaming.app
    from micropie import App

    for module in (
        examples.file_uploads.app,
        examples.pastebin.app,
        examples.static_content.app,
        examples.streaming.app,
    ):
        assert isinstance(module.app, App)


# --- file_uploads --------------------------------------------------------------------------------


async def test_upload_is_streamed_to_disk(tmp_path: Path) -> None:
    app = UploadApp(tmp_path / "up")
    data = bytes(range(256)) * 4096  # 1 MiB
    conn = await run_app(
        app, upload_scope(), in_messages(multipart(file_part("file", "data.bin", data)), 65536)
    )
    assert (conn.status, conn.body) == (200, b"Uploaded data.bin (1048576 bytes)")
    assert (tmp_path / "up" / "data.bin").read_bytes() == data
    assert leftovers(tmp_path / "up") == ["data.bin"]


async def test_upload_file_names_cannot_leave_the_folder(tmp_path: Path) -> None:
    app = UploadApp(tmp_path / "up")
    body_ = multipart(file_part("file", "../../escape.txt", b"x"))
    conn = await run_app(app, upload_scope(), [body(body_)])
    assert conn.body == b"Uploaded escape.txt (1 bytes)"
    assert found(tmp_path, "escape.txt") == [Path("up/escape.txt")]
    for bad in ("..", ".hidden", "dir/", "a%0D%0Ab"):
        conn = await run_app(app, upload_scope(), [body(multipart(file_part("file", bad, b"x")))])
        assert (conn.status, conn.body) == (400, b"Bad file name"), bad


def leftovers(folder: Path) -> list[str]:
    """Files left in an upload folder (none when the handler never got to create it)."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def found(root: Path, name: str) -> list[Path]:
    """Every file called ``name`` anywhere under ``root``, relative to it."""
    return [p.relative_to(root) for p in root.rglob(name)]


def test_safe_name() -> None:
    assert safe_name("C:\\Users\\me\\photo.jpg") == "photo.jpg"
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("") is None


@pytest.mark.parametrize(
    ("settings", "messages", "status"),
    [
        ({}, [body(file_head("file", "cut.bin") + b"partial")], 400),
        ({"max_body_size": 300_000}, None, 413),
    ],
    ids=["truncated", "too-large"],
)
async def test_a_failed_upload_leaves_no_file_behind(
    tmp_path: Path, settings: dict[str, Any], messages: Any, status: int
) -> None:
    app = UploadApp(tmp_path / "up", **settings)
    if messages is None:
        upload = Upload([file_head("file", "big.bin"), *repeated(CHUNK, 10), tail()])
        await upload.run(app, upload_scope())
        assert upload.status == status
    else:
        conn = await run_app(app, upload_scope(), messages)
        assert conn.status == status
    assert leftovers(tmp_path / "up") == []


async def test_a_client_leaving_mid_upload_leaves_no_file_behind(tmp_path: Path) -> None:
    app = UploadApp(tmp_path / "up")
    upload = Upload([file_head("file", "gone.bin"), *repeated(CHUNK, 50)], leave_after=10)
    await upload.run(app, upload_scope())
    assert upload.messages == []
    assert leftovers(tmp_path / "up") == []


async def test_upload_form_page() -> None:
    conn = await run_app(UploadApp(), http_scope("/"))
    assert b'enctype="multipart/form-data"' in conn.body


# --- streaming -----------------------------------------------------------------------------------


async def test_async_generator_is_streamed_chunk_by_chunk() -> None:
    conn = await run_app(StreamingApp(), http_scope("/slow_stream", query_string=b"delay=0"))
    chunks = [m["body"] for m in conn.sent if m["type"] == "http.response.body" and m["body"]]
    assert chunks == [f"Chunk {i} ".encode() for i in range(1, 6)]


@pytest.fixture
def media(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    path.write_bytes(bytes(range(256)) * 10)
    return path


async def test_media_is_served_whole_or_by_range(media: Path) -> None:
    app = StreamingApp(str(media))
    data = bytes(range(256)) * 10
    conn = await run_app(app, http_scope("/stream"))
    assert (conn.status, conn.body) == (200, data)
    assert conn.header_values(b"Content-Type") == [b"video/mp4"]
    assert conn.header_values(b"Content-Length") == [b"2560"]

    conn = await run_app(app, http_scope("/stream", headers=[(b"range", b"bytes=10-19")]))
    assert (conn.status, conn.body) == (206, data[10:20])
    assert conn.header_values(b"Content-Range") == [b"bytes 10-19/2560"]

    conn = await run_app(app, http_scope("/stream", headers=[(b"range", b"bytes=-5")]))
    assert (conn.status, conn.body) == (206, data[-5:])

    missing = await run_app(StreamingApp(str(media) + ".nope"), http_scope("/stream"))
    assert missing.status == 404


def test_parse_range() -> None:
    assert parse_range("bytes=0-", 10) == (0, 9)
    assert parse_range("bytes=5-100", 10) == (5, 9)
    assert parse_range("bytes=20-30", 10) is None
    assert parse_range("bytes=a-b", 10) is None
    assert parse_range("bytes=0-1,3-4", 10) is None
    assert parse_range(None, 10) is None


# --- static_content --------------------------------------------------------------------------


async def test_static_files_are_served_with_their_type() -> None:
    app = StaticApp()
    conn = await run_app(app, http_scope("/static/hello.txt"))
    assert (conn.status, conn.body) == (200, b"Hello from a static file.\n")
    assert conn.header_values(b"Content-Type") == [b"text/plain"]
    conn = await run_app(app, http_scope("/static/css/site.css"))
    assert conn.header_values(b"Content-Type") == [b"text/css"]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/static/../app.py", 403),
        ("/static/css/../../app.py", 403),
        ("/static" + "/.." * 40 + "/etc/passwd", 403),
        ("/static//etc/passwd", 404),
        ("/static/missing.txt", 404),
        ("/static/css", 404),
        ("/static/hello.txt/x", 404),
        ("/static/link", 403),
    ],
)
async def test_static_files_never_escape_the_folder(tmp_path: Path, path: str, status: int) -> None:
    folder = tmp_path / "static"
    (folder / "css").mkdir(parents=True)
    (folder / "hello.txt").write_text("hi")
    (tmp_path / "app.py").write_text("SECRET")
    (folder / "link").symlink_to(tmp_path / "app.py")
    conn = await run_app(StaticApp(folder), http_scope(path))
    assert conn.status == status
    assert b"SECRET" not in conn.body


# --- pastebin ------------------------------------------------------------------------------------

FORM = (b"content-type", b"application/x-www-form-urlencoded")


async def test_pastebin_round_trip_escapes_the_paste() -> None:
    app = PastebinApp()
    conn = await run_app(app, http_scope("/"))
    assert b'<textarea name="paste_content">' in conn.body

    posted = b"paste_content=%3Cscript%3Ealert(1)%3C%2Fscript%3E"
    conn = await run_app(app, http_scope("/", "POST", [FORM]), [body(posted)])
    assert conn.status == 302
    (location,) = conn.header_values(b"Location")
    assert re.fullmatch(rb"/paste/[0-9a-f]{32}", location)

    conn = await run_app(app, http_scope(location.decode()))
    assert conn.status == 200
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in conn.body
    assert b"<script>" not in conn.body


async def test_pastebin_accepts_multipart_and_rejects_empty_or_unknown() -> None:
    app = PastebinApp()
    conn = await run_app(app, upload_scope("/"), [body(multipart(field("paste_content", "hi")))])
    assert conn.status == 302
    conn = await run_app(app, http_scope("/", "POST", [FORM]), [body(b"")])
    assert (conn.status, conn.body) == (400, b"Nothing to paste")
    conn = await run_app(app, http_scope("/paste/nope"))
    assert (conn.status, conn.body) == (404, b"404: Paste Not Found")


# --- over a real server (hypercorn's asyncio and trio workers) --------------------------------


class RecordingUploadApp(UploadApp):
    """The example app, telling the test when a handler has finished."""

    def __init__(self, upload_dir: Path) -> None:
        super().__init__(upload_dir)
        self.handled = anyio.Event()
        self.failures: list[BaseException] = []

    async def upload(self, file: dict[str, Any]) -> tuple[int, str]:
        try:
            return await super().upload(file)
        finally:
            self.handled.set()

    async def _save(self, content: Any, path: anyio.Path) -> int:
        try:
            return await super()._save(content, path)
        except BaseException as error:
            self.failures.append(error)
            raise


async def test_srv_a_large_upload_is_saved_whole(tmp_path: Path) -> None:
    app = RecordingUploadApp(tmp_path / "up")
    data = bytes(range(256)) * (40 * 1024)  # 10 MiB

    async def chunks() -> Any:
        for start in range(0, len(data), 256 * 1024):
            yield data[start : start + 256 * 1024]

    with anyio.fail_after(20):
        async with running_server(app) as url, httpx.AsyncClient(base_url=url) as client:
            head = file_head("file", "big.bin")
            content_type = f"multipart/form-data; boundary={BOUNDARY}"

            async def body_() -> Any:
                yield head
                async for chunk in chunks():
                    yield chunk
                yield tail()

            response = await client.post(
                "/upload", content=body_(), headers={"content-type": content_type}
            )
    assert (response.status_code, response.text) == (200, "Uploaded big.bin (10485760 bytes)")
    assert (tmp_path / "up" / "big.bin").read_bytes() == data


async def test_srv_a_client_aborting_mid_upload_leaves_nothing_behind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The handler's reads fail, the partial file is removed, nothing is logged as an error."""
    app = RecordingUploadApp(tmp_path / "up")
    head = file_head("file", "cut.bin")
    request = (
        b"POST /upload HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=" + BOUNDARY.encode() + b"\r\n"
        b"Content-Length: 10485760\r\n\r\n" + head
    )
    with anyio.fail_after(20):
        async with running_server(app) as url:
            port = int(url.rsplit(":", 1)[1])
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                await stream.send(request)
                for _ in range(16):
                    await stream.send(CHUNK)
            await app.handled.wait()
    assert (tmp_path / "up").is_dir()  # the handler ran and was writing
    assert leftovers(tmp_path / "up") == []
    assert [type(f) for f in app.failures] == [MultipartFileError]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
