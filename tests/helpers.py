"""Small pieces the tests share: publish over HTTP, read an SSE stream, and a TCP proxy
the test can cut or black-hole."""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from eventlog.sse import Decoder, Message


def publish(base_url: str, stream: str, data: Any, *, type: str | None = None) -> dict[str, Any]:
    """POST one event and return the stored event."""
    body: dict[str, Any] = {"data": data}
    if type is not None:
        body["type"] = type
    response = httpx.post(f"{base_url}/streams/{stream}/events", json=body, timeout=10)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def sse_messages(response: httpx.Response, on_first_bytes: threading.Event | None = None) -> Iterator[Message]:
    """The SSE messages of a streaming response, decoded as a browser would.

    ``on_first_bytes`` is set when the first bytes arrive: the server sends them only after
    it has registered the subscriber, so from then on no event can be missed.
    """
    decoder = Decoder()
    for chunk in response.iter_raw():
        if on_first_bytes is not None:
            on_first_bytes.set()
        yield from decoder.feed(chunk)


class Listener:
    """Reads an SSE URL in a background thread, collecting messages until closed."""

    def __init__(self, url: str, *, last_event_id: int | None = None) -> None:
        self.url = url
        self.messages: list[Message] = []
        self.connected = threading.Event()
        self._headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            self._headers["Last-Event-ID"] = str(last_event_id)
        self._client = httpx.Client(timeout=httpx.Timeout(10, read=60))
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def ids(self) -> list[int]:
        return [int(m.id) for m in list(self.messages) if m.event != "reset"]

    def _run(self) -> None:
        try:
            with self._client.stream("GET", self.url, headers=self._headers) as response:
                decoder = Decoder()
                for chunk in response.iter_raw():
                    self.connected.set()
                    if self._closing.is_set():
                        break  # at the next bytes (a heartbeat at the latest): hang up
                    self.messages.extend(decoder.feed(chunk))
        except (httpx.HTTPError, RuntimeError):
            pass  # closed by the test
        finally:
            self.connected.set()

    def close(self) -> None:
        self._closing.set()
        self._client.close()
        self._thread.join(timeout=5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], object], timeout: float = 15.0, interval: float = 0.05) -> None:
    """Retry ``check`` until it returns truthy without raising; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


# --- a proxy the test can cut, black-hole or make answer 502 ---------------------------------

POLL = 0.05  # how often the proxy's threads look at their flags, in seconds
IO_TIMEOUT = 10.0  # no proxy socket operation may block longer than this
FORWARD, REFUSE, BAD_GATEWAY = "forward", "refuse", "bad gateway"  # the proxy's modes
BAD_GATEWAY_ANSWER = (
    b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n"
    b"Connection: close\r\n\r\nBad Gateway"
)


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
    """A TCP proxy on a free port in front of a server, whose connections the test can cut.

    Each accepted connection gets a connection to the server and a thread that copies bytes
    both ways. ``cut`` resets every open connection; with ``refuse=True`` new connections are
    reset right after they are accepted until ``resume``. ``bad_gateway`` cuts too, then
    answers each new request with a 502 until ``cut(refuse=True)`` or ``resume``.
    ``blackhole`` stops forwarding without closing anything, as a network that drops every
    packet does (new connections are accepted and get nothing either), until ``heal``
    delivers what waited and forwards again, as TCP does once its retransmissions get
    through. With ``http`` the proxy also records the head of the first request on each
    connection, so the test can see what a browser asked for.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", *, http: bool = True) -> None:
        self._target = (target_host, target_port)
        self._http = http  # record request heads (off for other protocols)
        self._forwarding = threading.Event()
        self._forwarding.set()
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

    def blackhole(self) -> None:
        """Stop forwarding on every connection, open or new, and close none."""
        self._forwarding.clear()

    def heal(self) -> None:
        """Forward again, what waited first."""
        self._forwarding.set()

    def close(self) -> None:
        """Stop accepting, cut everything and join every thread."""
        self._closed.set()
        self._acceptor.join(timeout=5)
        self.heal()  # so that no pump waits on the black hole any longer
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
            if not self._wait_for_forwarding(link):
                return
            upstream = socket.create_connection(self._target, timeout=IO_TIMEOUT)
            while not link.cut.is_set():
                if not self._wait_for_forwarding(link):
                    return
                readable, _, _ = select.select([client, upstream], [], [], POLL)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return  # one side closed: close the other
                    if sock is client:
                        if self._http and link.request is None:
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

    def _wait_for_forwarding(self, link: _Link) -> bool:
        """Wait while the proxy black-holes; False when the link was cut meanwhile."""
        while not self._forwarding.wait(POLL):
            if link.cut.is_set():
                return False
        return not link.cut.is_set()

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


# --- keyed publishers, whose every request can be retried safely ------------------------------

@dataclass
class Attempt:
    """One keyed publish: when it started, how long its answer took, and what it was."""

    key: str
    started: float  # time.monotonic()
    elapsed: float = 0.0
    status: int | None = None  # None: no answer at all (the connection failed)
    event: dict[str, Any] | None = None  # the stored event of a 201


