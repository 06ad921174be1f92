"""Several ``eventlog serve`` processes over one PostgreSQL and one Redis, as in production.

Nothing is mocked: real server processes (gunicorn + gevent), real PostgreSQL, real Redis,
HTTP clients that read SSE as a browser's EventSource would and resume with Last-Event-ID
(``cluster.py``). The tests prove delivery across processes and workers, exactly-once
in-order delivery under reconnect churn, delivery through a Redis outage, and recovery from
a crashed process.
"""

from __future__ import annotations

import random
import resource
import socket
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from cluster import (
    FILTERS,
    HEARTBEAT,
    Event,
    Subscriber,
    always,
    assert_exactly_once,
    at_random,
    audit,
    close_all,
    expected_by_path,
    first_then,
    post,
    publish_for,
    readiness,
    sse_path,
    wait_caught_up,
    wait_for,
    wait_for_hubs,
)
from conftest import RedisServer, Server
from helpers import subscribers_by_worker, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

StartServer = Callable[..., Server]

# Long enough that the periodic head check cannot deliver anything within a test's wait:
# in tests that use it, only a Redis doorbell can bring an event to another process in time.
NO_POLL = 30
# How soon a doorbell must bring an event across processes: far above the milliseconds it
# takes, to stay calm on a busy machine, and far below NO_POLL, so only Redis can make it.
PROMPT = 5.0


# --- tests ----------------------------------------------------------------------------------


def test_two_processes_deliver_each_others_events_through_redis(
    postgres_url: str, redis_url: str, redis_channel: str, start_server: StartServer
) -> None:
    """A subscriber on process A gets events published through process B within seconds,
    and the other way round. The periodic head check is 30 s, so only the Redis doorbell
    can bring an event across in time: this proves the cross-process notification path."""
    settings = {
        "REDIS_CHANNEL": redis_channel, "POLL_SECONDS": NO_POLL, "HEARTBEAT_SECONDS": HEARTBEAT
    }
    a = start_server(postgres_url, redis_url, **settings)
    b = start_server(postgres_url, redis_url, **settings)
    subscribers = [
        Subscriber("on-a", "/events", always(a.url)),
        Subscriber("on-b", "/events", always(b.url)),
        Subscriber("on-a-orders", "/streams/orders/events", always(a.url)),
        Subscriber("on-b-orders", sse_path(["orders"]), always(b.url)),
    ]
    try:
        with httpx.Client(timeout=10) as client:
            # A first event through each process, awaited everywhere: after it, each stream
            # has finished its replay from SQL, so later arrivals can only come live from a hub.
            for server in (a, b):
                [warm_up] = post(client, server.url, "orders", {"data": {"warm_up": server.url}})
                wait_for(subscribers, warm_up["id"], timeout=PROMPT)
            for n in range(5):
                for source in (a, b):
                    body = {"type": "created", "data": {"n": n}}
                    [event] = post(client, source.url, "orders", body)
                    wait_for(subscribers, event["id"], timeout=PROMPT)
        expected = audit(a.url, ["orders"])
        assert [e["id"] for e in expected] == list(range(1, 13))
        for subscriber in subscribers:
            assert_exactly_once(subscriber, expected)
        assert {s.servers[0] for s in subscribers} == {a.url, b.url}
        assert all(len(s.servers) == 1 for s in subscribers), "no stream should have been cut"
    finally:
        close_all(subscribers)


