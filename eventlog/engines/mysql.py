"""MySQL and MariaDB (PyMySQL), InnoDB at READ COMMITTED.

The counter row's lock is the row lock of its UPDATE, held until commit; MySQL has no
``UPDATE ... RETURNING``, so the new values are read back by a SELECT in the same
transaction, which sees its own update. The time is the database's clock read under that
lock: ``SYSDATE(6)`` is the moment the expression runs (``NOW(6)`` is the statement's start,
before the lock was granted), in UTC whatever the session's time zone. Names and keys are
VARBINARY (``types.Name``): the utf8mb4 ``_bin`` collations are PAD SPACE.

A statement may carry at most the server's ``max_allowed_packet``: PyMySQL's executemany
sends the rows of a publish in multi-row INSERTs of at most about 1 MB each (or one row), in
the same transaction, and an event that no statement can carry is refused before the counter
is touched (413).

Every wait is bounded: on this side by the connect and reply timeouts, within the request's
deadline (``pymysql.BoundedConnection``); on the server by ``innodb_lock_wait_timeout``
(rows), ``lock_wait_timeout`` (a table's metadata, which a migration locks) and the
statement's time (``max_statement_time`` on MariaDB, ``max_execution_time`` on MySQL 8,
which caps SELECTs only), and on MariaDB ``idle_transaction_timeout`` for a transaction
whose client went quiet.
PyMySQL is pure Python: under gevent its sockets are gevent's, so a query waits cooperatively.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    bindparam,
    delete,
    create_engine,
    event,
    func,
    insert,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from ..errors import PayloadTooLarge
from ..events import NewEvent, utc
from ..models import Counter, Event, IdempotencyKey, PrunedStream
from .base import Backend, Timeouts
from .common import COUNTER_ROW, insert_rows, session_lock
from .pymysql import BoundedConnection
from .types import Time

UNBOUNDED_LOCK_WAIT = 1073741824  # innodb_lock_wait_timeout's largest value, in seconds
PACKET = "eventlog.max_allowed_packet"  # where a connection keeps its server's limit
PACKET_MARGIN = 4096  # a statement's bytes beyond its values
MISSING_SCHEMA = frozenset({1146, 1054})  # ER_NO_SUCH_TABLE, ER_BAD_FIELD_ERROR
TIMED_OUT = frozenset({1969, 3024})  # MariaDB's max_statement_time, MySQL's max_execution_time
OUT_OF_SPACE = frozenset({1021, 1114})  # ER_DISK_FULL, ER_RECORD_FILE_FULL (a table that cannot grow)
# Strict: a value that does not fit is an error, never silently cut.
SQL_MODE = "STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"
# The characters PyMySQL escapes with a backslash: each takes one more byte on the wire.
_ESCAPED = ("\\", "'", '"', "\0", "\n", "\r", "\x1a")

# The session's time zone is ours ('+00:00') on eventlog's engines, the application's on its
# own session (publishing in its transaction): converted, the time is UTC either way.
_NOW = literal_column("CONVERT_TZ(SYSDATE(6), @@session.time_zone, '+00:00')", type_=Time())
_BUMP = (
    update(Counter)
    .where(Counter.id == COUNTER_ROW)
    .values(
        last_id=Counter.last_id + bindparam("count"),
        last_time=func.greatest(func.coalesce(Counter.last_time, _NOW), _NOW),
    )
)
_COUNTER = select(Counter.last_id, Counter.last_time).where(Counter.id == COUNTER_ROW)
# GET_LOCK names are server-wide: the database's name keeps two logs on one server apart
# (hashed: a name may be 64 characters at most).
_LOCK_NAME = func.concat("eventlog:", func.sha1(func.database()))


class MySQL(Backend):
    name = "mysql"
    driver = "pymysql"
    schemes = ("mariadb",)
    request_deadline = True  # BoundedConnection's waits honour it

    def url(self, url: URL) -> URL:
        if "+" in url.drivername:
            return url
        return url.set(drivername=f"{url.drivername}+{self.driver}")  # mariadb stays mariadb

    def create_engine(self, url: URL, timeouts: Timeouts | None, options: dict[str, Any]) -> Engine:
        if timeouts is not None:
            options = {"pool_timeout": timeouts.pool, **options}
        engine = create_engine(
            url,
            connect_args={"charset": "utf8mb4"},
            **{"isolation_level": "READ COMMITTED", **options},
        )
        if timeouts is not None:

            @event.listens_for(engine, "do_connect")
            def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
                # The URL's own connect_timeout wins: an operator may tune one connection string.
                return BoundedConnection(
                    *cargs, reply_timeout=timeouts.reply, **{"connect_timeout": timeouts.connect, **cparams}
                )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, record: Any) -> None:
            mariadb = "MariaDB" in dbapi_connection.get_server_info()
            with dbapi_connection.cursor() as cursor:
                cursor.execute(_session_settings(mariadb, timeouts))
                cursor.execute("SELECT @@max_allowed_packet")
                record.info[PACKET] = int(cursor.fetchone()[0])

        return engine

    def store_events(self, conn: Connection, events: Sequence[NewEvent]) -> tuple[int, datetime]:
        _refuse_oversized(events, _packet_limit(conn))  # before the counter is touched
        conn.execute(_BUMP, {"count": len(events)})
        counter = conn.execute(_COUNTER).one()
        first_id = int(counter.last_id) - len(events) + 1
        time = utc(counter.last_time)
        insert_rows(conn, first_id, time, events)
        return first_id, time

    def claim_key(self, conn: Connection, key: str, fingerprint: str, now: datetime) -> bool:
        # IGNORE: a duplicate key inserts nothing. InnoDB checks the key under a lock, so a
        # concurrent claimer waits for the transaction that inserted it to end.
        claimed = conn.execute(
            insert(IdempotencyKey).prefix_with("IGNORE").values(key=key, fingerprint=fingerprint, time=now)
        )
        return claimed.rowcount == 1

    def delete_events(
        self, conn: Connection, where: ColumnElement[bool], *, limit: int | None
    ) -> Sequence[Row[int, str]]:
        # No DELETE ... RETURNING on MySQL, nor a LIMIT in an IN subquery: the rows are read
        # first, locked, then deleted by their id range, which holds no others (nobody else
        # deletes events, and the ones the locks hold cannot change).
        query = select(Event.id, Event.stream).where(where).order_by(Event.id)
        if limit is not None:
            query = query.limit(limit)
        rows = conn.execute(query.with_for_update()).all()
        if rows:
            conn.execute(delete(Event).where(where, Event.id.between(rows[0].id, rows[-1].id)))
        return rows

    def raise_pruned(self, conn: Connection, highest: dict[str, int]) -> None:
        upsert = mysql.insert(PrunedStream)
        conn.execute(
            upsert.on_duplicate_key_update(
                pruned_through=func.greatest(PrunedStream.pruned_through, upsert.inserted.pruned_through)
            ),
            [{"stream": s, "pruned_through": i} for s, i in sorted(highest.items())],
        )

    def prune_lock(self, conn: Connection) -> contextlib.AbstractContextManager[bool]:
        return session_lock(
            conn, select(func.get_lock(_LOCK_NAME, 0) == 1), select(func.release_lock(_LOCK_NAME))
        )

    def snapshot(self, conn: Connection) -> Connection:
        # For the next transaction only. SQLAlchemy's isolation_level option sets the
        # session's level and puts it back when the connection returns to the pool: two
        # more round trips, the last outside the request's error handling (a link lost
        # then was a 500).
        conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        return conn

    @contextlib.contextmanager
    def cap_statements(self, conn: Connection, seconds: float) -> Iterator[None]:
        # A session setting (MySQL has no SET LOCAL): set, then put back as it was.
        name = _statement_cap(conn.dialect.is_mariadb)  # type: ignore[attr-defined]
        value = _statement_value(conn.dialect.is_mariadb, seconds)  # type: ignore[attr-defined]
        conn.exec_driver_sql(f"SET @eventlog_cap = @@{name}, {name} = {value}")
        try:
            yield
        finally:
            try:
                conn.exec_driver_sql(f"SET {name} = @eventlog_cap")
            except SQLAlchemyError:
                conn.invalidate()  # a new session starts with the engine's own settings

    def lift_caps(self, conn: Connection) -> contextlib.AbstractContextManager[None]:
        return self.cap_statements(conn, 0)

    def schema_missing(self, orig: BaseException | None) -> bool:
        return _errno(orig) in MISSING_SCHEMA

    def out_of_space(self, orig: BaseException | None) -> bool:
        return _errno(orig) in OUT_OF_SPACE

    def timed_out(self, orig: BaseException | None) -> bool:
        return _errno(orig) in TIMED_OUT


def _session_settings(mariadb: bool, timeouts: Timeouts | None) -> str:
    """The SET statement that starts each of eventlog's sessions on this server."""
    settings = {"time_zone": "'+00:00'", "sql_mode": f"'{SQL_MODE}'"}
    if timeouts is not None:
        lock = str(math.ceil(timeouts.lock) or UNBOUNDED_LOCK_WAIT)
        # A row lock (the counter, a key), and a table's metadata lock (a migration's).
        settings["innodb_lock_wait_timeout"] = settings["lock_wait_timeout"] = lock
        settings[_statement_cap(mariadb)] = _statement_value(mariadb, timeouts.statement)
        if mariadb:  # MySQL 8 has no bound on an idle transaction but wait_timeout's
            settings["idle_transaction_timeout"] = str(math.ceil(timeouts.idle_in_transaction))
    return "SET " + ", ".join(f"{name} = {value}" for name, value in settings.items())