class KeyedPublisher:
    """Publishes one event after another through ``base_url`` in a thread, each with an
    Idempotency-Key of its own, recording every attempt, until ``stop``.

    A request that got no 201 may or may not have stored its event; ``settle`` retries
    each one with its key until it gets a 201, which then names the one stored copy.
    """

    def __init__(self, base_url: str, name: str, stream: str = "keyed", timeout: float = 60) -> None:
        self.base_url = base_url
        self.name = name
        self.stream = stream
        self.attempts: list[Attempt] = []
        self._timeout = timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"publisher-{name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._timeout + 5)
        assert not self._thread.is_alive(), f"{self.name} did not stop"

    def settle(self, base_url: str) -> dict[str, dict[str, Any]]:
        """Retry every attempt without a 201 through ``base_url``; return each key's event."""
        stored = {a.key: a.event for a in self.attempts if a.event is not None}
        with httpx.Client(timeout=10) as client:
            for attempt in self.attempts:
                if attempt.key in stored:
                    continue

                def retried(key: str = attempt.key) -> bool:
                    event = self._post(client, base_url, key).event
                    if event is not None:
                        stored[key] = event
                    return event is not None

                wait_until(retried, timeout=15, interval=0.2)
        return {key: event for key, event in stored.items() if event is not None}

    def _run(self) -> None:
        with httpx.Client(timeout=self._timeout) as client:
            while not self._stop.is_set():
                attempt = self._post(client, self.base_url, f"{self.name}-{len(self.attempts)}")
                self.attempts.append(attempt)
                if attempt.status is None or attempt.status >= 500:
                    self._stop.wait(0.05)  # as a client would, before its next request

    def _post(self, client: httpx.Client, base_url: str, key: str) -> Attempt:
        attempt = Attempt(key, time.monotonic())
        try:
            response = client.post(
                f"{base_url}/streams/{self.stream}/events",
                json={"type": "keyed", "data": {"key": key}},
                headers={"Idempotency-Key": key},
            )
        except httpx.HTTPError:
            attempt.elapsed = time.monotonic() - attempt.started
            return attempt
        attempt.elapsed = time.monotonic() - attempt.started
        attempt.status = response.status_code
        assert response.status_code in (201, 503), f"{key}: {response.status_code} {response.text}"
        if response.status_code == 201:
            attempt.event = response.json()
        return attempt


def assert_stored_once(log: list[dict[str, Any]], publishers: list[KeyedPublisher], stored: dict[str, dict[str, Any]]) -> None:
    """The log is gap-free and holds every attempted key exactly once, and each 201 (first
    answer or retry) named the event the log holds for its key."""
    assert [e["id"] for e in log] == list(range(1, len(log) + 1)), "the log has a gap"
    keys = [e["data"]["key"] for e in log if e["type"] == "keyed"]
    duplicated = sorted(k for k in set(keys) if keys.count(k) > 1)
    assert duplicated == [], f"stored twice: {duplicated[:20]}"
    attempted = {a.key for p in publishers for a in p.attempts}
    assert set(keys) == attempted, (
        f"lost: {sorted(attempted - set(keys))[:20]}, unexpected: {sorted(set(keys) - attempted)[:20]}"
    )
    by_key = {e["data"]["key"]: e for e in log if e["type"] == "keyed"}
    assert all(by_key[key] == event for key, event in stored.items())


# --- servers whose database link the test controls ------------------------------------------

SHORT_TIMEOUTS = {
    "IDLE_IN_TRANSACTION_TIMEOUT_SECONDS": 1,
    "LOCK_TIMEOUT_SECONDS": 1.5,
    "STATEMENT_TIMEOUT_SECONDS": 1.5,
    "AUDIT_TIMEOUT_SECONDS": 1,
    "REPLY_TIMEOUT_SECONDS": 3,  # above the connect timeout: it bounds connecting too
    "CONNECT_TIMEOUT_SECONDS": 2,  # libpq's least
    "KEEPALIVE_SECONDS": 1,
    "POOL_TIMEOUT_SECONDS": 2,
}
"""Database timeouts (EVENTLOG_* settings) shorter than the defaults, so that an outage of
a few seconds is long against them."""


def through(proxy: CuttableProxy, database_url: str, name: str | None = None) -> str:
    """``database_url`` by way of ``proxy``; with ``name``, its sessions carry it as their
    application_name (in pg_stat_activity)."""
    url = make_url(database_url).set(host="127.0.0.1", port=proxy.port)
    if name is not None and url.get_backend_name() == "postgresql":
        url = url.update_query_dict({"application_name": name})
    return url.render_as_string(hide_password=False)


def subscribers_by_worker(base: str, workers: int) -> dict[int, int]:
    """Each worker's ``/healthz`` subscriber count, by pid, asked on fresh connections."""
    shares: dict[int, int] = {}
    for _ in range(64):
        with httpx.Client(timeout=5) as client:  # a new connection, so any worker may answer
            health = client.get(f"{base}/healthz").json()
        shares[health["pid"]] = health["subscribers"]
        if len(shares) == workers:
            break
    return shares
