"""MicroPie 0.32's own examples, run unchanged under micropie: ``nox -s compat``.

Downloads the MicroPie 0.32 sdist from PyPI (hash-pinned), copies each self-contained example
folder to a temporary directory, serves it with ``python -m micropie MODULE:app --backend
asyncio --port 0`` and checks its answers over real HTTP and WebSocket connections. Prints a
table of the results (docs/migration.md lists them) and exits 1 if an example failed.

Needs the network (PyPI) and, in the running environment, micropie with its ``all`` extra,
httpx, websockets, pydantic and aiofiles (the examples' own dependencies).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from websockets.sync.client import connect

VERSION = "0.32"
SDIST = f"micropie-{VERSION}.tar.gz"
SDIST_SHA256 = "e49f00611c8894dcbc9f29668f18ed76f3ebce444a8bcbb8939dc53299b04bb7"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
RUNNING_ON = re.compile(r"Running on http://([\d.]+):(\d+)")


class Server:
    """``python -m micropie TARGET`` in ``folder``, its output collected line by line."""

    def __init__(self, folder: Path, target: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "micropie", target, "--port", "0", "--backend", "asyncio"],
            cwd=folder,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        url = self.wait_for(RUNNING_ON, START_TIMEOUT)
        self.url = f"http://{url.group(1)}:{url.group(2)}"

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.lines.append("")  # the end
            self.changed.notify_all()

    @property
    def output(self) -> str:
        with self.changed:
            return "".join(self.lines)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 5.0) -> re.Match[str]:
        """The first match of ``pattern`` in the output, waiting at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = pattern.search("".join(self.lines))
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.lines and self.lines[-1] == ""):
                    raise AssertionError(f"{pattern.pattern!r} not in the server's output")
                self.changed.wait(remaining)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return -9


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def equal(actual: object, expected: object, what: str) -> None:
    expect(actual == expected, f"{what}: {actual!r}, expected {expected!r}")


# --- the checks, one per example -------------------------------------------------------------


def hello_world(server: Server, folder: Path) -> str:
    with httpx.Client(base_url=server.url) as client:
        equal(client.get("/").text, "Hello ASGI World!", "GET /")
        equal(client.get("/greet/Alice/Smith").text, "Hello Alice Smith", "GET /greet/Alice/Smith")
        equal(client.get("/greet?first_name=Bob").text, "Hello Bob", "GET /greet?first_name=Bob")
    return "index, path and query arguments"


def json_api(server: Server, folder: Path) -> str:
    with httpx.Client(base_url=server.url) as client:
        person = {"id": 1, "name": "Ann", "age": 30}
        equal(client.post("/", json=person).json(), person, "POST / (JSON bound to arguments)")
        equal(client.get("/echo").json(), {"input": False, "extra": False}, "GET /echo")
        echo = client.post("/echo", json={"x": [1, 2]}).json()
        equal(echo, {"input": {"x": [1, 2]}, "extra": True}, "POST /echo")
        example = client.get("/example")
        equal(
            (example.json(), example.headers["content-type"]),
            (["a", "b"], "application/json"),
            "GET /example",
        )
        equal(client.get("/html").text, "<b>Hello world</b>", "GET /html")
    return "JSON bodies bound to arguments, dict/list answers"


def headers(server: Server, folder: Path) -> str:
    response = httpx.get(server.url)
    equal(response.text, "<b>hello world</b>", "body")
    equal(response.headers["content-type"], "text/html", "Content-Type")
    equal(response.headers["x-frame-options"], "DENY", "X-Frame-Options")
    equal(response.headers["content-security-policy"], "default-src 'self'", "CSP")
    return "a plain def returning (status, body, headers)"


def websockets(server: Server, folder: Path) -> str:
    equal(
        httpx.get(f"{server.url}/chat").text,
        "Welcome to MicroPie, this is an HTTP GET route!",
        "GET /chat",
    )
    ws_url = server.url.replace("http://", "ws://")
    with connect(f"{ws_url}/chat/lobby?user=ann") as ws:
        ws.send("hi")
        equal(ws.recv(timeout=5), "ann in lobby: hi", "ws /chat/lobby?user=ann")
        ws.send("again")
        equal(ws.recv(timeout=5), "ann in lobby: again", "second message")
    with connect(f"{ws_url}/chat") as ws:
        ws.send("hi")
        equal(ws.recv(timeout=5), "anonymous in default: hi", "ws /chat")
    return "HTTP and ws_ handler on one name, path and query arguments"


