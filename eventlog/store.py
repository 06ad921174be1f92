"""The event log in SQL: append events under gap-free ids, read them back by filter.

Every function takes a SQLAlchemy ``Connection`` (or ``Session``) that the caller owns, so an
application can append events inside its own transaction; announcing them is the caller's
job once that transaction has committed (``EventLog.publish`` does both).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    DateTime,
    Text,
    bindparam,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .errors import IdempotencyConflict
from .models import Counter, Event, IdempotencyKey
from .validation import NewEvent

COUNTER_ROW = 1

# Built once: these run on every publish and every hub wake-up.
_ALLOCATE = (
    update(Counter)
    .where(Counter.id == COUNTER_ROW)
    .values(last_id=Counter.last_id + bindparam("count"))
    .returning(Counter.last_id)
)
_HEAD = select(Counter.last_id).where(Counter.id == COUNTER_ROW)
_INSERT = insert(Event)
# A data-modifying CTE always runs to completion, so the SELECT only has to report the ids.
_STORE_POSTGRESQL = text(
    f"""
    WITH counter AS (
        UPDATE event_counter SET last_id = last_id + :count WHERE id = {COUNTER_ROW} RETURNING last_id
    ), stored AS (
        INSERT INTO events (id, stream, type, data, time)
        SELECT counter.last_id - :count + row.n, row.value ->> 0, row.value ->> 1,
               row.value ->> 2, :time
        FROM counter, json_array_elements(CAST(:rows AS json)) WITH ORDINALITY AS row(value, n)
    )
    SELECT last_id - :count + 1 FROM counter
    """
).bindparams(
    bindparam("count", type_=BigInteger),
    bindparam("rows", type_=Text),
    bindparam("time", type_=DateTime(timezone=True)),
)


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


@dataclass(frozen=True, slots=True)
class Publish:
    """One caller's publish: its events are stored all or nothing, under consecutive ids."""

    events: Sequence[NewEvent]
    idempotency_key: str | None = None


def append(
    db: Connection | Session,
    events: Sequence[NewEvent],
    *,
    idempotency_key: str | None = None,
) -> Appended:
    """Store ``events`` under consecutive ids in the caller's open transaction.

    The ids become visible, and the counter's row lock is released, when the caller
    commits; a rollback returns the ids, so the log never has a gap. Raises
    IdempotencyConflict when the key was used for other events.
    """
    [outcome] = append_all(db, [Publish(events, idempotency_key)])
    if isinstance(outcome, IdempotencyConflict):
        raise outcome
    return outcome


def needs_transaction(dialect: str, publishes: Sequence[Publish]) -> bool:
    """Whether :func:`append_all` runs more than one statement for these publishes.

    On PostgreSQL, publishes without idempotency keys are one statement, which can commit
    by itself (autocommit): no BEGIN and COMMIT round trips around it.
    """
    return dialect != "postgresql" or any(p.idempotency_key is not None for p in publishes)


def append_all(
    db: Connection | Session, publishes: Sequence[Publish]
) -> list[Appended | IdempotencyConflict]:
    """Store several publishes in the caller's open transaction, one outcome each.

    Each publish gets its own run of consecutive ids, in the order given, from a single
    allocation: this is how several callers share one transaction (see ``writer.py``).
    A publish whose idempotency key was seen before gets the earlier result instead, or
    an IdempotencyConflict if it asked for other events.
    """
    conn = db.connection() if isinstance(db, Session) else db
    now = datetime.now(UTC)
    outcomes: list[Appended | IdempotencyConflict | None] = [None] * len(publishes)
    fresh: list[int] = []  # the publishes that store new events, by index
    claimed: dict[str, tuple[int, str]] = {}  # key -> (index, fingerprint) claimed by this call
    repeats: list[tuple[int, int]] = []  # (index, index of the publish it repeats)

    for index, publish in enumerate(publishes):
        key = publish.idempotency_key
        if key is None:
            fresh.append(index)
            continue
        fingerprint = _fingerprint(publish.events)
        if key in claimed:
            first, first_fingerprint = claimed[key]
            if first_fingerprint == fingerprint:
                repeats.append((index, first))
            else:
                outcomes[index] = _conflict()
            continue
        earlier = _claim_key(conn, key, fingerprint, now)
        if earlier is None:
            claimed[key] = (index, fingerprint)
            fresh.append(index)
        else:
            outcomes[index] = earlier

    if fresh:
        # The counter is touched last, just before the insert, to hold its lock briefly.
        next_id = store_events(conn, [e for i in fresh for e in publishes[i].events], now)
        for index in fresh:
            stored = [
                StoredEvent(next_id + n, e.stream, e.type, e.data, now)
                for n, e in enumerate(publishes[index].events)
            ]
            next_id += len(stored)
            outcomes[index] = Appended(stored)
        for key, (index, _) in claimed.items():
            events = _appended(outcomes[index]).events
            conn.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.key == key)
                .values(first_id=events[0].id, last_id=events[-1].id)
            )
    for index, first in repeats:
        outcomes[index] = Appended(_appended(outcomes[first]).events, replayed=True)
    done = [outcome for outcome in outcomes if outcome is not None]
    assert len(done) == len(publishes)
    return done


def store_events(conn: Connection, events: Sequence[NewEvent], now: datetime) -> int:
    """Give ``events`` consecutive ids, insert them, and return the first id.

    The single place ids come from. Bumping the counter row takes its lock (on SQLite the
    database write lock, taken at BEGIN IMMEDIATE) until the transaction ends, so a later id
    can never commit before an earlier one. On PostgreSQL the bump and the insert are one
    statement with the rows in one JSON parameter: one round trip, and no network wait
    inside the lock but the commit's.
    """
    if conn.dialect.name == "postgresql":
        rows = json.dumps([[e.stream, e.type, e.data] for e in events], ensure_ascii=False)
        first = conn.execute(_STORE_POSTGRESQL, {"count": len(events), "rows": rows, "time": now})
        return int(first.scalar_one())
    last = conn.execute(_ALLOCATE, {"count": len(events)}).scalar_one()
    first_id = int(last) - len(events) + 1
    conn.execute(
        _INSERT,
        [
            {"id": first_id + n, "stream": e.stream, "type": e.type, "data": e.data, "time": now}
            for n, e in enumerate(events)
        ],
    )
    return first_id


def head(conn: Connection) -> int:
    """The newest committed id (0 for an empty log)."""
    return int(conn.execute(_HEAD).scalar_one())


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
) -> Appended | IdempotencyConflict | None:
    """Record ``key`` for this publish (None), or return the earlier publish made with it,
    or the conflict when that one stored other events.

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
        return _conflict()
    assert earlier.first_id is not None and earlier.last_id is not None
    events = query(
        conn,
        EventFilter(after=earlier.first_id - 1, before=earlier.last_id + 1),
        limit=earlier.last_id - earlier.first_id + 1,
    )
    return Appended(events, replayed=True)


def _conflict() -> IdempotencyConflict:
    return IdempotencyConflict("this Idempotency-Key was used for a different request; use a new key")


def _appended(outcome: Appended | IdempotencyConflict | None) -> Appended:
    assert isinstance(outcome, Appended)
    return outcome


def _fingerprint(events: Sequence[NewEvent]) -> str:
    digest = hashlib.sha256()
    for e in events:
        digest.update(f"{e.stream}\0{e.type}\0{e.data}\0".encode())
    return digest.hexdigest()


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
