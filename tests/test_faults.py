"""Every fault of a production cluster in one run, and still no event lost, duplicated or
out of order.

Two ``eventlog serve`` processes share one PostgreSQL (or MariaDB) and a Redis of the test's own; each
reaches the database through a TCP proxy the test controls (``helpers.CuttableProxy``).
While keyed publishers post through both and subscribers drop and resume at random on
either, the test, one fault after the other: kills Redis and restarts it, kills one server
-9 and restarts it, cuts the other's database link (every connection reset, new ones
refused for a while), and black-holes the first one's link (nothing forwarded, nothing
closed). At the end every request that got no 201 is retried with its Idempotency-Key,
and the log and each subscriber are checked against each other.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from cluster import (
    FILTERS,
    HEARTBEAT,
    STREAMS,
    Subscriber,
    assert_exactly_once,
    at_random,
    audit,
    close_all,
    expected_by_path,
    readiness,
    sse_path,
    wait_caught_up,
)
from conftest import RedisServer, Server, proxy_to
from helpers import SHORT_TIMEOUTS as TIMEOUTS
from helpers import Attempt, CuttableProxy, KeyedPublisher, assert_stored_once, through, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

StartServer = Callable[..., Server]

REDIS_OUTAGE = 3.0
CRASH_DOWNTIME = 1.0
CUT_REFUSING = 2.0
BLACK_HOLE = 7.0  # longer than LONGEST_ANSWER: a wait the timeouts do not end shows
# The longest any publish may wait for its answer, whatever the fault: the reply timeout
# bounds its database work in all (queue, connect, every answer); a wait for a free pooled
# connection, while stuck replays hold them all, comes on top; plus room for a machine
# shared with other work.
LONGEST_ANSWER = TIMEOUTS["REPLY_TIMEOUT_SECONDS"] + TIMEOUTS["POOL_TIMEOUT_SECONDS"] + 1.5
REDIS_DOWN = {"status": "degraded", "database": "ok", "redis": "unreachable"}


@pytest.fixture
def database_links(server_url: str) -> Iterator[list[CuttableProxy]]:
    """Two proxies in front of the test's database server, one per server."""
    proxies = [proxy_to(server_url) for _ in range(2)]
    yield proxies
    for proxy in proxies:
        proxy.close()


def test_no_fault_loses_duplicates_or_reorders_an_event(
    server_url: str,
    redis_server: RedisServer,
    database_links: list[CuttableProxy],
    start_server: StartServer,
) -> None:
    settings = {**TIMEOUTS, "HEARTBEAT_SECONDS": HEARTBEAT, "POLL_SECONDS": 1}
    a_link, b_link = database_links
    a = start_server(through(a_link, server_url, "a"), redis_server.url, **settings)
    b = start_server(through(b_link, server_url, "b"), redis_server.url, **settings)
    urls = [a.url, b.url]
    seed = random.randrange(1 << 30)
    churn = threading.Event()
    churn.set()
    filters: dict[str, tuple[str, ...]] = {}
    subscribers: list[Subscriber] = []
    for index in range(18):
        streams = FILTERS[index % len(FILTERS)]
        path = sse_path(streams, use_stream_route=index % 12 < 6)
        filters[path] = streams
        subscribers.append(
            Subscriber(
                f"s{index}", path, at_random(urls, random.Random(seed + index)),
                churn=churn, seed=seed + index, unavailable=frozenset({503}),
            )
        )
    publishers = [
        KeyedPublisher(server.url, f"{label}{n}", stream=STREAMS[n % len(STREAMS)])
        for label, server in (("a", a), ("b", b))
        for n in range(3)
    ]
    windows: dict[str, tuple[float, float]] = {}  # fault -> (start, end), time.monotonic()
    try:
        wait_until(lambda: all(s.servers for s in subscribers) and all(len(p.attempts) >= 10 for p in publishers))

        started = time.monotonic()
        redis_server.stop()  # delivery across the processes falls back to the 1 s poll
        degraded = readiness(a), readiness(b)
        time.sleep(REDIS_OUTAGE)
        redis_server.start()
        windows["redis"] = started, time.monotonic()

        started = time.monotonic()
        a.kill()  # master and workers, mid-stream and mid-publish
        time.sleep(CRASH_DOWNTIME)
        a.start()
        windows["crash"] = started, time.monotonic()

        started = time.monotonic()
        b_link.cut(refuse=True)  # b's database is gone: every connection reset, none accepted
        time.sleep(CUT_REFUSING)
        b_link.resume()
        windows["cut"] = started, time.monotonic()

        started = time.monotonic()
        a_link.blackhole()  # a's packets dropped: sessions may sit idle in transaction
        time.sleep(BLACK_HOLE)
        a_link.heal()
        windows["black hole"] = started, time.monotonic()

        healed_at = time.monotonic()
        wait_until(lambda: all(p.attempts[-1].started > healed_at + 1 for p in publishers), timeout=20)
    finally:
        churn.clear()  # let everyone catch up without further drops
        for publisher in publishers:
            publisher.stop()

    stored: dict[str, dict[str, object]] = {}
    for publisher in publishers:
        stored.update(publisher.settle(b.url))
    log = audit(b.url)
    assert_stored_once(log, publishers, stored)
    expected = expected_by_path(a.url, subscribers, filters)
    try:
        wait_caught_up(subscribers, expected, timeout=30)
    finally:
        close_all(subscribers)
    for subscriber in subscribers:
        assert_exactly_once(subscriber, expected[subscriber.path])

    # Each fault was felt where it struck, and none stalled anyone past the timeouts.
    assert degraded == ((200, REDIS_DOWN), (200, REDIS_DOWN))
    on_a, on_b = publishers[:3], publishers[3:]
    assert failed(on_a, windows["crash"]) and not failed(on_b, windows["crash"], within=True)
    assert failed(on_b, windows["cut"])
    assert failed(on_a, windows["black hole"])
    attempts = [attempt for p in publishers for attempt in p.attempts]
    slowest = max(attempts, key=lambda attempt: attempt.elapsed)
    assert slowest.elapsed < LONGEST_ANSWER, (slowest.key, slowest.status, slowest.elapsed)
    assert sum(s.refused for s in subscribers) > 0, "no subscriber noticed a fault"
    reconnects = sum(len(s.servers) - 1 for s in subscribers)
    assert reconnects >= 3 * len(subscribers), reconnects
    assert {url for s in subscribers for url in s.servers} == set(urls)


def failed(publishers: list[KeyedPublisher], window: tuple[float, float], *, within: bool = False) -> int:
    """How many of the publishers' attempts in flight during ``window`` got no 201; with
    ``within``, only those that began and ended inside it (not one that the previous or
    next fault caught at the window's edge)."""
    start, end = window

    def counted(a: Attempt) -> bool:
        if within:
            return start <= a.started and a.started + a.elapsed <= end
        return a.started < end and a.started + a.elapsed > start

    return sum(a.status != 201 for p in publishers for a in p.attempts if counted(a))