def middleware(server: Server, folder: Path) -> str:
    equal(httpx.get(server.url).text, "Hello, World!", "GET /")
    server.wait_for(
        re.compile(r"Hook before request\n(.*\n)?Hello, World!\n(.*\n)?Hook after request")
    )
    return "before_request and after_request hooks run around the handler"


def sessions(server: Server, folder: Path) -> str:
    first = httpx.get(server.url)
    equal(first.text, "You have visited 1 times.", "first visit")
    cookie = first.headers["set-cookie"]
    expect(cookie.endswith("; Path=/; SameSite=Lax; HttpOnly; Secure;"), f"cookie {cookie!r}")
    session_id = cookie.split(";", 1)[0]
    # The cookie is Secure; a plain-http client sends it back by hand (a browser would not).
    second = httpx.get(server.url, headers={"cookie": session_id})
    equal(second.text, "You have visited 2 times.", "second visit with the cookie")
    return "in-memory sessions, MicroPie's cookie byte for byte"


def explicit_routing(server: Server, folder: Path) -> str:
    with httpx.Client(base_url=server.url) as client:
        equal(
            client.get("/api/users/bob/records/5").json(),
            {"user": "bob", "record": 5},
            "typed route",
        )
        created = client.post("/api/users/bob/records", json={"record_id": 7}).json()
        equal(created, {"user": "bob", "record": 7, "created": True}, "POST route")
        details = client.get("/api/users/bob/records/5/details/subdetails").json()
        equal(details["subdetails"], "more detailed info", "nested route")
        implicit = client.get("/records/bob/9").json()
        equal(implicit, {"user": "bob", "record": 9, "implicit": True}, "implicit route")
        equal(client.get("/_private").status_code, 404, "private handler")
    return "the example's own routing middleware (request._route_handler)"


def pydantic(server: Server, folder: Path) -> str:
    with httpx.Client(base_url=server.url) as client:
        created = client.post(
            "/todos", json={"title": "Write docs", "priority": 2, "tags": ["docs"]}
        )
        equal(created.status_code, 201, "POST /todos status")
        todo = {"title": "Write docs", "priority": 2, "tags": ["docs"], "id": 1, "completed": False}
        equal(created.json(), todo, "POST /todos body")
        equal(client.get("/todos").json(), {"todos": [todo]}, "GET /todos")
        equal(client.get("/todos/1").json(), todo, "GET /todos/1")
        equal(client.get("/todos/99").status_code, 404, "GET /todos/99")
        invalid = client.post("/todos", json={"title": "", "unknown": 1})
        equal(invalid.status_code, 422, "invalid todo")
    return "pydantic validation, 201/404/422 answers"


def streaming(server: Server, folder: Path) -> str:
    equal(httpx.get(server.url).text, "Hello from index!", "GET /")
    chunks = []
    started = time.monotonic()
    with httpx.stream("GET", f"{server.url}/slow_stream", timeout=15) as response:
        for chunk in response.iter_text():
            chunks.append((chunk, time.monotonic() - started))
    equal("".join(text for text, _ in chunks), "".join(f"Chunk {i} " for i in range(1, 6)), "body")
    expect(chunks[0][1] < 1.0, f"first chunk after {chunks[0][1]:.1f} s: not streamed")
    return "an async generator streamed chunk by chunk (asyncio.sleep)"


def server_sent_events(server: Server, folder: Path) -> str:
    expect("EventSource('/events')" in httpx.get(server.url).text, "GET / has the page")
    events = []
    with httpx.stream("GET", f"{server.url}/events", timeout=10) as response:
        equal(response.headers["content-type"], "text/event-stream", "Content-Type")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line)
            if len(events) == 2:
                break
    expect(
        all(re.fullmatch(r"data: Random number: \d+", event) for event in events),
        f"events {events!r}",
    )
    # Leaving cancels the generator: its `except asyncio.CancelledError` runs.
    server.wait_for(re.compile("Client disconnected"))
    return "an endless event stream; a client that leaves cancels it"


