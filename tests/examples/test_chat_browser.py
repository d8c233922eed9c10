"""examples/chat in a real headless browser: two pages join a room, one sees the other's message.

Uses Debian's chromium through selenium and the system chromedriver (no browser download).
Both pages have their own browser, so their own session cookie and nickname; the app runs with
two hypercorn workers sharing a real redis-server, as in production.

Needs: ``apt-get install -y chromium chromium-driver redis-server`` and ``pip install selenium``.
A missing browser fails the test with that instruction; it is never skipped.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.support.redis_server import RedisServer, redis_server  # noqa: F401 - the fixture
from tests.support.servers import CliServer

INSTALL_HINT = (
    "the browser test needs Debian's chromium and its driver, and selenium: "
    "apt-get update && apt-get install -y chromium chromium-driver && pip install selenium"
)
#: Seconds a page may take to connect, or a message to appear.
WAIT = 10


def _executables() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail(INSTALL_HINT)
    return browser, driver


@contextmanager
def browser_page() -> Iterator[object]:
    """A headless chromium of its own (separate cookies), driven by the system chromedriver."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(INSTALL_HINT)
    binary, driver_path = _executables()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--no-proxy-server",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.set_page_load_timeout(WAIT)
        yield driver
    finally:
        driver.quit()


def join(driver: object, base: str, room: str, nick: str) -> None:
    """Open the room, choose a nickname, wait until the page is connected under it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base}/room/{room}")  # type: ignore[attr-defined]
    wait = WebDriverWait(driver, WAIT)  # type: ignore[arg-type]
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-nick"))
    driver.find_element(By.ID, "nick").send_keys(nick)  # type: ignore[attr-defined]
    driver.find_element(By.CSS_SELECTOR, "#nick-form button").click()  # type: ignore[attr-defined]
    wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "me"), nick))
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-nick") == nick)


def test_two_pages_chat_in_a_room(
    redis_server: RedisServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    _executables()  # fail fast, before starting anything
    monkeypatch.setenv("CHAT_REDIS_URL", redis_server.url)
    with CliServer.start("examples.chat.app:app", "--workers", "2", backend="trio") as server:
        try:
            server.wait_until_serving(count=2)
            with browser_page() as alice, browser_page() as bob:
                join(alice, server.url, "browsers", "alice")
                join(bob, server.url, "browsers", "bob")
                alice.find_element(By.ID, "text").send_keys("hello bob")  # type: ignore[attr-defined]
                alice.find_element(By.ID, "send").click()  # type: ignore[attr-defined]
                WebDriverWait(bob, WAIT).until(  # type: ignore[arg-type]
                    expected_conditions.text_to_be_present_in_element(
                        (By.ID, "log"), "alice: hello bob"
                    )
                )
                log = bob.find_element(By.ID, "log").text  # type: ignore[attr-defined]
                assert "alice: hello bob" in log
        finally:
            if server.process.poll() is None:
                server.stop(signal.SIGTERM)