def test_workers_of_one_server_share_events_through_redis(
    postgres_url: str, redis_url: str, redis_channel: str, start_server: StartServer
) -> None:
    """With ``--workers 2`` each worker has its own hub; subscribers on both workers get
    every event published through the port, whichever worker took the POST. The head check
    is 30 s, so the workers can only learn of each other's events through Redis in time."""
    server = start_server(
        postgres_url, redis_url, args=["--workers", "2"],
        REDIS_CHANNEL=redis_channel, POLL_SECONDS=NO_POLL, HEARTBEAT_SECONDS=HEARTBEAT,
    )
    subscribers: list[Subscriber] = []
    try:
        # The kernel spreads connections over the workers by a hash of their addresses, so keep
        # adding subscribers until /healthz (answered by either worker) shows both have some:
        # with two workers, a count strictly between 0 and the total means the rest are on the other.
        counts: set[int] = set()
        while not any(0 < count < len(subscribers) for count in counts):
            if len(subscribers) >= 24:
                pytest.fail(f"all {len(subscribers)} subscribers landed on one worker ({counts})")
            for _ in range(3):
                index = len(subscribers)
                path = "/events" if index % 2 else "/streams/jobs/events"
                subscribers.append(Subscriber(f"s{index}", path, always(server.url)))
            # A 200 arrives with the first bytes, sent once the hub has registered the stream.
            wait_until(lambda: all(s.servers for s in subscribers))
            counts = set(subscribers_by_worker(server.url, workers=2).values())
        published: list[Event] = []
        # A fresh connection per POST, so the POSTs too spread over both workers.
        with httpx.Client(timeout=10, headers={"Connection": "close"}) as client:
            for n in range(20):
                published += post(client, server.url, "jobs", {"type": "queued", "data": {"n": n}})
                wait_for(subscribers, published[-1]["id"], timeout=PROMPT)
        expected = audit(server.url, ["jobs"])
        assert [e["id"] for e in expected] == [e["id"] for e in published] == list(range(1, 21))
        for subscriber in subscribers:
            assert_exactly_once(subscriber, expected)
    finally:
        close_all(subscribers)


def test_workers_of_one_server_get_even_shares_of_the_connections(
    postgres_url: str, redis_url: str, redis_channel: str, start_server: StartServer
) -> None:
    """Each worker listens on a socket of its own (SO_REUSEPORT) and the kernel spreads the
    connections over them: 1,000 streams opened at once split about evenly. On one shared
    socket the worker that woke first took each connection, and some runs of this test split
    329/671 or 398/602 (others were even: this test catches that only some of the time)."""
    server = start_server(postgres_url, redis_url, args=["--workers", "2"], REDIS_CHANNEL=redis_channel)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))
    streams: list[socket.socket] = []
    try:
        # All at once, as when many clients come back together after a network blip.
        for _ in range(1000):
            stream = socket.socket()
            stream.setblocking(False)
            stream.connect_ex(("127.0.0.1", server.port))
            streams.append(stream)
        for stream in streams:
            stream.settimeout(10)
            stream.sendall(b"GET /streams/even/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n")
        for stream in streams:
            received = b""
            while b"retry:" not in received:  # sent once the worker's hub has registered it
                received += stream.recv(4096)
        shares = subscribers_by_worker(server.url, workers=2)
        assert sum(shares.values()) == 1000
        assert all(400 <= share <= 600 for share in shares.values()), shares
    finally:
        for stream in streams:
            stream.close()


