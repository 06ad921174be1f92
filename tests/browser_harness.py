"""What the browser tests share: Chromium, a server, a proxy that can fail, a publisher.

- ``browser``: Debian's Chromium driven by Playwright (never a downloaded browser);
- ``server``: ``eventlog serve`` on a fresh SQLite file with a short ``retry:``;
- ``proxy``: a TCP proxy in front of the server that can cut connections, refuse new ones, or
  answer every request with a 502, as a load balancer does while the app deploys;
- ``Publisher``: numbered events published in a thread while the test cuts things.

The test modules import the fixtures by name.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from conftest import Server, unavailable
from helpers import CuttableProxy, publish, wait_until

from eventlog.database import make_engine
from eventlog.migrate import upgrade

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path(os.environ.get("EVENTLOG_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium keeps trying to reach Google's services on a closed network.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RETRY_MS = 200  # the server's `retry:`; short, so each reconnection costs a fifth of a second
WAIT_MS = 10_000  # upper bound for anything the browser should do well within a second


class Publisher:
    """Publishes numbered events in a thread, one after another, until stopped.

    Event ``n`` gets type ``types[n % len(types)]`` (None: the default type).
    """

    def __init__(
        self,
        base_url: str,
        stream: str,
        first: int,
        limit: int = 500,
        types: Sequence[str | None] = (None,),
    ) -> None:
        self._base_url = base_url
        self._stream = stream
        self._types = types
        self._first = first
        self._limit = limit  # a bound, in case the test never gets to stop it
        self.published: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def stop(self) -> list[dict[str, Any]]:
        """Stop, re-raise anything that went wrong, and return the stored events in order."""
        self._stop.set()
        self._thread.join(timeout=15)
        assert not self._thread.is_alive(), "the publisher did not stop"
        if self._error is not None:
            raise self._error
        return self.published

    def _run(self) -> None:
        try:
            for n in range(self._first, self._first + self._limit):
                if self._stop.is_set():
                    return
                type = self._types[n % len(self._types)]
                self.published.append(publish(self._base_url, self._stream, {"n": n}, type=type))
                # A short pause so that cuts fall between, and during, publishes.
                self._stop.wait(0.01)
        except BaseException as error:  # re-raised in the test's thread by stop()
            self._error = error


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium driven by Playwright (never a downloaded browser)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed")
    if not CHROMIUM.is_file():
        unavailable(f"Chromium is not installed at {CHROMIUM} (set EVENTLOG_TEST_CHROMIUM)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def server(start_server: Callable[..., Server], tmp_path: Path) -> Server:
    """``eventlog serve`` on a fresh migrated SQLite file, with a short reconnection delay."""
    url = f"sqlite:///{tmp_path / 'eventlog.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    # A short heartbeat makes the server write to dead connections soon, so it notices them
    # (and a stopping server need not wait for them); the browser must ignore the comments.
    return start_server(url, RETRY_MS=RETRY_MS, HEARTBEAT_SECONDS=0.5)


@pytest.fixture
def proxy(server: Server) -> Iterator[CuttableProxy]:
    """A cuttable proxy in front of the server; the page's origin."""
    proxy = CuttableProxy(server.port)
    yield proxy
    proxy.close()


# --- waiting ---------------------------------------------------------------------------------

def wait_for_page(page: Page, predicate: str, what: str, arg: Any = None) -> None:
    """Wait (bounded) until a JavaScript predicate holds in the page."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(predicate, arg=arg, polling=50, timeout=WAIT_MS)
    except PlaywrightTimeout:
        raise AssertionError(
            f"timed out waiting for {what}; the page received "
            f"{page.evaluate('window.received ?? null')}"
        ) from None


def wait_for_subscribers(server: Server, count: int) -> None:
    """Wait until the server's process holds exactly ``count`` live subscribers."""

    def subscribers() -> int:
        result: int = httpx.get(f"{server.url}/healthz", timeout=5).json()["subscribers"]
        return result

    wait_until(lambda: subscribers() == count, timeout=WAIT_MS / 1000)

