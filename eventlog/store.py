"""The event log in SQL: append events under gap-free ids, read them back by filter.

Every function takes a SQLAlchemy ``Connection`` (or ``Session``) that the caller owns, so an
application can append events inside its own transaction; announcing them is the caller's
job once that transaction has committed (``EventLog.publish`` does both).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Connection, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .errors import IdempotencyConflict
from .models import Counter, Event, IdempotencyKey
from .validation import NewEvent

COUNTER_ROW = 1


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the log holds it; ``data`` is its JSON text."""

    id: int
    stream: str
    type: str
    data: str
    time: datetime

    def to_json(self) -> str:
        """The event as a JSON object, with ``data`` spliced in as stored (no re-encoding)."""
        # stream and type are checked against [A-Za-z0-9._:-] on the way in: nothing to escape.
        return (
            f'{{"id":{self.id},"stream":"{self.stream}","type":"{self.type}",'
            f'"data":{self.data},"time":"{rfc3339(self.time)}"}}'
        )


@dataclass(frozen=True, slots=True)
class Appended:
    """The result of :func:`append`; ``replayed`` marks a repeat of an idempotent publish."""

    events: list[StoredEvent]
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a query or a subscription wants: every given condition must hold.

    ``after``/``before`` are exclusive ids; ``since`` is inclusive and ``until`` exclusive.
    """

    streams: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    after: int | None = None
    before: int | None = None
    since: datetime | None = None
    until: datetime | None = None


def append(
    db: Connection | Session,
    events: Sequence[NewEvent],
    *,
    idempotency_key: str | None = None,
) -> Appended:
    """Store ``events`` under consecutive ids in the caller's open transaction.

    The ids become visible, and the counter's row lock is released, when the caller
    commits; a rollback returns the ids, so the log never has a gap.
    """
    conn = db.connection() if isinstance(db, Session) else db
    now = datetime.now(UTC)
    if idempotency_key is not None:
        earlier = _claim_key(conn, idempotency_key, _fingerprint(events), now)
        if earlier is not None:
            return earlier

    first = allocate_ids(conn, len(events))
    stored = [StoredEvent(first + i, e.stream, e.type, e.data, now) for i, e in enumerate(events)]
    conn.execute(
        insert(Event),
        [{"id": e.id, "stream": e.stream, "type": e.type, "data": e.data, "time": now} for e in stored],
    )
    if idempotency_key is not None:
        conn.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.key == idempotency_key)
            .values(first_id=first, last_id=stored[-1].id)
        )
    return Appended(stored)


def allocate_ids(conn: Connection, count: int) -> int:
    """Reserve ``count`` consecutive ids and return the first.

    The single place ids come from. The UPDATE takes the counter row's lock (on SQLite the
    database write lock, taken at BEGIN IMMEDIATE) and keeps it until the transaction ends,
    so a later id can never commit before an earlier one. Callers touch the counter as late
    in their transaction as they can, to hold that lock briefly.
    """
    last = conn.execute(
        update(Counter)
        .where(Counter.id == COUNTER_ROW)
        .values(last_id=Counter.last_id + count)
        .returning(Counter.last_id)
    ).scalar_one()
    return int(last) - count + 1


def head(conn: Connection) -> int:
    """The newest committed id (0 for an empty log)."""
    return int(conn.execute(select(Counter.last_id).where(Counter.id == COUNTER_ROW)).scalar_one())


def query(
    conn: Connection, where: EventFilter, *, limit: int, newest_first: bool = False
) -> list[StoredEvent]:
    """Up to ``limit`` events matching ``where``, in id order (or reverse id order)."""
    stmt = (
        select(Event.id, Event.stream, Event.type, Event.data, Event.time)
        .where(*_conditions(where))
        .order_by(Event.id.desc() if newest_first else Event.id)
        .limit(limit)
    )
    return [
        StoredEvent(id_, stream, type_, data, _utc(time))
        for id_, stream, type_, data, time in conn.execute(stmt)
    ]


def rfc3339(moment: datetime) -> str:
    """``moment`` in UTC as RFC 3339 with microseconds and a ``Z``."""
    return _utc(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _conditions(where: EventFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if where.streams:
        conditions.append(Event.stream.in_(where.streams))
    if where.types:
        conditions.append(Event.type.in_(where.types))
    if where.after is not None:
        conditions.append(Event.id > where.after)
    if where.before is not None:
        conditions.append(Event.id < where.before)
    if where.since is not None:
        conditions.append(Event.time >= where.since.astimezone(UTC))
    if where.until is not None:
        conditions.append(Event.time < where.until.astimezone(UTC))
    return conditions


def _claim_key(
    conn: Connection, key: str, fingerprint: str, now: datetime
) -> Appended | None:
    """Record ``key`` for this publish, or return the earlier publish made with it.

    On PostgreSQL a concurrent publish with the same key waits here for the first one's
    transaction to end, then sees its result: the key is claimed before the counter is
    touched, so the waiting never holds the counter's lock.
    """
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    claimed = conn.execute(
        dialect.insert(IdempotencyKey)
        .values(key=key, fingerprint=fingerprint, time=now)
        .on_conflict_do_nothing(index_elements=[IdempotencyKey.key])
        .returning(IdempotencyKey.key)
    ).first()
    if claimed is not None:
        return None
    earlier = conn.execute(select(IdempotencyKey).where(IdempotencyKey.key == key)).one()
    if earlier.fingerprint != fingerprint:
        raise IdempotencyConflict(
            "this Idempotency-Key was used for a different request; use a new key"
        )
    assert earlier.first_id is not None and earlier.last_id is not None
    events = query(
        conn,
        EventFilter(after=earlier.first_id - 1, before=earlier.last_id + 1),
        limit=earlier.last_id - earlier.first_id + 1,
    )
    return Appended(events, replayed=True)


def _fingerprint(events: Sequence[NewEvent]) -> str:
    digest = hashlib.sha256()
    for e in events:
        digest.update(f"{e.stream}\0{e.type}\0{e.data}\0".encode())
    return digest.hexdigest()


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