def file_uploads(server: Server, folder: Path) -> str:
    expect('enctype="multipart/form-data"' in httpx.get(server.url).text, "GET / has the form")
    content = os.urandom(200_000)
    response = httpx.post(f"{server.url}/upload", files={"file": ("photo.bin", content)})
    equal((response.status_code, response.text), (200, "Uploaded photo.bin"), "POST /upload")
    equal((folder / "uploads" / "photo.bin").read_bytes(), content, "the saved file")
    server.wait_for(re.compile(r"Chunk size: \d+ bytes"))
    return "a streamed upload written with aiofiles"


def static_content(server: Server, folder: Path) -> str:
    logo = httpx.get(f"{server.url}/static/logo.png")
    equal(logo.status_code, 200, "GET /static/logo.png")
    equal(logo.headers["content-type"], "image/png", "Content-Type")
    equal(logo.content, (folder / "static" / "logo.png").read_bytes(), "the file's bytes")
    missing = httpx.get(f"{server.url}/static/missing.png")
    equal((missing.status_code, missing.text), (404, "Not Found"), "a missing file")
    return "files streamed with aiofiles"


@dataclass(frozen=True)
class Example:
    name: str
    target: str  # MODULE:ATTRIBUTE inside examples/<folder>
    check: Callable[[Server, Path], str]

    @property
    def folder(self) -> str:
        return self.name.split("/")[0]


EXAMPLES = [
    Example("hello_world", "app:app", hello_world),
    Example("json_api", "app:app", json_api),
    Example("headers", "app:app", headers),
    Example("websockets", "app:app", websockets),
    Example("middleware", "basic:app", middleware),
    Example("sessions", "in_memory:app", sessions),
    Example("explicit_routing", "app:app", explicit_routing),
    Example("pydantic", "app:app", pydantic),
    Example("streaming", "text:app", streaming),
    Example("server_sent_events", "app:app", server_sent_events),
    Example("file_uploads", "app:app", file_uploads),
    Example("static_content", "basic:app", static_content),
]


def download(directory: Path) -> Path:
    """MicroPie 0.32's sdist, hash-checked, extracted into ``directory``: its examples folder."""
    requirement = directory / "requirement.txt"
    requirement.write_text(f"micropie=={VERSION} --hash=sha256:{SDIST_SHA256}\n")
    subprocess.run(
        [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            "--require-hashes", "-r", str(requirement), "-d", str(directory),
            "--disable-pip-version-check", "--quiet",
        ],
        check=True,
        timeout=300,
    )  # fmt: skip
    with tarfile.open(directory / SDIST) as sdist:
        members = [
            m for m in sdist.getmembers() if m.name.startswith(f"micropie-{VERSION}/examples/")
        ]
        sdist.extractall(directory, members=members, filter="data")
    return directory / f"micropie-{VERSION}" / "examples"


def run(example: Example, examples: Path, work: Path) -> tuple[bool, str]:
    folder = work / example.folder
    shutil.copytree(examples / example.folder, folder)
    server: Server | None = None
    try:
        server = Server(folder, example.target)
        what = example.check(server, folder)
        status = server.stop()
        if status != 0:
            return False, f"exit status {status} after SIGTERM"
        return True, what
    except Exception as error:
        detail = f"{type(error).__name__}: {error}"
        if server is not None:
            server.stop()
            print(f"--- {example.name}: server output\n{server.output}", file=sys.stderr)
        return False, detail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("names", nargs="*", help="only these examples (default: all)")
    args = parser.parse_args()
    chosen = [e for e in EXAMPLES if not args.names or e.name in args.names]
    with tempfile.TemporaryDirectory(prefix="micropie-032-") as temporary:
        examples = download(Path(temporary))
        results = [(e, *run(e, examples, Path(temporary) / "run")) for e in chosen]
    width = max(len(e.name) for e, _, _ in results)
    print(f"\nMicroPie {VERSION} examples under micropie (asyncio, python -m micropie):\n")
    print(f"| {'example':<{width}} | result | what was checked |")
    print(f"|{'-' * (width + 2)}|--------|------------------|")
    for example, passed, detail in results:
        print(f"| {example.name:<{width}} | {'pass' if passed else 'FAIL':<6} | {detail} |")
    failed = sum(not passed for _, passed, _ in results)
    print(f"\n{len(results) - failed} of {len(results)} examples pass unchanged.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