def test_churning_subscribers_get_every_event_exactly_once_across_two_processes(
    server_url: str, redis_url: str, redis_channel: str, start_server: StartServer
) -> None:
    """Invariant 3 under load: 8 threads publish ~1,600 events (singles and batches, three
    streams) through two processes while 32 subscribers on random processes drop their
    connection at random moments (during replay, live, mid-frame) and resume on a random
    process with the last id they saw, and the live buffers overflow now and then. Each
    subscriber ends with every event of its filter (one stream, several, or all) exactly
    once, in id order; the log itself is gap-free although both processes allocate ids."""
    # A tiny live buffer: under this load subscribers overflow it now and then, so the
    # overflow -> replay-from-SQL -> live handover is exercised along with the reconnects.
    settings = {
        "REDIS_CHANNEL": redis_channel, "HEARTBEAT_SECONDS": HEARTBEAT, "SUBSCRIBER_BUFFER": 16
    }
    servers = [start_server(server_url, redis_url, **settings) for _ in range(2)]
    urls = [s.url for s in servers]
    seed = random.randrange(1 << 30)
    churn = threading.Event()
    churn.set()
    filters: dict[str, tuple[str, ...]] = {}
    subscribers: list[Subscriber] = []
    for index in range(32):
        streams = FILTERS[index % len(FILTERS)]
        path = sse_path(streams, use_stream_route=index % 12 < 6)
        filters[path] = streams
        choose = at_random(urls, random.Random(seed + index))
        subscribers.append(Subscriber(f"s{index}", path, choose, churn=churn, seed=seed + index))
    try:
        with ThreadPoolExecutor(8) as pool:
            batches = [pool.submit(publish_for, urls, 200, seed + 1000 + n) for n in range(8)]
            published = [e for batch in batches for e in batch.result()]
        churn.clear()  # publishing is over: let everyone catch up without further drops
        log = audit(urls[0])
        # Two processes allocating ids concurrently still leave one gap-free sequence.
        assert [e["id"] for e in log] == list(range(1, len(published) + 1)), f"seed {seed}"
        assert sorted(e["id"] for e in published) == [e["id"] for e in log]
        expected = expected_by_path(urls[1], subscribers, filters)
        wait_caught_up(subscribers, expected, timeout=30)
        close_all(subscribers)
        for subscriber in subscribers:
            assert_exactly_once(subscriber, expected[subscriber.path])
        # The churn really happened, on both processes.
        reconnects = sum(len(s.servers) - 1 for s in subscribers)
        assert reconnects >= 3 * len(subscribers), reconnects
        assert {url for s in subscribers for url in s.servers} == set(urls)
    finally:
        close_all(subscribers)


def test_redis_outage_delays_delivery_by_the_poll_and_loses_nothing(
    postgres_url: str, redis_server: RedisServer, start_server: StartServer
) -> None:
    """Invariants 2 and 4 across processes: with Redis killed, publishing still succeeds
    and every subscriber on both processes gets each event within the 1 s head check;
    /readyz says 200 "degraded" (redis unreachable) meanwhile. Once Redis is back on the same port,
    each process resubscribes by itself (two hubs on the channel again), events arrive
    promptly through the doorbell again, and no subscriber lost or repeated anything."""
    channel = "eventlog"
    settings = {"POLL_SECONDS": 1, "HEARTBEAT_SECONDS": HEARTBEAT, "REDIS_CHANNEL": channel}
    a = start_server(postgres_url, redis_server.url, **settings)
    b = start_server(postgres_url, redis_server.url, **settings)
    filters = {"/events": (), "/streams/orders/events": ("orders",)}
    subscribers = [
        Subscriber(f"{name}{path}", path, always(server.url))
        for name, server in (("a", a), ("b", b))
        for path in filters
    ]
    published: list[Event] = []
    try:
        with httpx.Client(timeout=10) as client:

            def publish_round(count: int, deadline: float) -> list[float]:
                """Publish alternately through a and b; each event must reach everyone in time."""
                latencies = []
                for n in range(count):
                    source = (a, b)[n % 2]
                    stream = ("orders", "payments")[n % 3 == 2]
                    started = time.monotonic()
                    body = {"data": {"n": len(published)}}
                    published.extend(post(client, source.url, stream, body))
                    # Publishing must not wait on Redis (its client retries and times out).
                    assert time.monotonic() - started < 1, "a publish waited on Redis"
                    matching = [s for s in subscribers if stream == "orders" or s.path == "/events"]
                    latencies.append(wait_for(matching, published[-1]["id"], timeout=deadline))
                return latencies

            # Both hubs hold their subscription once their first subscriber is registered.
            wait_until(lambda: all(s.servers for s in subscribers))
            wait_for_hubs(redis_server.url, channel, 2, timeout=5)
            publish_round(6, deadline=3)

            redis_server.stop()
            degraded = {"status": "degraded", "database": "ok", "redis": "unreachable"}
            for server in (a, b):
                # The first check after the kill already tells: no waiting for a timeout. Still
                # ready: publishing works, and delivery goes on by polling.
                assert readiness(server) == (200, degraded)
            # Only the periodic head check (1 s) carries events across processes now.
            publish_round(6, deadline=3)

            redis_server.start()
            up = {"status": "ready", "database": "ok", "redis": "ok"}
            for server in (a, b):
                # The client reconnects on demand: the first check after the restart passes.
                assert readiness(server) == (200, up)
            # Nobody restarts the processes: each hub reconnects and resubscribes by itself.
            wait_for_hubs(redis_server.url, channel, 2, timeout=10)
            recovered = publish_round(10, deadline=3)
            # Through the doorbell an event takes milliseconds; by the 1 s poll alone the
            # median would be about half a second.
            assert statistics.median(recovered) < 0.3, recovered
        expected = expected_by_path(a.url, subscribers, filters)
        assert [e["id"] for e in expected["/events"]] == list(range(1, len(published) + 1))
        close_all(subscribers)
        for subscriber in subscribers:
            assert_exactly_once(subscriber, expected[subscriber.path])
            # The SSE connections never depended on Redis: none was cut.
            assert len(subscriber.servers) == 1, subscriber.name
    finally:
        close_all(subscribers)


