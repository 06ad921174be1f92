"""EXPLAIN ANALYZE of the audit query for every documented filter combination.

    python bench/audit_plans.py postgresql+psycopg://postgres@127.0.0.1/scratch [--summary]

Runs ``store.read_page`` as ``EventLog.page`` does (with the byte bound) and prints the plan
PostgreSQL chose for each combination of stream, type, after/before, since and until, in
both orders. Fill the database first, e.g. with one million rows over 30 streams, 10 types
and 30 days:

    INSERT INTO eventlog_events (id, stream, type, data, time)
    SELECT n, 'stream-' || (n % 30), 'type-' || (n % 10), '{"n":' || n || '}',
           timestamptz '2026-11-01' + n * interval '2.592 seconds'
    FROM generate_series(1, 1000000) AS n;
    UPDATE eventlog_counter SET last_id = 1000000, last_time = (SELECT max(time) FROM eventlog_events);
    ANALYZE events;
"""

from __future__ import annotations

import itertools
import sys
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, text

from eventlog.database import make_engine
from eventlog.events import EventFilter
from eventlog.store import read_page

FILTERS: dict[str, dict[str, Any]] = {
    "stream": {"streams": ("stream-7",)},
    "type": {"types": ("type-3",)},
    "after/before": {"after": 900_000, "before": 990_000},
    # Late and early in the month of events: the shapes where id order and time disagree most
    # about where to start, if the plan cannot use that times grow with ids.
    "since": {"since": datetime(2026, 11, 30, tzinfo=UTC)},
    "until": {"until": datetime(2026, 11, 2, tzinfo=UTC)},
}


def main(url: str, summary: bool) -> None:
    engine = make_engine(url)
    captured: list[tuple[str, Any]] = []

    @event.listens_for(engine, "before_cursor_execute")
    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    names = list(FILTERS)
    for size in range(len(names) + 1):
        for chosen in itertools.combinations(names, size):
            where = EventFilter(**{k: v for name in chosen for k, v in FILTERS[name].items()})
            for newest_first in (False, True):
                with engine.connect() as conn:
                    read_page(conn, where, limit=100, newest_first=newest_first, max_bytes=8 << 20)
                    statement, parameters = captured.pop()
                    plan = conn.exec_driver_sql(
                        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + statement, parameters
                    ).scalars().all()
                order = "desc" if newest_first else "asc"
                print(f"== {' + '.join(chosen) or 'no filter'}, {order}, limit 100")
                lines = [line for line in plan if not summary or "Scan" in line or "Execution" in line]
                print("\n".join(lines))
    engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1], "--summary" in sys.argv)
