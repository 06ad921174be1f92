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
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from conftest import Server, unavailable
from helpers import publish, wait_until

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
POLL = 0.05  # how often the proxy's threads look at their stop flags, in seconds
IO_TIMEOUT = 10.0  # no proxy socket operation may block longer than this
FORWARD, REFUSE, BAD_GATEWAY = "forward", "refuse", "bad gateway"  # the proxy's modes
BAD_GATEWAY_ANSWER = (
    b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n"
    b"Connection: close\r\n\r\nBad Gateway"
)


# --- a proxy the test can cut -------------------------------------------------------------

@dataclass(frozen=True)
class ProxiedRequest:
    """The head of one HTTP request the browser sent through the proxy."""

    target: str  # path and query, as in the request line
    headers: dict[str, str]  # lower-cased names

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def last_event_id(self) -> str | None:
        return self.headers.get("last-event-id")


@dataclass
class _Link:
    """One proxied connection: its thread, its cut flag and the request it carried."""

    cut: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    request: ProxiedRequest | None = None


def _parse_head(head: bytes) -> ProxiedRequest:
    lines = head.decode("latin-1").split("\r\n")
    _method, target, _version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return ProxiedRequest(target, headers)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a dropped network does: unsent bytes are lost."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class CuttableProxy:
    """A TCP proxy on a free port in front of the server, whose connections the test can cut.

    Each accepted connection gets a connection to the server and a thread that copies bytes
    both ways. ``cut`` resets every open connection; with ``refuse=True`` new connections are
    reset right after they are accepted until ``resume``. ``bad_gateway`` cuts too, then
    answers each new request with a 502 until ``cut(refuse=True)`` or ``resume``. The proxy
    also records the head of the first request on each connection, so the test can see what
    the browser asked for.
    """

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(POLL)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._mode = FORWARD
        self._responders: list[threading.Thread] = []
        self._closed = threading.Event()
        self.refused = 0  # connections reset at once while refusing
        self.bad_gateways = 0  # requests answered with a 502
        self.requests: list[ProxiedRequest] = []
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="proxy-accept", daemon=True
        )
        self._acceptor.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self, *, refuse: bool = False) -> list[ProxiedRequest]:
        """Reset every open connection and wait until they are gone; return their requests.

        With ``refuse``, connections accepted from now on are reset too, until ``resume``.
        """
        return self._cut_all(REFUSE if refuse else None)

    def bad_gateway(self) -> list[ProxiedRequest]:
        """Cut every open connection, then answer each new request with a 502."""
        return self._cut_all(BAD_GATEWAY)

    def _cut_all(self, mode: str | None) -> list[ProxiedRequest]:
        with self._lock:
            # Under the lock with the acceptor: a connection is either in this list (and is
            # cut) or accepted after the mode is set (and gets the new mode).
            self._mode = mode or self._mode
            links, self._links = self._links, []
        for link in links:
            link.cut.set()
        for link in links:
            assert link.thread is not None
            link.thread.join(timeout=5)
            assert not link.thread.is_alive(), "a proxied connection did not close"
        return [link.request for link in links if link.request is not None]

    def resume(self) -> None:
        """Accept connections again."""
        with self._lock:
            self._mode = FORWARD

    def close(self) -> None:
        """Stop accepting, cut everything and join every thread."""
        self._closed.set()
        self._acceptor.join(timeout=5)
        self.cut()
        for responder in self._responders:
            responder.join(timeout=IO_TIMEOUT + 1)
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue  # a chance to notice close()
            with self._lock:
                if self._mode == REFUSE:
                    self.refused += 1
                    _reset(client)
                    continue
                if self._mode == BAD_GATEWAY:
                    responder = threading.Thread(
                        target=self._answer_502, args=(client,), name="proxy-502", daemon=True
                    )
                    self._responders.append(responder)
                    responder.start()
                    continue
                link = _Link()
                link.thread = threading.Thread(
                    target=self._pump, args=(client, link), name="proxy-link", daemon=True
                )
                self._links.append(link)
                link.thread.start()

    def _pump(self, client: socket.socket, link: _Link) -> None:
        upstream: socket.socket | None = None
        head = b""
        try:
            client.settimeout(IO_TIMEOUT)
            upstream = socket.create_connection(self._target, timeout=IO_TIMEOUT)
            while not link.cut.is_set():
                readable, _, _ = select.select([client, upstream], [], [], POLL)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return  # one side closed: close the other
                    if sock is client:
                        if link.request is None:
                            head += data
                            if b"\r\n\r\n" in head:
                                link.request = _parse_head(head.partition(b"\r\n\r\n")[0])
                                with self._lock:
                                    self.requests.append(link.request)
                        upstream.sendall(data)
                    else:
                        client.sendall(data)
        except OSError:
            pass  # a side reset or timed out: the connection is over either way
        finally:
            if link.cut.is_set():
                _reset(client)
            else:
                client.close()
            if upstream is not None:
                upstream.close()


    def _answer_502(self, client: socket.socket) -> None:
        """Read a request's head and answer 502, as a load balancer with no healthy backend."""
        head = b""
        try:
            client.settimeout(IO_TIMEOUT)
            while b"\r\n\r\n" not in head:
                data = client.recv(65536)
                if not data:
                    return  # a speculative connection that never carried a request
                head += data
            request = _parse_head(head.partition(b"\r\n\r\n")[0])
            with self._lock:
                self.requests.append(request)
                self.bad_gateways += 1
            client.sendall(BAD_GATEWAY_ANSWER)
        except OSError:
            pass
        finally:
            client.close()


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

