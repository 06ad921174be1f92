"""Clients for tests of several ``eventlog serve`` processes: SSE subscribers that resume
with Last-Event-ID as EventSource does, publishers, the audit log as the truth, and the
checks that every subscriber got exactly its filter's events, once each, in id order.

Every subscriber sends an explicit Last-Event-ID (0 on a fresh log), so what it must
receive is a fixed list: the audit API's answer for its filter once publishing has stopped.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode, urljoin

import httpx
import pytest
import redis
from conftest import Server
from helpers import wait_until

from eventlog.sse import Decoder, Message

Event = dict[str, Any]

# Heartbeats every half second: idle subscribers wake up often enough to notice they should
# drop their connection or stop, and the servers notice closed sockets quickly.
HEARTBEAT = 0.5

STREAMS = ("orders", "payments", "audit")
# Filters the subscribers use: one stream (by both routes), several streams, every stream.
FILTERS: tuple[tuple[str, ...], ...] = (
    ("orders",), ("payments",), ("audit",), ("orders", "payments"), ("payments", "audit"), (),
)



# --- clients --------------------------------------------------------------------------------


class Subscriber:
    """An SSE client in a thread that reconnects with Last-Event-ID, like EventSource.

    ``choose(n)`` picks the base URL for connection attempt ``n`` (0 first). While
    ``churn`` is set, every connection is dropped after a random lifetime, at whatever
    point of the stream that falls (replay, live, even mid-frame). A connection the server
    ends or refuses (a crashed process) is retried after a short pause, and so is an answer
    with a status in ``unavailable`` (a 503 while the server's database is cut off, in tests
    that cut it). Only fully dispatched messages count, and the resume point is the last
    one's id, as in a browser.
    """

    def __init__(
        self,
        name: str,
        path: str,
        choose: Callable[[int], str],
        *,
        last_event_id: int = 0,
        churn: threading.Event | None = None,
        seed: int = 0,
        unavailable: frozenset[int] = frozenset(),
    ) -> None:
        self.name = name
        self.path = path
        self.messages: list[Message] = []
        self.arrived: dict[int, float] = {}  # id -> time.monotonic() of arrival
        self.last_id = last_event_id
        self.servers: list[str] = []  # the base URL of every connection that got a 200
        self.refused = 0  # attempts that failed to connect, broke off, or were unavailable
        self.errors: list[str] = []  # anything a correct server never does
        self._choose = choose
        self._churn = churn
        self._unavailable = unavailable
        self._random = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"subscriber-{name}", daemon=True)
        self._thread.start()

    @property
    def ids(self) -> list[int]:
        return [int(m.id) for m in list(self.messages)]

    def stop(self) -> None:
        """Ask the thread to stop; it does at the next chunk (a heartbeat at the latest)."""
        self._stop.set()

    def close(self) -> None:
        self.stop()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), f"{self.name} did not stop"

    def _run(self) -> None:
        # A short read timeout: heartbeats arrive every HEARTBEAT seconds on a healthy stream.
        with httpx.Client(timeout=httpx.Timeout(5, read=5)) as client:
            while not self._stop.is_set():
                base = self._choose(len(self.servers))
                try:
                    self._connect(client, base)
                except httpx.HTTPError:
                    # Refused (the process is down) or cut off (it died): try again soon.
                    self.refused += 1
                    self._stop.wait(0.05)

    def _connect(self, client: httpx.Client, base: str) -> None:
        lifetime = self._random.uniform(0.02, 0.8) if self._churn is not None else None
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(self.last_id)}
        with client.stream("GET", base + self.path, headers=headers) as response:
            if response.status_code in self._unavailable:
                self.refused += 1
                self._stop.wait(0.1)
                return
            if response.status_code != 200:
                self.errors.append(f"{base}: HTTP {response.status_code} {response.read()!r}")
                self._stop.wait(0.1)
                return
            self.servers.append(base)
            started = time.monotonic()
            decoder = Decoder()
            for chunk in response.iter_raw():
                for message in decoder.feed(chunk):
                    if message.event == "reset":
                        # The resume point was never beyond the head: a reset is a bug.
                        self.errors.append(f"{base}: unexpected reset {message.data}")
                    self.messages.append(message)
                    self.arrived.setdefault(int(message.id), time.monotonic())
                    self.last_id = int(message.id)
                if self._stop.is_set():
                    return
                if (
                    lifetime is not None
                    and self._churn is not None
                    and self._churn.is_set()
                    and time.monotonic() - started > lifetime
                ):
                    return  # drop the connection here; the loop reconnects from last_id


def always(url: str) -> Callable[[int], str]:
    """Connect to ``url`` every time."""
    return lambda _: url


def first_then(first: str, then: str) -> Callable[[int], str]:
    """Connect to ``first`` once, then to ``then``."""
    return lambda attempt: first if attempt == 0 else then


def at_random(urls: Sequence[str], rng: random.Random) -> Callable[[int], str]:
    """Connect to a random one of ``urls`` each time."""
    return lambda _: rng.choice(urls)


def post(client: httpx.Client, base: str, stream: str, body: Any) -> list[Event]:
    """POST one event (an object) or a batch (a list); return the stored events."""
    response = client.post(f"{base}/streams/{stream}/events", json=body)
    assert response.status_code == 201, f"{base}: {response.status_code} {response.text}"
    result = response.json()
    return list(result["events"]) if isinstance(body, list) else [result]


def audit(base: str, streams: Sequence[str] = ()) -> list[Event]:
    """Every stored event of ``streams`` (all if empty), in id order, from the JSON audit API."""
    params = [*(("stream", s) for s in streams), ("limit", "1000")]
    url: str | None = f"{base}/events?{urlencode(params)}"
    events: list[Event] = []
    with httpx.Client(timeout=10, headers={"Accept": "application/json"}) as client:
        while url is not None:
            response = client.get(url)
            assert response.status_code == 200, response.text
            page = response.json()
            events.extend(page["events"])
            url = None if page["next"] is None else urljoin(base, page["next"])  # a relative link
    return events


def publish_for(
    urls: Sequence[str],
    count: int,
    seed: int,
    *,
    pause: float = 0.0,
    stop: threading.Event | None = None,
) -> list[Event]:
    """Publish about ``count`` events (single ones and batches of 2-5, random streams and
    servers) and return them; stop early when ``stop`` is set."""
    rng = random.Random(seed)
    stored: list[Event] = []
    with httpx.Client(timeout=10) as client:
        while len(stored) < count and not (stop is not None and stop.is_set()):
            stream, base = rng.choice(STREAMS), rng.choice(urls)
            size = rng.choice((1, 1, 1, 2, 3, 5))
            data = [{"by": seed, "n": len(stored) + i, "stream": stream} for i in range(size)]
            body: Any = {"type": "single", "data": data[0]} if size == 1 else [
                {"type": "batched", "data": d} for d in data
            ]
            stored += post(client, base, stream, body)
            if pause:
                time.sleep(pause)
    return stored


def expected_by_path(
    base: str, subscribers: Sequence[Subscriber], filters: dict[str, tuple[str, ...]]
) -> dict[str, list[Event]]:
    """What each subscriber path must have received: the whole log for its filter."""
    return {path: audit(base, filters[path]) for path in {s.path for s in subscribers}}


def sse_path(streams: Sequence[str], *, use_stream_route: bool = False) -> str:
    """The SSE URL path for a filter: one stream, several streams, or every stream."""
    if use_stream_route and len(streams) == 1:
        return f"/streams/{streams[0]}/events"
    return f"/events?{urlencode([('stream', s) for s in streams])}" if streams else "/events"


def assert_exactly_once(subscriber: Subscriber, expected: list[Event]) -> None:
    """The subscriber got exactly ``expected``: each event once, in id order, intact."""
    assert subscriber.errors == [], f"{subscriber.name}: {subscriber.errors}"
    got, want = subscriber.ids, [e["id"] for e in expected]
    if got != want:
        copies = Counter(got)
        duplicated = sorted(i for i, n in copies.items() if n > 1)
        missing = sorted(set(want) - set(got))
        unexpected = sorted(set(got) - set(want))
        out_of_order = [(a, b) for a, b in zip(got, got[1:], strict=False) if a >= b][:10]
        pytest.fail(
            f"{subscriber.name} ({subscriber.path}, {len(subscriber.servers)} connections):"
            f" got {len(got)} events, want {len(want)}; duplicated {duplicated[:20]},"
            f" missing {missing[:20]}, unexpected {unexpected[:20]}, out of order {out_of_order}"
        )
    if subscriber.path.startswith("/events"):  # multi-stream frames carry the stored event
        assert [(m.event, json.loads(m.data)) for m in subscriber.messages] == [
            (e["type"], e) for e in expected
        ], subscriber.name
    else:
        assert [(m.event, json.loads(m.data)) for m in subscriber.messages] == [
            (e["type"], e["data"]) for e in expected
        ], subscriber.name


def wait_caught_up(
    subscribers: Sequence[Subscriber], expected: dict[str, list[Event]], timeout: float
) -> None:
    """Wait until every subscriber has reached the last event of its filter."""

    def head(subscriber: Subscriber) -> int:
        events = expected[subscriber.path]
        return int(events[-1]["id"]) if events else 0

    try:
        wait_until(lambda: all(s.last_id >= head(s) for s in subscribers), timeout=timeout)
    except AssertionError:
        behind = {s.name: (s.last_id, head(s)) for s in subscribers if s.last_id < head(s)}
        raise AssertionError(f"behind after {timeout} s (at, head): {behind}") from None


def close_all(subscribers: Sequence[Subscriber]) -> None:
    for subscriber in subscribers:
        subscriber.stop()  # all at once: each takes up to a heartbeat to notice
    for subscriber in subscribers:
        subscriber.close()


# --- processes and waits --------------------------------------------------------------------


def wait_for_hubs(redis_url: str, channel: str, count: int, timeout: float) -> None:
    """Wait until ``count`` connections (one per live hub) are subscribed to ``channel``."""
    seen: list[int] = []

    def subscribed() -> bool:
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=1)
        try:
            seen.append(int(dict(client.pubsub_numsub(channel))[channel.encode()]))
        finally:
            client.close()
        return seen[-1] == count

    try:
        wait_until(subscribed, timeout=timeout)
    except AssertionError:
        message = f"{seen[-1:]} hubs on {channel!r} after {timeout} s, not {count}"
        raise AssertionError(message) from None


def readiness(server: Server) -> tuple[int, dict[str, str]]:
    """The status and body of ``GET /readyz``."""
    response = httpx.get(f"{server.url}/readyz", timeout=5)
    return response.status_code, response.json()


def wait_for(subscribers: Sequence[Subscriber], event_id: int, timeout: float) -> float:
    """Wait until every subscriber has ``event_id``; return the seconds that took."""
    started = time.monotonic()
    try:
        wait_until(
            lambda: all(event_id in s.arrived for s in subscribers), timeout=timeout, interval=0.01
        )
    except AssertionError:
        missing = [s.name for s in subscribers if event_id not in s.arrived]
        message = f"event {event_id} not delivered in {timeout} s to {missing}"
        raise AssertionError(message) from None
    return time.monotonic() - started
