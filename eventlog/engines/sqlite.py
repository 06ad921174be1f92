"""SQLite: one file, one writer at a time, for the embedded default.

The write lock is the counter's lock: a writing transaction takes it at ``BEGIN IMMEDIATE``
(engines made with ``WRITES``) and holds it until it ends, which serializes publishers (so
commit order is id order) and avoids the deadlock of two transactions that both read, then
try to upgrade to writers. Reads begin deferred, so in WAL mode they never wait for a writer
(an application's open transaction, say), and each sees one moment of the log. The writers
share one host, whose clock the time is read from.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, create_engine, event, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL

from ..events import NewEvent, utc
from ..models import Counter
from .base import WRITE_OPTION, Timeouts, no_lock
from .common import COUNTER_ROW, OnConflict, insert_rows

LOCK_WAIT_SECONDS = 30  # the write lock: SQLite has no other wait to bound
# SQLite's words for a statement that names a table or column the database lacks.
_MISSING_SCHEMA = ("no such table", "no such column", "has no column named")

# Two statements: the first takes the write lock (if the transaction began deferred, as an
# application's may), so the clock is read after it, under the lock.
_ALLOCATE = (
    update(Counter)
    .where(Counter.id == COUNTER_ROW)
    .values(last_id=Counter.last_id + bindparam("count"))
    .returning(Counter.last_id, Counter.last_time)
)
_STAMP = update(Counter).where(Counter.id == COUNTER_ROW).values(last_time=bindparam("time"))


class SQLite(OnConflict):
    name = "sqlite"
    insert = staticmethod(sqlite.insert)
    driver = "pysqlite"
    batch_migrations = True

    def url(self, url: URL) -> URL:
        return url  # the standard library's driver is SQLAlchemy's default

    def create_engine(self, url: URL, timeouts: Timeouts | None, options: dict[str, Any]) -> Engine:
        engine = create_engine(url, connect_args={"timeout": LOCK_WAIT_SECONDS}, **options)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={LOCK_WAIT_SECONDS * 1000}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            writes = connection.get_execution_options().get(WRITE_OPTION, False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")

        return engine

    def missing_database(self, url: URL) -> str | None:
        path = url.database
        if path and path != ":memory:" and not os.path.exists(path):
            return path
        return None

    def store_events(self, conn: Connection, events: Sequence[NewEvent]) -> tuple[int, datetime]:
        counter = conn.execute(_ALLOCATE, {"count": len(events)}).one()
        first_id = int(counter.last_id) - len(events) + 1
        time = datetime.now(UTC)
        if counter.last_time is not None:
            time = max(time, utc(counter.last_time))  # this host's clock stepped back
        conn.execute(_STAMP, {"time": time})
        insert_rows(conn, first_id, time, events)
        return first_id, time

    def prune_lock(self, conn: Connection) -> contextlib.AbstractContextManager[bool]:
        # Each batch takes the write lock: processes may prune in turn, and a second pruner
        # finds nothing left to delete.
        return no_lock()

    def schema_missing(self, orig: BaseException | None) -> bool:
        return isinstance(orig, sqlite3.OperationalError) and any(
            words in str(orig) for words in _MISSING_SCHEMA
        )

    def out_of_space(self, orig: BaseException | None) -> bool:
        # "database or disk is full": the disk, or max_page_count (Python 3.11+ names codes).
        return getattr(orig, "sqlite_errorname", None) == "SQLITE_FULL"

    def timed_out(self, orig: BaseException | None) -> bool:
        return False  # SQLite has no statement timeout
