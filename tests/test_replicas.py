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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import sqlalchemy
from flask import Flask
from helpers import wait_until
from replication import Cluster, Node, available
from sqlalchemy import Engine

from eventlog import EventLog, create_app, metrics
from eventlog.config import Settings
from eventlog.database import make_engine
from eventlog.errors import ConfigError
from eventlog.events import EventFilter
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
            wait_until(lambda n=node: n.sql("SELECT count(*) FROM eventlog_counter", name) == "1", timeout=30)
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

    def follow(self, until: threading.Event, last: int | list[int], start: int = 0) -> None:
        """Reconnect at random, from ``start`` on, until ``until`` is set and id ``last``
        (or ``last[0]``, when the test learns it later) arrived."""
        cursor = start
        rng = random.Random()
        while not (until.is_set() and cursor >= (last if isinstance(last, int) else last[0])):
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


# --- in-process: fallback, readiness, audit pages, retention ---------------------------------


@pytest.fixture
def app_on(running: Replicated) -> Iterator[Callable[..., Flask]]:
    """``app_on(database, replicas, **settings)``: the app on a database of the cluster."""
    apps: list[Flask] = []

    def make(database: str, replicas: list[Node], **settings: Any) -> Flask:
        app = create_app(
            {
                "EVENTLOG_DATABASE_URL": running.cluster.primary.url(database),
                "EVENTLOG_DATABASE_REPLICA_URLS": ",".join(n.url(database) for n in replicas),
                "EVENTLOG_POLL_SECONDS": 0.2,
                "EVENTLOG_HEARTBEAT_SECONDS": 0.2,
                **{f"EVENTLOG_{k}": v for k, v in settings.items()},
            }
        )
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["eventlog"].close()


def replay(events: EventLog, streams: list[str], after: int, last: int) -> list[tuple[str, int]]:
    """A stream's messages from resume point ``after`` until id ``last``: ("event"|"reset", id)."""
    got: list[tuple[str, int]] = []
    decoder = Decoder()
    stream = events.stream(streams, after)
    try:
        for chunk in stream:
            for message in decoder.feed(chunk):
                if message.id:
                    got.append((message.event, int(message.id)))
            if got and got[-1][1] >= last:
                break
    finally:
        stream.close()  # type: ignore[attr-defined]
    return got


def replica_reads_in_process(name: str) -> float:
    return float(metrics.get().replica_reads.labels(name)._value.get())


def primary_head(running: Replicated, database: str) -> int:
    return int(running.cluster.primary.sql("SELECT last_id FROM eventlog_counter", database))


def caught_up(node: Node, running: Replicated, database: str) -> bool:
    return node.sql("SELECT last_id FROM eventlog_counter", database) == str(primary_head(running, database))


def test_replica_down_or_lagging_reads_fall_back_and_readyz_says_so(
    running: Replicated, app_on: Callable[..., Flask]
) -> None:
    """One standby stopped, the other lagging past the limit: /readyz is 200 "degraded" and
    names both, /metrics shows them out of use, and every read answers from the primary."""
    name = running.database()
    app = app_on(name, [running.delayed, running.fast], REPLICA_MAX_LAG_SECONDS=0.3)
    events: EventLog = app.extensions["eventlog"]
    client = app.test_client()
    events.publish("busy", {"n": 0})
    wait_until(lambda: client.get("/readyz").json["status"] == "ready")
    wait_until(lambda: all(s.head == 1 for s in events.replica_states().values()))
    running.fast.stop("immediate")
    # Before any check notices: the reads that try the stopped standby answer from elsewhere.
    for _ in range(6):
        assert client.get("/streams/busy/events").status_code == 200
    stop = threading.Event()

    def publish() -> None:  # steadily: the delayed standby stays a second behind
        while not stop.is_set():
            events.publish("busy", {"n": 1})
            time.sleep(0.02)

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        delayed, fast = running.name_of(running.delayed, name), running.name_of(running.fast, name)

        def degraded() -> bool:
            body = client.get("/readyz").json
            states = {n: r["state"] for n, r in body["replicas"].items()}
            return body["status"] == "degraded" and states == {delayed: "lagging", fast: "unreachable"}

        wait_until(degraded, timeout=20)
        readyz = client.get("/readyz")
        assert readyz.status_code == 200
        assert readyz.json["replicas"][delayed]["lag_seconds"] > 0.3
        text_metrics = client.get("/metrics").text
        assert f'eventlog_replica_in_use{{replica="{fast}"}} 0.0' in text_metrics
        assert f'eventlog_replica_in_use{{replica="{delayed}"}} 0.0' in text_metrics
        before = replica_reads_in_process("primary")
        head = events.hub.cursor or primary_head(running, name)
        page = client.get("/streams/busy/events?limit=1000")
        assert page.status_code == 200
        assert [e["id"] for e in page.json["events"]][:head] == list(range(1, head + 1))
        assert [message for message in replay(events, ["busy"], 0, head) if message[0] == "reset"] == []
        assert sum(1 for _ in events.events(EventFilter(streams=("busy",)))) >= head
        assert replica_reads_in_process("primary") > before
    finally:
        stop.set()
        publisher.join()
    running.fast.start()
    wait_until(lambda: client.get("/readyz").json["replicas"][fast]["state"] == "ok", timeout=20)
    wait_until(lambda: client.get("/readyz").json["status"] == "ready", timeout=20)


