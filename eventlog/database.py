"""Engine creation: the SQLite settings the log's ordering guarantee relies on, and on
PostgreSQL the timeouts that bound every wait on the database."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from . import deadline

WRITE_OPTION = "eventlog_writes"
WRITES = {WRITE_OPTION: True}
"""Execution options for an engine whose transactions write the log (see ``make_engine``)."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long eventlog's sessions may wait on PostgreSQL, in seconds; 0 is unbounded.

    The defaults are PostgreSQL's and libpq's own (no bound): the app passes its settings
    (``EVENTLOG_*_TIMEOUT_SECONDS``, see ARCHITECTURE.md "Every wait is bounded").
    """

    connect: float = 0  # libpq connect_timeout: a new connection
    reply: float = 0  # this side: any wait for the server's answer on an open connection
    statement: float = 0  # server side: statement_timeout
    lock: float = 0  # server side: lock_timeout (the counter row, an idempotency key)
    idle_in_transaction: float = 0  # server side: idle_in_transaction_session_timeout
    keepalive: float = 0  # TCP keepalives after this much silence, and tcp_user_timeout
    pool: float = 30  # waiting for a pooled connection (SQLAlchemy's default)


def make_engine(url: str, timeouts: Timeouts | None = None, **options: Any) -> Engine:
    """Create an engine for ``url``; PostgreSQL sessions get the ``timeouts`` given, SQLite
    WAL mode, and ``BEGIN IMMEDIATE`` for the transactions of an engine made with
    ``execution_options(**WRITES)``.

    Those take SQLite's write lock at BEGIN: that serializes publishers (so commit order is
    id order, as on PostgreSQL with the counter's row lock) and avoids the deadlock of two
    transactions that both read, then try to upgrade to writers. Reads begin deferred, so in
    WAL mode they never wait for a writer (an application's open transaction, say).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        if timeouts is not None:
            options = {"pool_timeout": timeouts.pool, **options}
        # No pre-ping: it costs a round trip on every checkout, and a connection the server
        # dropped is detected on use anyway (SQLAlchemy then discards the whole stale pool).
        engine = create_engine(parsed, **options)
        if timeouts is not None:
            _bound_postgresql(engine, timeouts)
        return engine

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


def connection_parameters(timeouts: Timeouts) -> dict[str, Any]:
    """The libpq parameters that carry ``timeouts`` (but the connect timeout, which depends
    on the moment: ``_connect_timeout``): the server-side ones travel in ``options``, so they
    hold from the session's first statement, without a round trip."""
    server = {
        "statement_timeout": timeouts.statement,
        "lock_timeout": timeouts.lock,
        "idle_in_transaction_session_timeout": timeouts.idle_in_transaction,
    }
    parameters: dict[str, Any] = {
        "options": " ".join(f"-c {name}={_ms(seconds)}" for name, seconds in server.items()),
    }
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


def _bound_postgresql(engine: Engine, timeouts: Timeouts) -> None:
    parameters = connection_parameters(timeouts)
    # Imported only now: psycopg picks how it waits at import, so a process that gevent
    # patches later (the gunicorn master's workers) must not have imported it yet.
    from .postgres import BoundedConnection

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
