"""Group commit: concurrent publishes share transactions without losing their own outcomes."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import sqlite_database
from helpers import wait_until
from sqlalchemy import event, make_url, text
from sqlalchemy.exc import OperationalError

from eventlog import EventFilter, EventLog, IdempotencyConflict, NewEvent
from eventlog.database import WRITES, make_engine
from eventlog.store import Appended, Publish, append_all, read_page
from eventlog.writer import Writer


def new_events(tag: str, n: int) -> list[NewEvent]:
    return [NewEvent("s", "t", f'"{tag}-{i}"') for i in range(n)]


def test_concurrent_publishes_share_transactions_and_keep_their_ids(eventlog: EventLog) -> None:
    commits = 0

    def count_commit(_conn: object) -> None:
        nonlocal commits
        commits += 1

    event.listen(eventlog.engine, "commit", count_commit)
    threads, rounds = 12, 20
    start = threading.Barrier(threads)

    def publisher(worker: int) -> list[Appended]:
        rng = random.Random(worker)
        start.wait()
        return [
            eventlog.append(new_events(f"{worker}.{r}", rng.choice([1, 1, 3, 10])))
            for r in range(rounds)
        ]

    with ThreadPoolExecutor(threads) as pool:
        results = [a for batch in pool.map(publisher, range(threads)) for a in batch]
    event.remove(eventlog.engine, "commit", count_commit)

    with eventlog.engine.connect() as conn:
        stored = {e.id: e.data_json for e in read_page(conn, EventFilter(), limit=10_000).events}
    total = sum(len(r.events) for r in results)
    assert sorted(stored) == list(range(1, total + 1))
    for result in results:
        ids = [e.id for e in result.events]
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # each publish: consecutive ids
        assert [stored[e.id] for e in result.events] == [e.data_json for e in result.events]
    assert commits < threads * rounds  # some publishes did share a transaction


def test_shared_transaction_keeps_each_idempotency_outcome(eventlog: EventLog) -> None:
    with eventlog.engine.begin() as conn:
        outcomes = append_all(conn, [
            Publish(new_events("a", 2), "key"),
            Publish(new_events("a", 2), "key"),  # a retry inside the same transaction
            Publish(new_events("b", 1), "key"),  # the key reused for other events
            Publish(new_events("c", 1)),
        ])
    first, repeat, conflict, plain = outcomes
    assert isinstance(first, Appended) and [e.id for e in first.events] == [1, 2]
    assert isinstance(repeat, Appended) and repeat.replayed and repeat.events == first.events
    assert isinstance(conflict, IdempotencyConflict)
    assert isinstance(plain, Appended) and [e.id for e in plain.events] == [3]


def test_concurrent_retries_through_the_writer_store_once(eventlog: EventLog) -> None:
    start = threading.Barrier(8)

    def retry(_: int) -> list[int]:
        start.wait()
        return [e.id for e in eventlog.append(new_events("x", 3), idempotency_key="once").events]

    with ThreadPoolExecutor(8) as pool:
        assert set(map(tuple, pool.map(retry, range(8)))) == {(1, 2, 3)}
    with eventlog.engine.connect() as conn:
        assert len(read_page(conn, EventFilter(), limit=100).events) == 3


def test_writer_replaces_its_connection_after_the_server_drops_it(postgres_url: str) -> None:
    """The writer keeps one connection for single-statement batches. When the database ends
    it (a restart, a failover), the batch on it fails and the next one gets a new connection
    instead of failing on the dead one forever."""
    # Named, so that only this engine's connections end: the session's shared engine keeps its own.
    engine = make_engine(
        make_url(postgres_url).update_query_dict({"application_name": "writer-reconnect-test"})
    )
    announced: list[tuple[int, int]] = []
    writer = Writer(engine, lambda events: announced.append((events[0].id, events[-1].id)))
    assert writer.write(Publish(new_events("a", 1))).events[0].id == 1
    with engine.connect() as admin:
        ended = admin.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'writer-reconnect-test' AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    assert ended >= 1
    with pytest.raises(OperationalError):
        writer.write(Publish(new_events("b", 1)))
    assert writer.write(Publish(new_events("c", 2))).events[-1].id == 3
    writer.close()
    engine.dispose()
    assert announced == [(1, 1), (2, 3)]


@pytest.mark.parametrize("max_bytes", [None, 1000])
def test_a_shared_transaction_holds_at_most_max_bytes_of_data(tmp_path: Path, max_bytes: int | None) -> None:
    """Publishes queued together share one transaction, but never more data than
    ``max_bytes`` (what one request may send, known to store within the timeouts): several
    large batches at once must not add up to a statement past the statement timeout."""
    engine = make_engine(sqlite_database(tmp_path))
    announced: list[tuple[int, int]] = []
    writer = Writer(engine, lambda events: announced.append((events[0].id, events[-1].id)), max_bytes=max_bytes)
    big = [NewEvent("s", "t", '"' + "x" * 598 + '"')]  # 600 bytes: two exceed 1000
    with engine.execution_options(**WRITES).connect() as blocker:
        hold = blocker.begin()  # BEGIN IMMEDIATE: the first publish waits for SQLite's lock
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(writer.write, Publish(big))
            wait_until(lambda: writer._busy)
            rest = [pool.submit(writer.write, Publish(big)) for _ in range(3)]
            wait_until(lambda: len(writer._queue) == 3)
            hold.rollback()
            ids = [f.result(timeout=30).events[0].id for f in [first, *rest]]
    writer.close()
    engine.dispose()
    assert sorted(ids) == [1, 2, 3, 4]
    # The three that queued behind the first: one transaction without a cap, one each with it.
    assert announced == ([(1, 1), (2, 4)] if max_bytes is None else [(1, 1), (2, 2), (3, 3), (4, 4)])