def test_audit_pages_from_replicas_equal_the_primarys_once_caught_up(
    running: Replicated, app_on: Callable[..., Flask]
) -> None:
    name = running.database()
    replicated = app_on(name, [running.delayed, running.fast], REPLICA_MAX_LAG_SECONDS=30)
    primary_only = app_on(name, [])
    events: EventLog = replicated.extensions["eventlog"]
    for n in range(250):
        events.publish(f"s{n % 3}", {"n": n}, type=f"t{n % 2}")
    wait_until(lambda: all(caught_up(node, running, name) for node in (running.delayed, running.fast)), timeout=30)
    wait_until(lambda: all(s.head == 250 for s in events.replica_states().values()), timeout=10)
    before = sum(replica_reads_in_process(running.name_of(n, name)) for n in (running.delayed, running.fast))

    def walk(app: Flask, url: str) -> list[dict[str, Any]]:
        pages = []
        client = app.test_client()
        while url:
            body = client.get(url).json
            pages.append(body)
            url = body["next"] and body["next"].removeprefix("http://localhost")
        return pages

    for url in ("/events?limit=40", "/streams/s1/events?limit=17&order=desc", "/events?stream=s0&stream=s2&type=t1&limit=30"):
        assert walk(replicated, url) == walk(primary_only, url)
    after = sum(replica_reads_in_process(running.name_of(n, name)) for n in (running.delayed, running.fast))
    assert after - before >= 10  # the pages came from the standbys


def test_prune_while_replicas_lag_never_leaves_a_silent_gap_nor_a_false_reset(
    running: Replicated, app_on: Callable[..., Flask]
) -> None:
    """Retention deletes on the primary while the delayed standby has not replayed it yet:
    replays from the standby (still holding the events) and, later, from the standby that
    has replayed the prune, each send every event after the resume point or say what is
    gone with a reset, and never a reset for events they then send."""
    name = running.database()
    app = app_on(name, [running.delayed], REPLICA_MAX_LAG_SECONDS=30, RETAIN_EVENTS=50)
    events: EventLog = app.extensions["eventlog"]
    for n in range(200):
        events.publish("p", {"n": n})
    wait_until(lambda: caught_up(running.delayed, running, name), timeout=30)
    wait_until(lambda: all(s.head == 200 for s in events.replica_states().values()), timeout=10)
    delayed = running.name_of(running.delayed, name)
    assert events.prune() == 150
    outcomes = []
    lagged = False
    for moment in ("before the standby replays the prune", "after"):
        before = replica_reads_in_process(delayed)
        for resume in (0, 60, 149, 150, 170):
            got = replay(events, ["p"], resume, 200)
            outcomes.append((moment, resume, got))
            assert_no_silent_gap_nor_false_reset(resume, got)
            assert got[-1] == ("message", 200)
        assert replica_reads_in_process(delayed) > before, "read from the standby"
        if moment != "after":
            lagged = running.delayed.sql("SELECT count(*) FROM eventlog_pruned_streams", name) == "0"
        time.sleep(1.5)  # the standby replays the prune (recovery_min_apply_delay)
    resets_before = [r for m, r, got in outcomes if m != "after" and any(k == "reset" for k, _ in got)]
    resets_after = [r for m, r, got in outcomes if m == "after" and any(k == "reset" for k, _ in got)]
    if lagged:  # (on a very slow machine the standby may have replayed the prune already)
        assert resets_before == []  # the standby still held every event: nothing to tell
    assert resets_after == [0, 60, 149]


