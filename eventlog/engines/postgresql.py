"""PostgreSQL (psycopg 3) at READ COMMITTED, for clusters.

The counter row's lock is the row lock of its UPDATE, held until commit. The bump and the
insert are one statement with the rows in one JSON parameter: one round trip, and no network
wait inside the lock but the commit's. The time is the database's clock, the one clock every
server of a cluster shares, read under that lock (``clock_timestamp()``, not the
transaction's start). Text compares exactly in every collation PostgreSQL ships a database
with (deterministic ones break ties by the bytes). Every wait is bounded by the session's
``statement_timeout``, ``lock_timeout`` and ``idle_in_transaction_session_timeout``, libpq's
``connect_timeout`` and TCP settings, and ``BoundedConnection``'s reply bound.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    Text,
    bindparam,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL

from .. import deadline
from ..events import NewEvent, utc
from ..models import Counter, Event
from .base import Timeouts
from .common import COUNTER_ROW, OnConflict, session_lock

LOCK_KEY = 0x6576656E746C6F67  # "eventlog" in ASCII: the pruning advisory lock's key
QUERY_CANCELED = "57014"  # the SQLSTATE of a statement its statement_timeout ended
MISSING_SCHEMA = frozenset({"42P01", "42703"})  # undefined_table, undefined_column
DISK_FULL = "53100"  # disk_full: a table, index or WAL could not grow

# A data-modifying CTE always runs to completion, so the SELECT only has to report the ids.
_STORE = text(
    f"""
    WITH counter AS (
        UPDATE {Counter.__tablename__}
        SET last_id = last_id + :count, last_time = greatest(last_time, clock_timestamp())
        WHERE id = {COUNTER_ROW} RETURNING last_id, last_time
    ), stored AS (
        INSERT INTO {Event.__tablename__} (id, stream, type, data, time)
        SELECT counter.last_id - :count + row.n, row.value ->> 0, row.value ->> 1,
               row.value ->> 2, counter.last_time
        FROM counter, json_array_elements(CAST(:rows AS json)) WITH ORDINALITY AS row(value, n)
    )
    SELECT last_id - :count + 1 AS first_id, last_time FROM counter
    """
).bindparams(
    bindparam("count", type_=BigInteger),
    bindparam("rows", type_=Text),
).columns(first_id=BigInteger, last_time=DateTime(timezone=True))


class PostgreSQL(OnConflict):
    name = "postgresql"
    driver = "psycopg"
    schemes = ("postgres",)  # what hosting providers hand out
    one_statement_publish = True
    request_deadline = True  # BoundedConnection's waits and the connect timeout honour it
    timelines = True
    insert = staticmethod(postgresql.insert)

    def create_engine(self, url: URL, timeouts: Timeouts | None, options: dict[str, Any]) -> Engine:
        if timeouts is not None:
            options = {"pool_timeout": timeouts.pool, **options}
        # No pre-ping: it costs a round trip on every checkout, and a connection the server
        # dropped is detected on use anyway (SQLAlchemy then discards the whole stale pool).
        engine = create_engine(url, **options)
        if timeouts is not None:
            _bound(engine, timeouts)
        return engine

    def store_events(self, conn: Connection, events: Sequence[NewEvent]) -> tuple[int, datetime]:
        rows = json.dumps([[e.stream, e.type, e.data] for e in events], ensure_ascii=False)
        stored = conn.execute(_STORE, {"count": len(events), "rows": rows}).one()
        return int(stored.first_id), utc(stored.last_time)

    def prune_lock(self, conn: Connection) -> contextlib.AbstractContextManager[bool]:
        return session_lock(
            conn, select(func.pg_try_advisory_lock(LOCK_KEY)), select(func.pg_advisory_unlock(LOCK_KEY))
        )

    def snapshot(self, conn: Connection) -> Connection:
        # psycopg sends the level with its BEGIN, and putting it back costs no round trip.
        return conn.execution_options(isolation_level="REPEATABLE READ")

    def outside_transaction(self, conn: Connection) -> Connection:
        # psycopg sends BEGIN on its own before the first statement; in autocommit it sends
        # neither that nor a ROLLBACK when the connection goes back to the pool.
        return conn.execution_options(isolation_level="AUTOCOMMIT")

    def data_size(self, data: Any) -> ColumnElement[int]:
        # octet_length reads a large value's size from its TOAST header, where length()
        # would decompress the whole value just to count its characters.
        return func.octet_length(data)

    def cap_statements(self, conn: Connection, seconds: float) -> contextlib.AbstractContextManager[None]:
        # LOCAL: it ends with this transaction, the pooled session keeps its own.
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {_ms(seconds)}")
        return contextlib.nullcontext()

    def lift_caps(self, conn: Connection) -> contextlib.AbstractContextManager[None]:
        conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
        conn.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = 0")
        return contextlib.nullcontext()

    def schema_missing(self, orig: BaseException | None) -> bool:
        return getattr(orig, "sqlstate", None) in MISSING_SCHEMA

    def out_of_space(self, orig: BaseException | None) -> bool:
        return getattr(orig, "sqlstate", None) == DISK_FULL

    def timed_out(self, orig: BaseException | None) -> bool:
        return getattr(orig, "sqlstate", None) == QUERY_CANCELED


def connection_parameters(timeouts: Timeouts) -> dict[str, Any]:
    """The libpq parameters that carry ``timeouts`` (but the connect timeout, which depends
    on the moment: ``_connect_timeout``) and the session's time zone, UTC: the server-side
    ones travel in ``options``, so they hold from the session's first statement, without a
    round trip."""
    server = {
        "statement_timeout": timeouts.statement,
        "lock_timeout": timeouts.lock,
        "idle_in_transaction_session_timeout": timeouts.idle_in_transaction,
    }
    options = [f"-c {name}={_ms(seconds)}" for name, seconds in server.items()]
    # Times then come back in psycopg's timezone.utc, which events.utc passes as they are,
    # where a server's own zone ('Etc/UTC' is Debian's) cost a conversion per row read.
    options.append("-c TimeZone=UTC")
    parameters: dict[str, Any] = {"options": " ".join(options)}
    if timeouts.keepalive:
        idle = math.ceil(timeouts.keepalive)
        parameters.update(
            keepalives=1,
            keepalives_idle=idle,
            keepalives_interval=1,
            keepalives_count=3,
            # Sent data left unacknowledged this long (a dropped link) aborts the connection;
            # on Linux it also ends the keepalive probing at the same point.
            tcp_user_timeout=_ms(idle + 3),
        )
    return parameters


def _bound(engine: Engine, timeouts: Timeouts) -> None:
    parameters = connection_parameters(timeouts)
    # Imported only now: psycopg picks how it waits at import, so a process that gevent
    # patches later (the gunicorn master's workers) must not have imported it yet.
    from .psycopg import BoundedConnection

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        # The URL's own query parameters win: an operator may tune one connection string.
        connection = BoundedConnection.connect(
            *cargs, **{**parameters, "connect_timeout": _connect_timeout(timeouts), **cparams}
        )
        connection.reply_timeout = timeouts.reply
        return connection


def _connect_timeout(timeouts: Timeouts) -> int:
    """libpq's ``connect_timeout`` for a connection begun now: within the request's deadline
    (``deadline.py``); none is begun without the 2 s libpq needs at least. libpq counts whole
    seconds (and takes less than 2 as 2); 0 waits as long as TCP does."""
    from psycopg.errors import ConnectionTimeout

    seconds = deadline.connect_limit(timeouts.connect)
    if seconds is None:
        raise ConnectionTimeout("no time left to connect to the database within the reply timeout")
    return seconds


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
