"""Read replicas on real PostgreSQL streaming replication: replays, audit pages and exports read
from standbys, and exactly-once holds whatever the standbys do (lag on purpose, stop, catch up).

One cluster serves the module: a primary, a standby that replays a second late on purpose
(``recovery_min_apply_delay``) and one that keeps up; each test takes a database of its own,
which reaches the standbys through replication like everything else.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from helpers import wait_until
from replication import Cluster, Node, available
from sqlalchemy import text

from eventlog.database import make_engine
from eventlog.migrate import upgrade
from eventlog.sse import Decoder

from conftest import Server, unavailable

APPLY_DELAY = "1s"


@dataclass
class Replicated:
    cluster: Cluster
    delayed: Node
    fast: Node

    def database(self) -> str:
        """A new migrated database on the primary, once both standbys have it."""
        name = f"replicas_{uuid.uuid4().hex[:10]}"
        self.cluster.primary.sql(f'CREATE DATABASE "{name}"')
        engine = make_engine(self.cluster.primary.url(name))
        upgrade(engine)
        engine.dispose()
        for node in (self.delayed, self.fast):
            wait_until(lambda n=node: n.sql("SELECT count(*) FROM event_counter", name) == "1", timeout=30)
        return name

    @staticmethod
    def name_of(node: Node, database: str) -> str:
        """How /readyz and /metrics name ``node`` as a replica of ``database``."""
        return f"127.0.0.1:{node.port}/{database}"

    def urls(self, name: str) -> dict[str, str]:
        """The settings of a server on database ``name`` that reads from both standbys."""
        return {
            "DATABASE_REPLICA_URLS": f"{self.delayed.url(name)},{self.fast.url(name)}",
        }


@pytest.fixture(scope="module")
def replicated() -> Iterator[Replicated]:
    reason = available()
    if reason is not None:
        unavailable(reason)
    cluster = Cluster()
    try:
        delayed = cluster.standby("delayed", apply_delay=APPLY_DELAY)
        fast = cluster.standby("fast")
        cluster.wait_streaming(delayed)
        cluster.wait_streaming(fast)
        yield Replicated(cluster, delayed, fast)
    finally:
        cluster.close()


@pytest.fixture
def running(replicated: Replicated) -> Iterator[Replicated]:
    """The cluster, with every standby running again after the test."""
    yield replicated
    for node in (replicated.delayed, replicated.fast):
        if not node.running:
            node.start()


# --- clients --------------------------------------------------------------------------------


@dataclass
class Reconnecting:
    """A subscriber that hangs up after a random moment and comes back with Last-Event-ID."""

    url: str
    stream: str
    ids: list[int] = field(default_factory=list)
    resets: list[str] = field(default_factory=list)
    connections: int = 0

    def follow(self, until: threading.Event, last: int) -> None:
        """Reconnect at random until ``until`` is set and id ``last`` arrived."""
        cursor = 0
        rng = random.Random()
        while not (until.is_set() and cursor >= last):
            self.connections += 1
            hang_up = time.monotonic() + rng.uniform(0.05, 0.6)
            headers = {"Accept": "text/event-stream", "Last-Event-ID": str(cursor)}
            try:
                with httpx.stream(
                    "GET", f"{self.url}/streams/{self.stream}/events", headers=headers,
                    timeout=httpx.Timeout(10, read=10),
                ) as response:
                    assert response.status_code == 200
                    decoder = Decoder()
                    for chunk in response.iter_raw():
                        for message in decoder.feed(chunk):
                            if message.event == "reset":
                                self.resets.append(message.data)
                            if message.id:
                                cursor = int(message.id)
                                if message.event != "reset":
                                    self.ids.append(cursor)
                        if time.monotonic() > hang_up:
                            break
            except httpx.HTTPError:
                time.sleep(0.05)


def publish_steadily(base: str, stream: str, count: int, done: threading.Event) -> list[int]:
    """Publish ``count`` events one by one (about 200 a second); their ids."""
    ids = []
    with httpx.Client(timeout=10) as client:
        for n in range(count):
            response = client.post(f"{base}/streams/{stream}/events", json={"data": n})
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
            time.sleep(0.005)
    done.set()
    return ids


def metric(base: str, name: str) -> dict[str, float]:
    """The samples of metric ``name`` from /metrics, by their label values."""
    values: dict[str, float] = {}
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line.rpartition(" ")
            values[labels[len(name):]] = float(value)
    return values


def replica_reads(base: str) -> dict[str, float]:
    return {
        label.split('"')[1]: value
        for label, value in metric(base, "eventlog_replica_reads_total").items()
    }


# --- tests ------------------------------------------------------------------------------------


def test_reconnecting_subscribers_get_every_event_once_from_lagging_and_stopped_replicas(
    running: Replicated, start_server: object
) -> None:
    """A standby a second behind and one stopped mid-run: subscribers that hang up at random
    and resume get every event once, in order, and never a reset."""
    name = running.database()
    server: Server = start_server(  # type: ignore[operator]
        running.cluster.primary.url(name),
        **running.urls(name),
        REPLICA_MAX_LAG_SECONDS=30,  # the delayed standby stays in use: it must be waited for
        POLL_SECONDS=0.2,
        HEARTBEAT_SECONDS=0.2,
    )
    done = threading.Event()
    total = 400
    subscribers = [Reconnecting(server.url, "steady") for _ in range(6)]
    threads = [
        threading.Thread(target=s.follow, args=(done, total), daemon=True) for s in subscribers
    ]
    for thread in threads:
        thread.start()
    published: list[int] = []
    publisher = threading.Thread(
        target=lambda: published.extend(publish_steadily(server.url, "steady", total, done))
    )
    publisher.start()
    time.sleep(1.5)
    running.fast.stop("immediate")  # mid-run: its reads in flight fail, then it is left out
    publisher.join(timeout=120)
    for thread in threads:
        thread.join(timeout=60)
    assert published == list(range(1, total + 1))
    for subscriber in subscribers:
        assert subscriber.resets == []
        assert subscriber.ids == published, f"after {subscriber.connections} connections"
    assert sum(s.connections for s in subscribers) > 30
    reads = replica_reads(server.url)
    assert reads.get(running.name_of(running.fast, name), 0) > 0, reads
