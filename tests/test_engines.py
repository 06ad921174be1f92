"""What every engine keeps (``eventlog/engines/base.py``), checked on each: names and keys
compare exactly, data comes back byte for byte however large the batch, times are read under
the counter's lock with microseconds, and nothing outside the seam knows an engine."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine

from eventlog import EventFilter, EventLog, NewEvent, create_app
from eventlog.database import backend_of, make_engine
from eventlog.retention import Policy, prune
from eventlog.store import Publish, append_all, head, snapshot

PACKAGE = Path(__file__).resolve().parent.parent / "eventlog"
MIB = 1024 * 1024


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def data_of(client: FlaskClient, path: str) -> list[object]:
    response = client.get(path)
    assert response.status_code == 200, response.text
    return [e["data"] for e in response.get_json()["events"]]


def test_stream_names_and_types_compare_exactly(client: FlaskClient) -> None:
    """Case counts: a subscriber of ``orders`` never sees ``Orders`` (MySQL's default
    collation compares neither case nor trailing spaces)."""
    for stream, type_, data in [("Orders", "created", 1), ("orders", "Created", 2), ("orders", "created", 3)]:
        assert client.post(f"/streams/{stream}/events", json={"type": type_, "data": data}).status_code == 201
    assert data_of(client, "/streams/orders/events") == [2, 3]
    assert data_of(client, "/streams/Orders/events") == [1]
    assert data_of(client, "/events?stream=orders&type=created") == [3]
    assert data_of(client, "/events?type=Created") == [2]


def test_idempotency_keys_compare_exactly(eventlog: EventLog) -> None:
    """``k``, ``k `` and ``K`` are three keys: none replays another's publish (a PAD SPACE
    collation, as MySQL's and MariaDB's utf8mb4_bin are, takes ``k `` for ``k``)."""
    stored = [eventlog.publish("s", n, idempotency_key=key) for n, key in enumerate(["k", "k ", "K"])]
    assert [e.id for e in stored] == [1, 2, 3]
    again = eventlog.publish("s", 1, idempotency_key="k ")
    assert again.id == 2
    assert head_of(eventlog) == 3


def head_of(eventlog: EventLog) -> int:
    with eventlog.engine.connect() as conn:
        return head(conn)


BATCH_BYTES = 40 * MIB  # over twice MariaDB's default max_allowed_packet (16 MiB)


# Generous statement and reply bounds: storing 40 MiB within the default ones on a busy machine
# is the limits' business (issue #20); this checks that it is stored whole and exact.
@pytest.mark.settings(
    EVENTLOG_MAX_REQUEST_BYTES=BATCH_BYTES + MIB,
    EVENTLOG_STATEMENT_TIMEOUT_SECONDS=60,
    EVENTLOG_REPLY_TIMEOUT_SECONDS=90,
)
def test_a_batch_as_large_as_a_request_may_be_comes_back_byte_for_byte(
    client: FlaskClient, eventlog: EventLog
) -> None:
    """Forty events of almost 1 MiB each, with 4-byte UTF-8 and U+2028 in them, in one batch:
    stored whole (on MySQL in several statements of one transaction) and read back equal."""
    piece = "😀\u2028\"\\'x\u00e9"  # 4-, 3-, 1-, 1-, 1-, 1- and 2-byte characters, escapes
    unit = len(json.dumps(piece, ensure_ascii=False).encode()) - 2
    values = [f"{n:02d}" + piece * ((MIB - 100) // unit) for n in range(40)]
    body = json.dumps([{"data": v} for v in values], ensure_ascii=False).encode()
    assert BATCH_BYTES - MIB < len(body) <= BATCH_BYTES
    response = client.post("/streams/big/events", data=body, content_type="application/json")
    assert response.status_code == 201, response.text[:200]
    read = [e.data for e in eventlog.events(EventFilter(streams=("big",)))]
    assert read == values


def test_times_have_microseconds_and_are_read_under_the_counter_lock(engine: Engine) -> None:
    """A publish that waits for the counter's lock gets a time from after the wait: the
    clock is read under the lock (MySQL's NOW(6), the statement's start, would be earlier)."""
    hold = 1.0
    waiting: dict[str, object] = {}

    def second() -> None:
        with engine.begin() as conn:
            [outcome] = append_all(conn, [Publish([NewEvent("s", "t", "2")])])
        waiting["outcome"] = outcome

    with engine.begin() as conn:
        [first] = append_all(conn, [Publish([NewEvent("s", "t", "1")])])
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(hold)
    thread.join(timeout=30)
    one, two = first.events[0], waiting["outcome"].events[0]  # type: ignore[union-attr, attr-defined]
    assert two.id == one.id + 1
    assert (two.time - one.time).total_seconds() >= hold * 0.9
    stored = [one.time, two.time]
    with engine.begin() as conn:
        for _ in range(3):
            [outcome] = append_all(conn, [Publish([NewEvent("s", "t", "3")])])
            stored.extend(e.time for e in outcome.events)  # type: ignore[union-attr]
    assert any(t.microsecond for t in stored), stored


def test_an_event_the_database_cannot_take_is_a_413_and_stores_nothing(mysql_url: str) -> None:
    """MySQL refuses a statement over its ``max_allowed_packet`` (16 MiB on MariaDB 10.11)
    and drops the connection: an event that no INSERT can carry is refused before the
    counter is touched, so nothing is stored, no id is used, and the server goes on."""
    app = create_app(
        {"EVENTLOG_DATABASE_URL": mysql_url, "EVENTLOG_MAX_DATA_BYTES": 20 * MIB, "EVENTLOG_MAX_REQUEST_BYTES": 21 * MIB}
    )
    client = app.test_client()
    try:
        response = client.post("/streams/s/events", json={"data": "x" * (17 * MIB)})
        assert response.status_code == 413, response.text[:200]
        assert response.mimetype == "application/problem+json"
        assert "max_allowed_packet" in response.get_json()["detail"]
        stored = client.post("/streams/s/events", json={"data": "after"})
        assert (stored.status_code, stored.get_json()["id"]) == (201, 1)
    finally:
        app.extensions["eventlog"].close()


# What only the seam may know: a dialect's name, a SQLSTATE, a driver's module.
ENGINE_KNOWLEDGE = re.compile(r"dialect\.name|sqlstate|^\s*(import|from) (sqlite3|psycopg|pymysql)\b", re.M)


def test_only_the_seam_knows_the_engines() -> None:
    outside = [p for p in PACKAGE.glob("*.py") if p.name != "database.py"]
    assert outside
    knowing = {p.name: ENGINE_KNOWLEDGE.findall(p.read_text()) for p in outside}
    assert {name: found for name, found in knowing.items() if found} == {}


def test_an_unsupported_engine_stops_the_app_with_one_line() -> None:
    with pytest.raises(Exception, match=r"^EVENTLOG_DATABASE_URL: eventlog runs on SQLite, PostgreSQL, MySQL or MariaDB, not oracle$"):
        create_app({"EVENTLOG_DATABASE_URL": "oracle://db/x"})


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("postgres://u@h/db", "postgresql+psycopg"),
        ("postgresql://u@h/db", "postgresql+psycopg"),
        ("mysql://u@h/db", "mysql+pymysql"),
        ("mariadb://u@h/db", "mariadb+pymysql"),
        ("mysql+pymysql://u@h/db", "mysql+pymysql"),
    ],
)
def test_bare_urls_get_eventlog_s_driver(given: str, driver: str) -> None:
    app: Flask = create_app({"EVENTLOG_DATABASE_URL": given})
    try:
        assert app.extensions["eventlog"].settings.database_url.startswith(f"{driver}://")
    finally:
        app.extensions["eventlog"].close()


@pytest.mark.parametrize("database_url", ["postgresql", "mysql"], indirect=True)
def test_one_pruner_at_a_time(engine: Engine) -> None:
    """While a session holds the cluster's pruning lock (PostgreSQL's advisory lock, MySQL's
    GET_LOCK), another prune skips its turn; once it is released, pruning goes on."""
    with engine.begin() as conn:
        append_all(conn, [Publish([NewEvent("s", "t", str(n)) for n in range(3)])])
    keep_one = Policy(events=1)
    with engine.connect() as holder, backend_of(holder).prune_lock(holder) as taken:
        assert taken
        assert prune(engine, keep_one) is None
    assert prune(engine, keep_one) == 2


def test_a_snapshot_holds_one_moment_and_leaves_the_pooled_session_as_it_was(server_url: str) -> None:
    """Reads on ``store.snapshot`` all see the log as it was at the first of them, however
    many commits come meanwhile; the same pooled session, checked out again, reads each
    statement's own moment (READ COMMITTED, which the writer's counter relies on). SQLite
    has one level: every transaction is one snapshot."""
    engine = make_engine(server_url)
    one_session = make_engine(server_url, pool_size=1, max_overflow=0)

    def publish(n: int) -> None:
        with engine.begin() as conn:
            append_all(conn, [Publish([NewEvent("s", "t", str(n))])])

    try:
        publish(1)
        with snapshot(one_session) as conn:
            assert head(conn) == 1
            publish(2)
            assert head(conn) == 1
        with one_session.connect() as conn:
            assert head(conn) == 2
            publish(3)
            assert head(conn) == 3
    finally:
        one_session.dispose()
        engine.dispose()