def _statement_cap(mariadb: bool) -> str:
    return "max_statement_time" if mariadb else "max_execution_time"


def _statement_value(mariadb: bool, seconds: float) -> str:
    """``seconds`` in the unit of the server's statement cap (0: none)."""
    return f"{seconds:g}" if mariadb else str(round(seconds * 1000))


def _packet_limit(conn: Connection) -> int:
    """The server's ``max_allowed_packet``: kept by eventlog's sessions from their start,
    asked once of an application's own."""
    info = conn.info
    if PACKET not in info:
        info[PACKET] = int(conn.execute(text("SELECT @@max_allowed_packet")).scalar_one())
    return int(info[PACKET])


def _refuse_oversized(events: Sequence[NewEvent], packet: int) -> None:
    """PayloadTooLarge if an event's INSERT cannot fit in ``packet`` bytes."""
    for e in events:
        if _wire_size(e) > packet - PACKET_MARGIN:
            raise PayloadTooLarge(
                f"an event of {len(e.data.encode())} bytes is more than the database server"
                " accepts in one statement (its max_allowed_packet); send smaller events"
            )


def _wire_size(e: NewEvent) -> int:
    """The bytes an event's row takes in an INSERT statement, escapes included."""
    fields = (e.stream, e.type, e.data)
    return sum(len(f.encode()) + sum(f.count(c) for c in _ESCAPED) for f in fields) + 64


def _errno(orig: BaseException | None) -> int | None:
    code = orig.args[0] if orig is not None and orig.args else None
    return code if isinstance(code, int) else None
