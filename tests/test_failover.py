"""Failover on real PostgreSQL streaming replication: servers follow a promoted standby through
a multi-host URL (``target_session_attrs=read-write``), and a promotion never makes a
subscriber skip an event silently.

Each test builds its own primary and standby (a promotion ends the pair), in a couple of seconds.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from cluster import audit
from helpers import SHORT_TIMEOUTS, KeyedPublisher, assert_stored_once, wait_until
from replication import Cluster, Node, available
from test_replicas import Reconnecting

from conftest import Server, unavailable
from eventlog.database import make_engine
from eventlog.migrate import upgrade


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    reason = available()
    if reason is not None:
        unavailable(reason)
    built = Cluster()
    try:
        yield built
    finally:
        built.close()


def database(cluster: Cluster, standby: Node) -> str:
    name = f"failover_{uuid.uuid4().hex[:10]}"
    cluster.primary.sql(f'CREATE DATABASE "{name}"')
    engine = make_engine(cluster.primary.url(name))
    upgrade(engine)
    engine.dispose()
    wait_until(lambda: standby.sql("SELECT count(*) FROM eventlog_counter", name) == "1", timeout=30)
    return name


def multi_host(database: str, *nodes: Node) -> str:
    """libpq's multi-host URL: the first of ``nodes`` that accepts writes."""
    hosts = "&".join(f"host=127.0.0.1:{node.port}" for node in nodes)
    return f"postgresql://postgres@/{database}?{hosts}&target_session_attrs=read-write"


def test_synchronous_standby_promoted_mid_run_loses_and_duplicates_nothing(
    cluster: Cluster, start_server: Callable[..., Server]
) -> None:
    """Publishers retrying with their keys and subscribers reconnecting at random, while the
    primary dies and its synchronous standby is promoted: every event stored once, every
    subscriber gets each once, in order, with no reset."""
    standby = cluster.standby("sync", synchronous=True)
    cluster.wait_streaming(standby)
    name = database(cluster, standby)
    server = start_server(
        multi_host(name, cluster.primary, standby), POLL_SECONDS=0.2, HEARTBEAT_SECONDS=0.2,
        **SHORT_TIMEOUTS,
    )
    publishers = [KeyedPublisher(server.url, f"p{n}", stream="keyed", timeout=10) for n in range(2)]
    done = threading.Event()
    subscribers = [Reconnecting(server.url, "keyed") for _ in range(3)]
    last = [10**9]  # known once the publishers have settled
    threads = [threading.Thread(target=s.follow, args=(done, last), daemon=True) for s in subscribers]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    cluster.primary.stop("immediate")
    standby.promote()
    time.sleep(3)  # publishing resumes on the new primary
    for publisher in publishers:
        publisher.stop()
    stored: dict[str, dict[str, Any]] = {}
    for publisher in publishers:
        stored.update(publisher.settle(server.url))
    log = audit(server.url)
    assert_stored_once(log, publishers, stored)
    attempts = [a for p in publishers for a in p.attempts]
    assert any(a.event is None for a in attempts), "no publish met the failover"
    assert len(attempts) > 20
    last[0] = log[-1]["id"]
    done.set()
    for thread in threads:
        thread.join(timeout=60)
    for subscriber in subscribers:
        assert subscriber.resets == []
        assert subscriber.ids == [e["id"] for e in log]


def test_asynchronous_standby_promoted_without_events_never_lets_a_subscriber_skip_new_ones(
    cluster: Cluster, start_server: Callable[..., Server]
) -> None:
    """Events 51-80 reach subscribers but never the asynchronous standby, which is then
    promoted: new events never reuse those ids unannounced. Whoever saw a lost event (or
    resumes from before them) gets a reset and then every new event. A second standby that
    received the lost events (it cannot follow the new timeline) is left out of reads."""
    standby = cluster.standby("async")
    diverged = cluster.standby("diverged")
    cluster.wait_streaming(standby)
    cluster.wait_streaming(diverged)
    name = database(cluster, standby)
    wait_until(lambda: diverged.sql("SELECT count(*) FROM eventlog_counter", name) == "1", timeout=30)
    server = start_server(
        multi_host(name, cluster.primary, standby), POLL_SECONDS=0.2, HEARTBEAT_SECONDS=0.2,
        DATABASE_REPLICA_URLS=diverged.url(name), REPLICA_MAX_LAG_SECONDS=30, **SHORT_TIMEOUTS,
    )
    with httpx.Client(timeout=10) as client:
        for n in range(50):
            assert client.post(f"{server.url}/streams/a/events", json={"data": f"old-{n}"}).status_code == 201
    wait_until(lambda: standby.sql("SELECT last_id FROM eventlog_counter", name) == "50", timeout=30)
    standby.stop("fast")  # from here on it receives nothing
    done = threading.Event()
    live = Reconnecting(server.url, "a")
    last = [10**9]
    follower = threading.Thread(target=live.follow, args=(done, last), daemon=True)
    follower.start()
    with httpx.Client(timeout=10) as client:
        for n in range(50, 80):
            assert client.post(f"{server.url}/streams/a/events", json={"data": f"old-{n}"}).status_code == 201
    wait_until(lambda: live.ids[-1:] == [80], timeout=30)
    cluster.primary.stop("immediate")  # events 51-80 were acknowledged and are lost
    standby.start()
    standby.promote()
    new = []
    with httpx.Client(timeout=10) as client:
        for n in range(40):
            def stored(n: int = n) -> bool:
                response = client.post(f"{server.url}/streams/a/events", json={"data": f"new-{n}"})
                if response.status_code == 201:
                    new.append(response.json()["id"])
                return response.status_code == 201

            wait_until(stored, timeout=30, interval=0.2)
    replica = f"127.0.0.1:{diverged.port}/{name}"
    wait_until(
        lambda: httpx.get(f"{server.url}/readyz").json()["replicas"][replica]["state"] == "behind a failover",
        timeout=10,
    )
    log = audit(server.url)  # not from the diverged standby, which still holds old-50..old-79
    assert [e["data"] for e in log] == [f"old-{n}" for n in range(50)] + [f"new-{n}" for n in range(40)]
    last[0] = new[-1]
    done.set()
    follower.join(timeout=60)
    assert live.resets, "the subscriber that saw the lost events was told"
    assert live.ids[-40:] == new
    for resume in (40, 65, 80):  # before the loss, inside it, at its end
        late = Reconnecting(server.url, "a")
        late.follow(done, new[-1], start=resume)
        assert late.resets, resume
        assert late.ids[-40:] == new, resume
    assert min(new) > 80  # no id a subscriber saw is handed out again
