"""Announcements: after the commit, never before, carrying the stored ids; on real Redis."""

from __future__ import annotations

import json
import logging
import re
import threading
import time

import pytest
import redis
from flask import Flask
from helpers import free_port, wait_until

from eventlog import EventFilter, EventLog, create_app
from eventlog.notify import RedisNotifier, backoff
from eventlog.store import read_page


def visible_ids(eventlog: EventLog, first: int, last: int) -> list[int]:
    """The ids in [first, last] that a separate connection can see (that is, committed)."""
    with eventlog.engine.connect() as conn:
        return [e.id for e in read_page(conn, EventFilter(after=first - 1, before=last + 1), limit=1000).events]


def test_in_process_announcement_follows_the_commit(eventlog: EventLog) -> None:
    heard: list[tuple[int | None, list[int]]] = []

    def ring(last_id: int | None) -> None:
        # Runs inside announce(): whatever is announced must already be committed.
        assert last_id is not None
        heard.append((last_id, visible_ids(eventlog, 1, last_id)))

    stop = threading.Event()
    listener = threading.Thread(target=eventlog.notifier.listen, args=(ring, stop))
    listener.start()
    wait_until(lambda: eventlog.notifier._rings)  # noqa: SLF001  (listening)
    eventlog.publish("a", 1)
    stop.set()
    listener.join()
    assert heard == [(1, [1])]


@pytest.fixture
def redis_app(database_url: str, redis_url: str, redis_channel: str) -> Flask:
    app = create_app(
        {"EVENTLOG_DATABASE_URL": database_url, "EVENTLOG_REDIS_URL": redis_url,
         "EVENTLOG_REDIS_CHANNEL": redis_channel}
    )
    yield app
    app.extensions["eventlog"].close()


def test_redis_announcement_follows_the_commit_and_carries_the_ids(
    redis_app: Flask, redis_url: str, redis_channel: str
) -> None:
    eventlog: EventLog = redis_app.extensions["eventlog"]
    subscriber = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe(redis_channel)
    wait_until(lambda: subscriber.get_message(timeout=0.1) is None and subscriber.subscribed)

    response = redis_app.test_client().post("/streams/a/events", json=[{"data": i} for i in range(3)])
    assert response.status_code == 201
    stored = [e["id"] for e in response.json["events"]]

    message = None
    while message is None:
        message = subscriber.get_message(timeout=5)
    # When the message is heard the rows are already visible to another connection.
    seen_then = visible_ids(eventlog, stored[0], stored[-1])
    subscriber.close()
    assert json.loads(message["data"]) == {"first": stored[0], "last": stored[-1]}
    assert seen_then == stored


def test_idempotent_replay_is_not_announced_again(
    redis_app: Flask, redis_url: str, redis_channel: str
) -> None:
    subscriber = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe(redis_channel)
    wait_until(lambda: subscriber.get_message(timeout=0.1) is None and subscriber.subscribed)
    client = redis_app.test_client()
    for _ in range(2):
        client.post("/streams/a/events", json={"data": 1}, headers={"Idempotency-Key": "once"})
    messages = []
    while (message := subscriber.get_message(timeout=0.5)) is not None:
        messages.append(message)
    subscriber.close()
    assert len(messages) == 1


def test_publish_succeeds_while_redis_is_down(database_url: str) -> None:
    """Invariant 2: the notification is an optimisation; the event is stored regardless."""
    app = create_app(
        {"EVENTLOG_DATABASE_URL": database_url, "EVENTLOG_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    )
    client = app.test_client()
    for i in range(3):
        assert client.post("/streams/a/events", json={"data": i}).status_code == 201
    assert [e["data"] for e in client.get("/events").json["events"]] == [0, 1, 2]
    ready = client.get("/readyz")
    assert ready.status_code == 200  # ready: publishing works, delivery goes on by polling
    assert ready.json == {"status": "degraded", "database": "ok", "redis": "unreachable"}
    app.extensions["eventlog"].close()


def test_redis_listener_rings_on_every_announcement(redis_url: str, redis_channel: str) -> None:
    """Two notifiers on one channel stand for two processes: one hears the other."""
    speaker = RedisNotifier(redis_url, redis_channel)
    hearer = RedisNotifier(redis_url, redis_channel)
    heard: list[int | None] = []
    stop = threading.Event()
    listener = threading.Thread(target=hearer.listen, args=(heard.append, stop))
    listener.start()
    wait_until(lambda: None in heard)  # subscribed: it rings once to re-read what it missed
    speaker.announce(5, 9)
    wait_until(lambda: 9 in heard)
    stop.set()
    listener.join()


def test_announcements_close_together_share_one_publish(redis_url: str, redis_channel: str) -> None:
    """A PUBLISH costs the publishing process about half what storing its batch does: the
    announcements made within ``gather_seconds`` of a PUBLISH go out as one message that
    covers them all. The first, after a quiet spell, goes out at once, alone: an idle
    process's events reach the others without waiting to be gathered."""
    subscriber = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe(redis_channel)
    wait_until(lambda: subscriber.get_message(timeout=0.1) is None and subscriber.subscribed)
    speaker = RedisNotifier(redis_url, redis_channel, gather_seconds=0.1)
    for event_id in range(1, 21):
        speaker.announce(event_id, event_id)
        time.sleep(0.002)  # 20 announcements in about 40 ms: each alone with no gathering
    messages = []
    while (message := subscriber.get_message(timeout=0.5)) is not None:
        messages.append(json.loads(message["data"]))
    speaker.close()
    subscriber.close()
    assert messages == [{"first": 1, "last": 1}, {"first": 2, "last": 20}]


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    assert [backoff(n, 1.0, 30.0, draw=lambda: 1.0) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert [backoff(n, 1.0, 30.0, draw=lambda: 0.0) for n in range(3)] == [0.5, 1, 2]


def test_with_redis_down_each_reconnect_waits_longer(caplog: pytest.LogCaptureFixture) -> None:
    """Not a line per second per worker while Redis is away: the waits grow (to a cap)."""
    notifier = RedisNotifier(f"redis://127.0.0.1:{free_port()}/0", "nowhere", retry_seconds=0.05, max_retry_seconds=0.8)
    stop = threading.Event()
    listener = threading.Thread(target=notifier.listen, args=(lambda _: None, stop), daemon=True)
    with caplog.at_level(logging.WARNING, logger="eventlog.notify"):
        listener.start()
        wait_until(lambda: len(caplog.records) >= 7, timeout=10)
        stop.set()
        listener.join(timeout=5)
        notifier.close()
    waits = [float(m) for m in re.findall(r"retrying in ([0-9.]+) s", caplog.text)]
    # Doubling (with jitter in each one's upper half), then between half the cap and the cap.
    assert waits[:5] == sorted(waits[:5]) and waits[0] <= 0.1
    assert all(0.4 <= wait <= 0.8 for wait in waits[4:7])
