"""Engine creation, with the SQLite settings the log's ordering guarantee relies on."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

WRITE_OPTION = "eventlog_writes"
WRITES = {WRITE_OPTION: True}
"""Execution options for an engine whose transactions write the log (see ``make_engine``)."""


def make_engine(url: str, **options: Any) -> Engine:
    """Create an engine for ``url``; SQLite gets WAL mode, and ``BEGIN IMMEDIATE`` for the
    transactions of an engine made with ``execution_options(**WRITES)``.

    Those take SQLite's write lock at BEGIN: that serializes publishers (so commit order is
    id order, as on PostgreSQL with the counter's row lock) and avoids the deadlock of two
    transactions that both read, then try to upgrade to writers. Reads begin deferred, so in
    WAL mode they never wait for a writer (an application's open transaction, say).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # No pre-ping: it costs a round trip on every checkout, and a connection the server
        # dropped is detected on use anyway (SQLAlchemy then discards the whole stale pool).
        return create_engine(parsed, **options)

    engine = create_engine(parsed, connect_args={"timeout": 30}, **options)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        writes = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")

    return engine
