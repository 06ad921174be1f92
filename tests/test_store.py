"""The log itself: gap-free ids in commit order, atomic batches, idempotency, the embedding seam."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.orm import Session

from eventlog import Appended, EventFilter, IdempotencyConflict, NewEvent, StoredEvent
from eventlog.database import make_engine
from eventlog.models import Event
from eventlog.store import Publish, append_all, head, read_page


def append(db: Connection | Session, events: list[NewEvent], *, idempotency_key: str | None = None) -> Appended:
    """One publish in the caller's transaction, as ``EventLog.publish(..., session=db)`` makes it."""
    conn = db.connection() if isinstance(db, Session) else db
    [outcome] = append_all(conn, [Publish(events, idempotency_key)])
    if isinstance(outcome, IdempotencyConflict):
        raise outcome
    return outcome


def query(conn: Connection, where: EventFilter, *, limit: int) -> list[StoredEvent]:
    return read_page(conn, where, limit=limit).events


@pytest.fixture
def engine(database_url: str) -> Engine:
    engine = make_engine(database_url, pool_size=12) if "postgresql" in database_url else make_engine(database_url)
    yield engine
    engine.dispose()


def events(n: int, stream: str = "s") -> list[NewEvent]:
    return [NewEvent(stream, "t", str(i)) for i in range(n)]


def count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Event)).scalar_one())


def test_concurrent_publishers_never_let_a_follower_skip_an_id(engine: Engine) -> None:
    """Invariant 1: 8 threads append 2,000+ events; a follower reading ``id > cursor``
    sees every id from 1 to N exactly once, in order. With ids that are assigned at insert
    but become visible at commit (a plain autoincrement), the follower skips ids."""
    writers, per_writer = 8, 50
    sizes = [1, 1, 1, 5, 20]  # singles and batches: 280 events per writer
    done = threading.Event()
    seen: list[int] = []

    def follow() -> None:
        cursor = 0
        while True:
            finished = done.is_set()
            with engine.connect() as conn:
                page = query(conn, EventFilter(after=cursor), limit=500)
            seen.extend(e.id for e in page)
            if page:
                cursor = page[-1].id
            elif finished:
                return

    def write(writer: int) -> int:
        rng = random.Random(writer)
        written = 0
        for i in range(per_writer):
            size = sizes[i % len(sizes)]
            with engine.begin() as conn:
                append(conn, events(size, f"w{writer}"))
                # Widen the window between taking ids and committing them.
                time.sleep(rng.random() / 1000)
            written += size
        return written

    follower = threading.Thread(target=follow)
    follower.start()
    with ThreadPoolExecutor(writers) as pool:
        total = sum(pool.map(write, range(writers)))
    done.set()
    follower.join(timeout=60)

    assert total == 2240
    assert seen == list(range(1, total + 1))
    with engine.connect() as conn:
        assert head(conn) == total


def test_batch_gets_consecutive_ids_and_one_time(engine: Engine) -> None:
    with engine.begin() as conn:
        append(conn, events(1))
        result = append(conn, events(3))
    assert [e.id for e in result.events] == [2, 3, 4]
    assert len({e.time for e in result.events}) == 1


def test_rolled_back_publish_leaves_no_gap(engine: Engine) -> None:
    with engine.begin() as conn:
        append(conn, events(2))
    with pytest.raises(RuntimeError), engine.begin() as conn:
        append(conn, events(5))
        raise RuntimeError("the caller's transaction fails after appending")
    with engine.begin() as conn:
        result = append(conn, events(1))
    assert result.events[0].id == 3
    assert count(engine) == 3


def test_append_joins_the_callers_orm_session(engine: Engine) -> None:
    """The embedding seam: events appended in an application's Session commit or roll
    back with the application's own writes."""
    with Session(engine) as session:
        append(session, events(1, "orders"))
        session.rollback()
    assert count(engine) == 0
    with Session(engine) as session, session.begin():
        stored = append(session, events(2, "orders")).events
    assert [e.id for e in stored] == [1, 2]
    with engine.connect() as conn:
        assert [e.data_json for e in query(conn, EventFilter(streams=("orders",)), limit=10)] == ["0", "1"]


def test_idempotency_key_returns_first_result_and_stores_nothing_new(engine: Engine) -> None:
    with engine.begin() as conn:
        first = append(conn, events(2), idempotency_key="k1")
    with engine.begin() as conn:
        again = append(conn, events(2), idempotency_key="k1")
    assert again.replayed and not first.replayed
    assert again.events == first.events
    assert count(engine) == 2


def test_idempotency_key_reused_for_other_events_is_refused(engine: Engine) -> None:
    with engine.begin() as conn:
        append(conn, events(1), idempotency_key="k1")
    with pytest.raises(IdempotencyConflict), engine.begin() as conn:
        append(conn, events(2), idempotency_key="k1")
    assert count(engine) == 1


def test_concurrent_retries_with_one_key_store_once(engine: Engine) -> None:
    """A client that retries while its first attempt is still running gets one event."""
    barrier = threading.Barrier(6)

    def attempt(_: int) -> list[int]:
        barrier.wait()
        with engine.begin() as conn:
            return [e.id for e in append(conn, events(3), idempotency_key="same").events]

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(attempt, range(6)))
    assert all(r == [1, 2, 3] for r in results)
    assert count(engine) == 3


def test_stored_data_comes_back_byte_for_byte(engine: Engine) -> None:
    """The JSON text of each event survives the trip through the database unchanged."""
    import json

    values = [
        {"text": "line\u2028sep\u2029para\u0085next\x0cfeed"},
        {"quote": '"\\\'', "nul": "\u0000", "emoji": "😀", "tab": "\t"},
        [1.5, -0.0, 1e300, None, True, "é"],
        "just a string",
    ]
    batch = [NewEvent("s", "t", json.dumps(v, ensure_ascii=False, separators=(",", ":"))) for v in values]
    with engine.begin() as conn:
        stored = append(conn, batch).events
    with engine.connect() as conn:
        read = query(conn, EventFilter(), limit=10)
    assert [e.data_json for e in read] == [e.data_json for e in stored] == [e.data for e in batch]
    assert [e.data for e in read] == values