def test_crashed_process_clients_resume_elsewhere_or_after_restart(
    postgres_url: str, redis_url: str, redis_channel: str, start_server: StartServer
) -> None:
    """kill -9 one process (master and worker) while its subscribers are connected and
    events keep being published through the other. Its clients reconnect with their last
    id, some to the restarted process on the same port and some to the surviving one, and
    every subscriber on either process ends with each event exactly once, in order."""
    settings = {"REDIS_CHANNEL": redis_channel, "HEARTBEAT_SECONDS": HEARTBEAT}
    a = start_server(postgres_url, redis_url, **settings)
    b = start_server(postgres_url, redis_url, **settings)
    filters: dict[str, tuple[str, ...]] = {}
    subscribers: list[Subscriber] = []
    for index in range(18):
        streams = FILTERS[index % len(FILTERS)]
        path = sse_path(streams, use_stream_route=index % 2 == 0)
        filters[path] = streams
        if index < 6:  # on a, and back to a once it is up again
            choose = always(a.url)
        elif index < 12:  # on a first, then over to b
            choose = first_then(a.url, b.url)
        else:  # on b throughout
            choose = always(b.url)
        subscribers.append(Subscriber(f"s{index}", path, choose))
    stays, moves, on_b = subscribers[:6], subscribers[6:12], subscribers[12:]
    seed = random.randrange(1 << 30)
    stop = threading.Event()
    try:
        wait_until(lambda: all(s.servers for s in subscribers))
        with ThreadPoolExecutor(2) as pool:
            # Publishing through b never pauses: before, during and after the crash.
            jobs = [
                pool.submit(publish_for, [b.url], 10_000, seed + n, pause=0.01, stop=stop)
                for n in range(2)
            ]
            try:
                # Crash a mid-stream, not before its subscribers have seen anything.
                wait_until(lambda: all(len(s.messages) >= 5 for s in stays + moves))
                a.kill()  # master and workers at once, as in a crash
                # The cut streams reconnect: the movers to b at once, the others keep trying a.
                wait_until(lambda: all(len(s.servers) >= 2 for s in moves), timeout=10)
                wait_until(lambda: all(s.refused > 0 for s in stays), timeout=10)
                assert all(len(s.servers) == 1 for s in stays), "a is down: nobody can be on it"
                a.start()
                wait_until(lambda: all(len(s.servers) >= 2 for s in stays), timeout=10)
                time.sleep(1)  # keep publishing while the reconnected streams are live
            finally:
                stop.set()
                published = [e for job in jobs for e in job.result()]
        expected = expected_by_path(b.url, subscribers, filters)
        assert [e["id"] for e in expected["/events"]] == sorted(e["id"] for e in published)
        wait_caught_up(subscribers, expected, timeout=15)
        close_all(subscribers)
        for subscriber in subscribers:
            assert_exactly_once(subscriber, expected[subscriber.path])
        assert all(s.servers[1:] == [a.url] for s in stays)
        assert all(s.servers[1:] == [b.url] for s in moves)
        assert all(s.servers == [b.url] for s in on_b), "b's streams must not have been cut"
    finally:
        stop.set()
        close_all(subscribers)
