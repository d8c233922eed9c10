"""Cancellation users control: ``@shielded``, ``cancel_on_disconnect``, disconnect checks,
shields inside handlers, and deadlines (``request_timeout``, ``@time_limit``), in process.

Each test runs with the ASGI lifespan running (the sweeper gives long requests their watcher)
and without (each request watches for itself), on both backends. The end-to-end versions, on
hypercorn with a client that drops its TCP connection, are in ``test_cancellation_e2e.py``.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from micropie import App, HttpMiddleware, Request, shielded, time_limit
from tests.support.apps.cancellation import EARLY, LATE, NOTICED_WITHIN, PROMPTLY, Work
from tests.support.drive import Client, http_scope, lifespan

pytestmark = pytest.mark.anyio


class LeavingClient(Client):
    """``Client`` that also tells when its disconnect was read (``told``)."""

    def __init__(self) -> None:
        super().__init__()
        self.told = anyio.Event()

    async def receive(self) -> dict[str, Any]:
        message = await super().receive()
        self.told.set()
        return message


class Recorder(HttpMiddleware):
    def __init__(self, app: Work) -> None:
        self.app = app

    async def before_request(self, request: Request) -> None:
        return None

    async def after_request(self, request: Request, *args: Any) -> None:
        self.app.after_request.append(request.path)


@pytest.fixture(params=[True, False], ids=["lifespan", "no-lifespan"])
def with_lifespan(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


async def leave_then_release(app: Work, client: LeavingClient, path: str) -> None:
    """Call ``path``; once it runs, the client leaves; once that was read, release it."""
    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(app, http_scope(path), client.receive, client.send)
            await app.started.wait()
            client.leave()
            with anyio.fail_after(PROMPTLY):
                await client.told.wait()
            app.release.set()


async def test_a_plain_handler_is_still_cancelled_when_its_client_leaves(
    with_lifespan: bool,
) -> None:
    app = Work()
    client = LeavingClient()
    async with lifespan(app, running=with_lifespan):
        await leave_then_release(app, client, "/plain")
    assert app.cancelled.is_set()
    assert app.done == []
    assert client.sent == []


async def test_a_shielded_handler_finishes_after_its_client_left(with_lifespan: bool) -> None:
    app = Work()
    app.middlewares.append(Recorder(app))
    client = LeavingClient()
    async with lifespan(app, running=with_lifespan):
        await leave_then_release(app, client, "/kept")
    assert not app.cancelled.is_set()
    assert app.done == ["kept"]  # its side effect happened
    assert app.after_request == ["/kept"]  # middleware ran as for any request
    assert client.sent == []  # its result was discarded: nobody to send it to


async def test_no_cancel_on_disconnect_makes_every_handler_finish(with_lifespan: bool) -> None:
    app = Work(cancel_on_disconnect=False)
    client = LeavingClient()
    async with lifespan(app, running=with_lifespan):
        await leave_then_release(app, client, "/plain")
    assert not app.cancelled.is_set()
    assert app.done == ["plain"]
    assert client.sent == []


async def test_a_shielded_handler_saves_the_session_the_client_had(with_lifespan: bool) -> None:
    app = Work()
    async with lifespan(app, running=with_lifespan):
        login = Client()
        with anyio.fail_after(5):
            await app(http_scope("/login"), login.receive, login.send)
        cookie = dict(login.sent[0]["headers"])[b"Set-Cookie"].split(b";")[0]
        session_id = cookie.split(b"=")[1].decode()
        scope = http_scope("/kept_session")
        scope["headers"] = [(b"cookie", cookie)]
        client = LeavingClient()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(app, scope, client.receive, client.send)
                await app.started.wait()
                client.leave()
                await client.told.wait()
                app.release.set()
    assert await app.session_backend.load(session_id) == {"user": "alice", "paid": "yes"}
    assert client.sent == []


async def test_a_shielded_handler_without_a_session_makes_none(with_lifespan: bool) -> None:
    """A session the client would never get a cookie for is not saved."""
    app = Work()
    saved: list[str] = []

    async def save(session_id: str, data: dict[str, Any], seconds: int) -> None:
        saved.append(session_id)

    app.session_backend.save = save  # type: ignore[method-assign]
    client = LeavingClient()
    async with lifespan(app, running=with_lifespan):
        await leave_then_release(app, client, "/kept_session")
    assert app.done == ["kept_session"]
    assert saved == []


async def test_server_cancellation_still_reaches_a_shielded_handler(with_lifespan: bool) -> None:
    """Shutdown cancels the ASGI call from outside: a shielded handler ends with it."""
    app = Work()
    client = LeavingClient()
    async with lifespan(app, running=with_lifespan):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(app, http_scope("/kept"), client.receive, client.send)
                await app.started.wait()
                task_group.cancel_scope.cancel()
    assert app.cancelled.is_set()
    assert app.done == []


class Polling(App):
    def __init__(self) -> None:
        super().__init__()
        self.polled_false = anyio.Event()
        self.noticed = anyio.Event()
        self.noticed_at = 0.0
        self.answers: list[bool] = []

    @shielded
    async def poll(self) -> str:
        with anyio.fail_after(5):
            while not await self.request.is_disconnected():
                self.answers.append(False)
                if len(self.answers) == 3:
                    self.polled_false.set()
                await anyio.sleep(0.01)  # the work between two checks
        self.noticed_at = anyio.current_time()
        self.noticed.set()
        return "left"

    @shielded
    async def wait(self) -> str:
        self.polled_false.set()
        await self.request.wait_for_disconnect()
        self.noticed_at = anyio.current_time()
        self.noticed.set()
        return "left"


@pytest.mark.parametrize("path", ["/poll", "/wait"])
async def test_a_handler_learns_within_100_ms_that_its_client_left(
    with_lifespan: bool, path: str
) -> None:
    app = Polling()
    client = Client()
    async with lifespan(app, running=with_lifespan):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(app, http_scope(path), client.receive, client.send)
                await app.polled_false.wait()
                left_at = anyio.current_time()
                client.leave()
                await app.noticed.wait()
    assert app.noticed_at - left_at < NOTICED_WITHIN + LATE
    assert client.sent == []
    assert client.pending_receives == 0


async def test_disconnect_checks_outside_a_request_say_why_they_cannot_work() -> None:
    with pytest.raises(RuntimeError, match="only in an HTTP request"):
        await Request(http_scope("/")).is_disconnected()


class Shields(App):
    def __init__(self) -> None:
        super().__init__()
        self.writing = anyio.Event()
        self.release = anyio.Event()
        self.written = anyio.Event()
        self.cancelled = anyio.Event()
        self.child_started = anyio.Event()
        self.child_cancelled = anyio.Event()
        self.after_block = False

    async def write(self) -> str:
        try:
            with anyio.CancelScope(shield=True):
                self.writing.set()
                await self.release.wait()  # the write in progress
                self.written.set()
            await anyio.lowlevel.checkpoint()
            self.after_block = True
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise
        return "written"

    async def group(self) -> str:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(self._child)
            await self.child_started.wait()
            self.writing.set()
            await anyio.sleep_forever()
        return "unreachable"  # pragma: no cover

    async def _child(self) -> None:
        self.child_started.set()
        try:
            await anyio.sleep_forever()
        finally:
            self.child_cancelled.set()


async def test_a_shield_in_a_plain_handler_completes_its_write(with_lifespan: bool) -> None:
    app = Shields()
    client = LeavingClient()
    async with lifespan(app, running=with_lifespan):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(app, http_scope("/write"), client.receive, client.send)
                await app.writing.wait()
                client.leave()
                await client.told.wait()  # the request is cancelled now, the shield holds
                app.release.set()
                await app.cancelled.wait()
    assert app.written.is_set()  # the write finished
    assert not app.after_block  # cancelled at the first checkpoint after the shield
    assert client.sent == []


async def test_a_task_group_in_a_handler_is_cancelled_with_it(with_lifespan: bool) -> None:
    app = Shields()
    client = Client()
    async with lifespan(app, running=with_lifespan):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(app, http_scope("/group"), client.receive, client.send)
                await app.writing.wait()
                client.leave()
                with anyio.fail_after(PROMPTLY):
                    await app.child_cancelled.wait()
    assert client.sent == []


class Slow(App):
    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.started_at = 0.0
        self.cancelled = anyio.Event()
        self.child_cancelled = anyio.Event()

    async def _forever(self) -> str:
        self.started_at = anyio.current_time()
        try:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(self._child)
                await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise
        return "unreachable"  # pragma: no cover

    async def _child(self) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            self.child_cancelled.set()

    async def forever(self) -> str:
        return await self._forever()

    @time_limit(0.3)
    async def limited(self) -> str:
        return await self._forever()

    @time_limit(None)
    async def unlimited(self) -> str:
        self.started_at = anyio.current_time()
        await anyio.sleep(0.4)  # longer than the app's request_timeout
        return "finished"

    @time_limit(0.3)
    async def shield_past_limit(self) -> str:
        self.started_at = anyio.current_time()
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.5)  # a write that outlasts the limit
        await anyio.sleep_forever()
        return "unreachable"  # pragma: no cover

    @time_limit(0.3)
    async def stream(self) -> Any:
        async def chunks() -> Any:
            while True:
                yield b"tick\n"
                await anyio.sleep(0.05)

        self.started_at = anyio.current_time()
        return chunks()


async def answer_with_time(app: App, path: str) -> tuple[Client, float]:
    client = Client()
    with anyio.fail_after(5):
        await app(http_scope(path), client.receive, client.send)
    return client, anyio.current_time()


@pytest.mark.parametrize(
    ("settings", "path", "limit"),
    [
        ({"request_timeout": 0.3}, "/forever", 0.3),
        ({}, "/limited", 0.3),
        ({"request_timeout": 5.0}, "/limited", 0.3),
    ],
    ids=["request_timeout", "time_limit", "time_limit-overrides-app"],
)
async def test_a_handler_past_its_deadline_gets_503_on_time(
    with_lifespan: bool,
    settings: dict[str, Any],
    path: str,
    limit: float,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Slow(**settings)
    async with lifespan(app, running=with_lifespan):
        baseline = len(anyio.get_running_tasks())
        with caplog.at_level(logging.WARNING, logger="micropie"):
            client, answered_at = await answer_with_time(app, path)
        assert len(anyio.get_running_tasks()) == baseline  # nothing left running
    assert client.sent[0]["status"] == 503
    assert client.sent[1]["body"] == b"503 Service Unavailable: Request timed out"
    assert limit - EARLY <= answered_at - app.started_at < limit + LATE
    assert app.cancelled.is_set()
    assert app.child_cancelled.is_set()
    assert any(path in record.getMessage() for record in caplog.records)


async def test_time_limit_none_lifts_the_apps_request_timeout(with_lifespan: bool) -> None:
    app = Slow(request_timeout=0.2)
    async with lifespan(app, running=with_lifespan):
        client, _ = await answer_with_time(app, "/unlimited")
    assert client.sent[0]["status"] == 200
    assert client.sent[1]["body"] == b"finished"


async def test_a_deadline_honours_shields(with_lifespan: bool) -> None:
    app = Slow()
    async with lifespan(app, running=with_lifespan):
        client, answered_at = await answer_with_time(app, "/shield_past_limit")
    assert client.sent[0]["status"] == 503
    assert 0.5 - EARLY <= answered_at - app.started_at < 0.5 + LATE  # right after the shield


async def test_a_stream_past_its_deadline_is_cut_off(with_lifespan: bool) -> None:
    app = Slow()
    async with lifespan(app, running=with_lifespan):
        client, answered_at = await answer_with_time(app, "/stream")
    assert client.sent[0]["status"] == 200  # it had started: no 503 any more
    assert client.sent[1]["body"] == b"tick\n"
    assert not any(
        message["type"] == "http.response.body" and not message.get("more_body", False)
        for message in client.sent
    )  # never finished: the client sees a cut-off response
    assert 0.3 - EARLY <= answered_at - app.started_at < 0.3 + LATE


def test_time_limit_rejects_a_limit_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        time_limit(0)
    with pytest.raises(ValueError, match="request_timeout"):
        App(request_timeout=-1)


async def test_a_stream_from_a_shielded_handler_still_stops_when_its_client_leaves(
    with_lifespan: bool,
) -> None:
    """There is no one to send to: shielded or not, the stream ends and its generator closes."""
    sending = anyio.Event()
    closed = anyio.Event()

    class Feed(App):
        @shielded
        async def feed(self) -> Any:
            async def ticks() -> Any:
                try:
                    while True:
                        yield b"tick\n"
                        sending.set()
                        await anyio.sleep(0.01)
                finally:
                    closed.set()

            return ticks()

    app = Feed()
    client = Client()
    async with lifespan(app, running=with_lifespan):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(app, http_scope("/feed"), client.receive, client.send)
                await sending.wait()
                client.leave()
                with anyio.fail_after(PROMPTLY):
                    await closed.wait()
    assert client.sent[0]["status"] == 200
    assert client.pending_receives == 0
