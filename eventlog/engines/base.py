"""The database seam: what every engine eventlog runs on must provide, and the contract it keeps.

One subclass of ``Backend`` per engine (``sqlite.py``, ``postgresql.py``, ``mysql.py``) holds
all that differs between them; the rest of eventlog asks the backend of its engine
(``database.backend_of``) and never branches on a dialect's name, a SQLSTATE or a driver's
message.

The contract, which the exactly-once code above the seam relies on:

1. **The counter row is locked until commit.** ``store_events`` raises the counter's
   ``last_id`` inside the caller's transaction and keeps the counter locked against every
   other writer until that transaction ends, so a later id never commits before an earlier
   one: commit order is id order, and a reader of ``id > cursor`` never skips an event.
2. **Ids are gap-free.** A publish of n events gets n consecutive ids; a rollback gives
   them back with the counter's update, so no id is ever skipped.
3. **The time is read under that lock, from one clock, and never decreases.** The events'
   time is taken after the lock is held, no earlier than the counter's ``last_time``, with
   microseconds: times never decrease along ids, so a time filter is an id range.
4. **Names and keys compare exactly.** Stream names, types and idempotency keys are equal
   only when their characters are: case, accents and trailing spaces count.
5. **Data round-trips byte for byte.** What ``store_events`` is given, a read returns.
6. **Every wait is bounded** by the ``Timeouts`` the engine was made with: connecting, an
   answer on an open connection, a lock, a statement, a transaction left idle.
7. **A concurrent claimer of the same idempotency key waits** for the first claimer's
   transaction to end, then sees its outcome (``claim_key``).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import ColumnElement, Connection, Engine, Row, func
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from ..errors import DatabaseUnavailable, EventlogError, OutOfSpace, SchemaBehind, StatementTimeout
from ..events import NewEvent

WRITE_OPTION = "eventlog_writes"
WRITES = {WRITE_OPTION: True}
"""Execution options for an engine whose transactions write the log: on an engine whose
transactions lock nothing until their first write (SQLite), they take the write lock at
BEGIN."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long eventlog's sessions may wait on the database, in seconds; 0 is unbounded.

    The defaults are the drivers' own (no bound): the app passes its settings
    (``EVENTLOG_*_TIMEOUT_SECONDS``, see ARCHITECTURE.md "Every wait is bounded").
    """

    connect: float = 0  # a new connection
    reply: float = 0  # this side: any wait for the server's answer on an open connection
    statement: float = 0  # server side: a statement's running time
    lock: float = 0  # server side: a lock wait (the counter row, an idempotency key)
    idle_in_transaction: float = 0  # server side: a transaction whose client went quiet
    keepalive: float = 0  # TCP keepalives after this much silence
    pool: float = 30  # waiting for a pooled connection (SQLAlchemy's default)


class Backend(abc.ABC):
    """One database engine behind the seam (see the module's docstring for the contract)."""

    name: ClassVar[str]
    """SQLAlchemy's name of the dialect (``URL.get_backend_name()``)."""
    driver: ClassVar[str]
    """The driver a URL without one gets (``postgres://`` becomes ``postgresql+psycopg``)."""
    schemes: ClassVar[tuple[str, ...]] = ()
    """URL schemes besides ``name`` that mean this engine."""
    one_statement_publish: ClassVar[bool] = False
    """Whether a publish without idempotency keys is one statement, which may commit by
    itself (autocommit): no BEGIN and COMMIT round trips around it."""
    request_deadline: ClassVar[bool] = False
    """Whether every wait of the driver ends at the request's deadline (``deadline.py``):
    then EVENTLOG_REPLY_TIMEOUT_SECONDS bounds a request's database work in all, not each wait."""
    timelines: ClassVar[bool] = False
    """Whether a promoted standby starts a new, numbered timeline that eventlog can read
    (``timelines.py``): how a failover that lost acknowledged events is detected."""
    batch_migrations: ClassVar[bool] = False
    """Whether Alembic must rebuild tables to alter them (``render_as_batch``)."""

    def url(self, url: URL) -> URL:
        """``url`` with this engine's driver when it names none."""
        if "+" in url.drivername:
            return url
        return url.set(drivername=f"{self.name}+{self.driver}")

    @abc.abstractmethod
    def create_engine(self, url: URL, timeouts: Timeouts | None, options: dict[str, Any]) -> Engine:
        """An engine on ``url`` whose sessions keep the contract, bounded by ``timeouts``."""

    def missing_database(self, url: URL) -> str | None:
        """What connecting to ``url`` would create instead of finding (a database file)."""
        return None

    # --- writing -------------------------------------------------------------------------

    @abc.abstractmethod
    def store_events(self, conn: Connection, events: Sequence[NewEvent]) -> tuple[int, datetime]:
        """Give ``events`` consecutive ids and one time under the counter's lock (held until
        the caller's transaction ends), insert them, and return the first id and the time."""

    @abc.abstractmethod
    def claim_key(self, conn: Connection, key: str, fingerprint: str, now: datetime) -> bool:
        """Insert ``key`` unless it exists; True if this call inserted it. A concurrent
        claimer waits here until the transaction that inserted it ends."""

    @abc.abstractmethod
    def delete_events(
        self, conn: Connection, where: ColumnElement[bool], *, limit: int | None
    ) -> Sequence[Row[int, str]]:
        """Delete the events matching ``where`` (only the ``limit`` lowest ids of them, when
        given) and return the ``(id, stream)`` of each."""

    @abc.abstractmethod
    def raise_pruned(self, conn: Connection, highest: dict[str, int]) -> None:
        """Raise each stream's ``pruned_through`` to at least the id given (insert the rows
        that do not exist, never lower one)."""

    @abc.abstractmethod
    def prune_lock(self, conn: Connection) -> contextlib.AbstractContextManager[bool]:
        """Hold the cluster's pruning lock on ``conn`` while inside; yields False (and holds
        nothing) when another session holds it. The lock ends with the session."""

    # --- reading -------------------------------------------------------------------------

    def snapshot(self, conn: Connection) -> Connection:
        """``conn`` set so that its transaction's reads all see one moment of the log."""
        return conn

    def outside_transaction(self, conn: Connection) -> Connection:
        """``conn`` set so that a statement runs in no transaction opened ahead of it by a round
        trip of its own (between which and the statement a session would sit idle in a
        transaction while its process is busy elsewhere). Where a transaction begins with its
        first statement, or costs no round trip, ``conn`` as it is."""
        return conn

    def data_size(self, data: Any) -> ColumnElement[int]:
        """The size of an event's ``data`` column, as cheaply as the engine counts it."""
        return func.length(data)

    def cap_statements(self, conn: Connection, seconds: float) -> contextlib.AbstractContextManager[None]:
        """Cap each statement run on ``conn`` inside at ``seconds`` (an audit page's time
        cap): one that runs longer fails, classified ``StatementTimeout``. An engine without
        statement timeouts leaves them unbounded."""
        return contextlib.nullcontext()

    # --- schema and errors -------------------------------------------------------------------

    def lift_caps(self, conn: Connection) -> contextlib.AbstractContextManager[None]:
        """Lift the caps on ``conn``'s statements inside, for a migration that may rewrite
        or index a whole table."""
        return contextlib.nullcontext()

    def classify(self, error: DBAPIError) -> type[EventlogError] | None:
        """What ``error`` means in eventlog's terms: ``SchemaBehind`` (a table or column is
        missing), ``OutOfSpace`` (a write refused for lack of disk space; the transaction is
        rolled back whole), ``StatementTimeout`` (the server stopped a statement at its time
        limit), ``DatabaseUnavailable`` (it cannot answer now: unreachable, cut off, a lock or
        reply wait that ran out), or None (a bug: a 500)."""
        if self.schema_missing(error.orig):
            return SchemaBehind
        if self.out_of_space(error.orig):
            return OutOfSpace
        if self.timed_out(error.orig):
            return StatementTimeout
        # The DB-API's own classes, which every driver uses for "the database, not the
        # statement": the connection failed or was lost, a wait ended.
        if error.connection_invalidated or isinstance(error, (OperationalError, InterfaceError)):
            return DatabaseUnavailable
        return None

    @abc.abstractmethod
    def schema_missing(self, orig: BaseException | None) -> bool:
        """Whether the driver's error says a table or column does not exist."""

    @abc.abstractmethod
    def out_of_space(self, orig: BaseException | None) -> bool:
        """Whether the driver's error says a write found no disk space."""

    @abc.abstractmethod
    def timed_out(self, orig: BaseException | None) -> bool:
        """Whether the driver's error says the server cancelled a statement for its time."""


@contextlib.contextmanager
def no_lock() -> Iterator[bool]:
    """The pruning lock of an engine that serializes pruners by its write lock instead."""
    yield True