@pytest.fixture
def slow_worker() -> Iterator[threading.Event]:
    """While set, every engine's reader gets back to its session only 0.5 s after each page
    read's answer, as a worker busy with its other connections would. (Requested before
    ``app_on``, it outlives the apps' threads, which read the listeners.)"""
    holding = threading.Event()

    def held_up(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if holding.is_set() and "FROM eventlog_events" in statement and "ORDER BY" in statement:
            time.sleep(0.5)

    sqlalchemy.event.listen(Engine, "after_cursor_execute", held_up)
    yield holding
    sqlalchemy.event.remove(Engine, "after_cursor_execute", held_up)


@pytest.mark.parametrize("source", ["primary", "replica"])
def test_a_replay_page_holds_no_transaction_while_its_reader_waits_for_the_worker(
    running: Replicated, slow_worker: threading.Event, app_on: Callable[..., Flask], source: str
) -> None:
    """A replay whose worker gets back to it only long after each page's answer still reads
    every page and what was pruned, from the primary and from a standby: no session waits
    idle in a transaction meanwhile, which PostgreSQL would end
    (``idle_in_transaction_session_timeout``, here 0.1 s)."""
    name = running.database()
    replicas = [running.fast] if source == "replica" else []
    # Written and pruned by an app of the usual timeouts: the prune's own transaction would
    # not survive a 0.1 s idle limit on a busy machine, and is not what this is about.
    writer: EventLog = app_on(name, [], RETAIN_EVENTS=50).extensions["eventlog"]
    for n in range(200):
        writer.publish("p", {"n": n})
    assert writer.prune() == 150
    app = app_on(name, replicas, IDLE_IN_TRANSACTION_TIMEOUT_SECONDS=0.1)
    events: EventLog = app.extensions["eventlog"]
    wait_until(lambda: caught_up(running.fast, running, name), timeout=30)
    wait_until(lambda: running.fast.sql("SELECT count(*) FROM eventlog_pruned_streams", name) == "1", timeout=30)
    if replicas:
        wait_until(lambda: all(s.head == 200 and s.state == "ok" for s in events.replica_states().values()), timeout=10)
    before = replica_reads_in_process(running.name_of(running.fast, name))
    slow_worker.set()
    got = replay(events, ["p"], 0, 200)
    assert got == [("reset", 0)] + [("message", id) for id in range(151, 201)]
    if replicas:
        assert replica_reads_in_process(running.name_of(running.fast, name)) > before


def assert_no_silent_gap_nor_false_reset(resume: int, got: list[tuple[str, int]]) -> None:
    """Events of one stream whose ids were consecutive when published: each jump comes right
    after a reset, and each reset is followed by a jump."""
    cursor, told = resume, False
    for kind, id in got:
        if kind == "reset":
            assert id == cursor, (resume, got[:5])
            told = True
            continue
        if told:
            assert id > cursor + 1, f"a false reset: {cursor + 1} followed it (resume {resume})"
        else:
            assert id == cursor + 1, f"a silent gap after {cursor} (resume {resume})"
        cursor, told = id, False


@pytest.mark.parametrize(
    ("primary", "replicas"),
    [
        ("sqlite:///log.db", "postgresql://db2/log"),  # SQLite has no replicas
        ("postgresql://db1/log", "mysql://db2/log"),  # MySQL replicas are not supported
        ("postgresql://db1/log", "not a url"),
    ],
)
def test_replica_urls_must_be_postgresql_standbys_of_a_postgresql_primary(primary: str, replicas: str) -> None:
    with pytest.raises(ConfigError, match="EVENTLOG_DATABASE_REPLICA_URLS"):
        Settings.from_config({"EVENTLOG_DATABASE_URL": primary, "EVENTLOG_DATABASE_REPLICA_URLS": replicas})


def test_replica_urls_are_read_in_order_with_the_psycopg_driver() -> None:
    settings = Settings.from_config(
        {"EVENTLOG_DATABASE_URL": "postgresql://db1/log", "EVENTLOG_DATABASE_REPLICA_URLS": " postgres://db2/log, postgresql://db3/log "}
    )
    assert settings.replica_urls == ["postgresql+psycopg://db2/log", "postgresql+psycopg://db3/log"]
