"""Event times never decrease along ids, so ``since``/``until`` are exact id ranges that an
index finds, on any table size."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import fresh_postgres_database
from sqlalchemy import Engine, MetaData, event, insert, select, text, update

from eventlog import EventFilter, NewEvent, StoredEvent
from eventlog.events import utc
from eventlog.database import make_engine
from eventlog.migrate import upgrade
from eventlog.models import Counter, Event
from eventlog.store import Publish, append_all, read_page


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def publish(engine: Engine, *events: NewEvent) -> list[StoredEvent]:
    with engine.begin() as conn:
        [outcome] = append_all(conn, [Publish(events)])
    return outcome.events  # type: ignore[union-attr]


def ids(engine: Engine, **where: Any) -> list[int]:
    with engine.connect() as conn:
        return [e.id for e in read_page(conn, EventFilter(**where), limit=1000).events]


def stored_times(engine: Engine) -> list[datetime]:
    with engine.connect() as conn:
        return [utc(t) for t in conn.execute(select(Event.time).order_by(Event.id)).scalars()]


def test_a_publish_after_a_clock_step_back_keeps_the_order(engine: Engine) -> None:
    """If the clock that stamped the last event was ahead (another host's, or this one's
    before it stepped back), the next event is stamped no earlier than it."""
    [first] = publish(engine, NewEvent("s", "t", "1"))
    ahead = first.time + timedelta(hours=1)
    with engine.begin() as conn:
        conn.execute(update(Event).where(Event.id == first.id).values(time=ahead))
        conn.execute(update(Counter).values(last_time=ahead))

    [second] = publish(engine, NewEvent("s", "t", "2"))

    assert second.time == ahead
    assert stored_times(engine) == [ahead, ahead]
    assert ids(engine, since=ahead) == [first.id, second.id]
    assert ids(engine, until=ahead) == []


def test_racing_publishers_store_times_in_id_order(engine: Engine) -> None:
    def write(writer: int) -> None:
        for n in range(60):
            publish(engine, NewEvent(f"w{writer}", "t", str(n)))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    times = stored_times(engine)
    assert len(times) == 240
    assert times == sorted(times)


def test_time_filters_are_exact_at_ties_and_edges(engine: Engine) -> None:
    a = publish(engine, *(NewEvent("a", "t", str(n)) for n in range(3)))  # one time, three ids
    b = publish(engine, NewEvent("b", "t", "3"))
    c = publish(engine, *(NewEvent("a", "t", str(n)) for n in range(4, 6)))
    everything = [e.id for e in a + b + c]
    tie, middle, last = a[0].time, b[0].time, c[0].time
    assert tie < middle < last
    second = timedelta(seconds=1)

    assert ids(engine, since=tie) == everything
    assert ids(engine, since=tie - second) == everything
    assert ids(engine, since=middle) == everything[3:]
    assert ids(engine, since=last + second) == []
    assert ids(engine, until=tie) == []
    assert ids(engine, until=middle) == everything[:3]
    assert ids(engine, until=last) == everything[:4]
    assert ids(engine, until=last + second) == everything
    assert ids(engine, since=middle, until=last) == [b[0].id]
    assert ids(engine, since=tie, until=last, streams=("a",)) == everything[:3]
    assert ids(engine, since=tie, after=a[1].id, before=c[1].id) == everything[2:5]
    with engine.connect() as conn:
        newest_first = read_page(conn, EventFilter(until=last), limit=2, newest_first=True)
    assert [e.id for e in newest_first.events] == [everything[3], everything[2]]


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_at_0003(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A database migrated to revision 0003, before times were ordered."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
        upgrade(engine, "0003")
        yield engine
        engine.dispose()
        return
    with fresh_postgres_database("eventlog_times") as engine:
        upgrade(engine, "0003")
        yield engine


def test_upgrade_orders_the_times_already_stored(engine_at_0003: Engine) -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    # Offsets in seconds, by id: two raced publishes (3 before 2) and a host ahead (id 4).
    offsets = [0, 2, 1, 60, 3, 4]
    rows = [
        {"id": n, "stream": "s", "type": "t", "data": str(n), "time": start + timedelta(seconds=s)}
        for n, s in enumerate(offsets, start=1)
    ]
    # The tables as 0003 named them (0005 renamed them).
    old_events = Event.__table__.to_metadata(MetaData(), name="events")
    with engine_at_0003.begin() as conn:
        conn.execute(insert(old_events), rows)
        conn.execute(text("UPDATE event_counter SET last_id = 6"))

    upgrade(engine_at_0003)

    expected = [start + timedelta(seconds=s) for s in itertools.accumulate(offsets, max)]
    assert stored_times(engine_at_0003) == expected
    with engine_at_0003.connect() as conn:
        last_time = conn.execute(select(Counter.last_time)).scalar_one()
    assert last_time is not None and utc(last_time) == expected[-1]
    assert ids(engine_at_0003, since=start + timedelta(seconds=2)) == [2, 3, 4, 5, 6]
    [new] = publish(engine_at_0003, NewEvent("s", "t", "7"))
    assert new.time >= expected[-1]


# --- plans on PostgreSQL -----------------------------------------------------------------

ROWS = 200_000
LIMIT = 100
# A page walks at most this many rows, whatever the table's size: every filter reads from
# an index in id order, passing over at most the other streams' or types' interleaved rows.
MOST_ROWS_READ = 50 * (LIMIT + 1)
START = datetime(2026, 11, 1, tzinfo=UTC)
SPACING = timedelta(seconds=2.592)  # 30 days over a million rows
FILTERS: dict[str, dict[str, Any]] = {
    "stream": {"streams": ("stream-7",)},
    "type": {"types": ("type-3",)},
    "after/before": {"after": ROWS * 9 // 10, "before": ROWS * 99 // 100},
    "since": {"since": START + SPACING * (ROWS * 97 // 100)},
    "until": {"until": START + SPACING * (ROWS * 3 // 100)},
}


@pytest.fixture(scope="module")
def filled_postgres() -> Iterator[Engine]:
    with fresh_postgres_database("eventlog_plans") as engine:
        upgrade(engine)
        with engine.begin() as conn:
            conn.execute(
                text(
                    """
                    INSERT INTO eventlog_events (id, stream, type, data, time)
                    SELECT n, 'stream-' || (n % 30), 'type-' || (n % 10), '{"n":' || n || '}',
                           :start + n * :spacing
                    FROM generate_series(1, :rows) AS n
                    """
                ),
                {"start": START, "spacing": SPACING, "rows": ROWS},
            )
            conn.execute(
                text("UPDATE eventlog_counter SET last_id = :rows, last_time = (SELECT max(time) FROM eventlog_events)"),
                {"rows": ROWS},
            )
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE eventlog_events"))
        yield engine


def rows_read(plan: dict[str, Any]) -> Iterator[tuple[str, int]]:
    """Each scan node of an EXPLAIN (ANALYZE, FORMAT JSON) plan, with the rows it read."""
    if "Scan" in plan["Node Type"]:
        read = plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0)
        yield plan["Node Type"], read * plan["Actual Loops"]
    for child in plan.get("Plans", []):
        yield from rows_read(child)


@pytest.mark.parametrize("newest_first", [False, True], ids=["asc", "desc"])
@pytest.mark.parametrize(
    "chosen",
    [c for size in range(1, 4) for c in itertools.combinations(FILTERS, size)],
    ids=lambda chosen: "+".join(chosen),
)
def test_every_filter_combination_reads_about_a_page(
    filled_postgres: Engine, chosen: tuple[str, ...], newest_first: bool
) -> None:
    """No documented filter makes an audit page walk the table: each node of the plan
    PostgreSQL runs reads a bounded number of rows on a table of 200,000."""
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    where = EventFilter(**{k: v for name in chosen for k, v in FILTERS[name].items()})
    with filled_postgres.connect() as conn:
        event.listen(conn, "before_cursor_execute", capture)
        read_page(conn, where, limit=LIMIT, newest_first=newest_first, max_bytes=8 << 20)
        event.remove(conn, "before_cursor_execute", capture)
        statement, parameters = captured.pop()
        [plan] = conn.exec_driver_sql(
            "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + statement, parameters
        ).scalar_one()
    scans = list(rows_read(plan["Plan"]))
    assert scans, plan
    assert all(read <= MOST_ROWS_READ for _, read in scans), scans
