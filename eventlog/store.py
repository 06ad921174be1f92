"""The event log in SQL: append events under gap-free ids, read them back by filter.

The writing functions take a ``Connection`` in a transaction the caller owns (the writer's,
or an application's own, see ``EventLog.publish``); announcing what they stored is the
caller's job once that transaction has committed.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol, TypeVar

from sqlalchemy import (
    BigInteger,
    BindParameter,
    ColumnElement,
    Connection,
    Engine,
    Select,
    CompoundSelect,
    and_,
    bindparam,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    union_all,
    update,
)

from .database import backend_of
from .engines.base import Backend
from .engines.common import COUNTER_ROW
from .errors import IdempotencyConflict
from .events import EVERY_STREAM, MAX_ID, EventFilter, NewEvent, StoredEvent, is_prefix, prefix_range, utc
from .models import Counter, Event, IdempotencyKey, PrunedStream, Timeline

T = TypeVar("T")

# Built once: it runs on every hub wake-up.
_HEAD = select(Counter.last_id).where(Counter.id == COUNTER_ROW)


@dataclass(frozen=True, slots=True)
class Appended:
    """What a publish stored; ``replayed`` marks a repeat of an idempotent publish."""

    events: list[StoredEvent]
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Publish:
    """One caller's publish: its events are stored all or nothing, under consecutive ids."""

    events: Sequence[NewEvent]
    idempotency_key: str | None = None


def needs_transaction(engine: Engine, publishes: Sequence[Publish]) -> bool:
    """Whether :func:`append_all` runs more than one statement for these publishes.

    Where the engine stores publishes without idempotency keys in one statement, that
    statement can commit by itself (autocommit): no BEGIN and COMMIT round trips around it.
    """
    return not backend_of(engine).one_statement_publish or any(
        p.idempotency_key is not None for p in publishes
    )


def append_all(conn: Connection, publishes: Sequence[Publish]) -> list[Appended | IdempotencyConflict]:
    """Store several publishes in the caller's open transaction, one outcome each.

    Each publish gets its own run of consecutive ids, in the order given, from a single
    allocation: this is how several callers share one transaction (see ``writer.py``).
    A publish whose idempotency key was seen before gets the earlier result instead, or
    an IdempotencyConflict if it asked for other events.
    """
    plan = _claim_keys(conn, publishes, datetime.now(UTC))
    if plan.fresh:
        # The counter is touched last, just before the insert, to hold its lock briefly.
        first_id, time = store_events(conn, [e for i in plan.fresh for e in publishes[i].events])
        _assign_ids(plan, publishes, first_id, time)
        _record_keys(conn, plan)
    for index, first in plan.repeats:
        plan.outcomes[index] = Appended(_appended(plan.outcomes[first]).events, replayed=True)
    done = [outcome for outcome in plan.outcomes if outcome is not None]
    assert len(done) == len(publishes)
    return done


@dataclass(slots=True)
class _Plan:
    """What :func:`append_all` does with each publish, settled before the counter is touched."""

    outcomes: list[Appended | IdempotencyConflict | None]
    fresh: list[int] = field(default_factory=list)  # the publishes that store new events
    claimed: dict[str, int] = field(default_factory=dict)  # key -> the publish that claimed it
    repeats: list[tuple[int, int]] = field(default_factory=list)  # (publish, the one it repeats)


def _claim_keys(conn: Connection, publishes: Sequence[Publish], now: datetime) -> _Plan:
    """Claim each new idempotency key; settle repeats and conflicts from earlier publishes."""
    plan = _Plan(outcomes=[None] * len(publishes))
    fingerprints: dict[str, str] = {}  # of the keys claimed by this call
    for index, publish in enumerate(publishes):
        key = publish.idempotency_key
        if key is None:
            plan.fresh.append(index)
            continue
        fingerprint = _fingerprint(publish.events)
        if key in plan.claimed:  # twice in one shared transaction
            if fingerprints[key] == fingerprint:
                plan.repeats.append((index, plan.claimed[key]))
            else:
                plan.outcomes[index] = _conflict()
            continue
        earlier = _claim_key(conn, key, fingerprint, now)
        if earlier is None:
            plan.claimed[key], fingerprints[key] = index, fingerprint
            plan.fresh.append(index)
        else:
            plan.outcomes[index] = earlier
    return plan


def _assign_ids(plan: _Plan, publishes: Sequence[Publish], first_id: int, time: datetime) -> None:
    """Give each fresh publish its run of the ids (and the time) that ``store_events`` chose."""
    next_id = first_id
    for index in plan.fresh:
        events = publishes[index].events
        plan.outcomes[index] = Appended(
            [StoredEvent(next_id + n, e.stream, e.type, e.data, time) for n, e in enumerate(events)]
        )
        next_id += len(events)


def _record_keys(conn: Connection, plan: _Plan) -> None:
    """Point each claimed idempotency key at the ids its publish got."""
    for key, index in plan.claimed.items():
        events = _appended(plan.outcomes[index]).events
        conn.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.key == key)
            .values(first_id=events[0].id, last_id=events[-1].id)
        )


def store_events(conn: Connection, events: Sequence[NewEvent]) -> tuple[int, datetime]:
    """Give ``events`` consecutive ids and one time, insert them, and return the first id
    and the time.

    The single place ids and times come from: the engine's ``store_events``, which keeps
    the seam's contract (``engines/base.py``). The counter stays locked until the caller's
    transaction ends, so a later id can never commit before an earlier one, and the time,
    read under that lock, never decreases along ids, so a time filter is an id range (see
    ``_conditions``).
    """
    return backend_of(conn).store_events(conn, events)


def head(conn: Connection) -> int:
    """The newest committed id (0 for an empty log)."""
    return int(conn.execute(_HEAD).scalar_one())


@dataclass(frozen=True, slots=True)
class Page:
    """Events read in one go; ``more`` says whether further events may match.

    ``pruned``, when asked for, holds per stream of the filter the highest id retention
    deleted, where that lies inside the page's range (read in the same statement as the
    events): events of those streams in the range may be missing because they were pruned.
    """

    events: list[StoredEvent]
    more: bool
    pruned: dict[str, int] = field(default_factory=dict)

    @property
    def pruned_through(self) -> int | None:
        """The highest id pruned in the page's range, over the filter's streams (or None)."""
        return max(self.pruned.values(), default=None)


def read_page(
    conn: Connection,
    where: EventFilter,
    *,
    limit: int,
    newest_first: bool = False,
    max_bytes: int | None = None,
    with_pruned: bool = False,
) -> Page:
    """Up to ``limit`` events matching ``where``, in id order (or reverse id order).

    With ``max_bytes`` the page also stops at the event that takes its data past that many
    characters (always holding at least one event), counted in SQL: a page of large events
    never reaches this process whole. ``with_pruned`` adds ``Page.pruned``, read in the same
    statement as the events, so the two agree on any connection (a statement sees one moment
    of the log on every engine).
    """
    statement = _page_statement(
        backend_of(conn), _Shape.of(where), limit=limit, newest_first=newest_first,
        max_bytes=max_bytes, with_pruned=with_pruned,
    )
    rows = conn.execute(statement, _bounds(where)).all()
    if not with_pruned:
        return _page(rows, limit, max_bytes)
    rows, pruned = _split_pruned(rows)
    page = _page(rows, limit, max_bytes)
    if newest_first and page.more and page.events:
        # Going newest first, the page's range ends below at its last event when more
        # follow: what was pruned below that belongs to later pages.
        lowest = page.events[-1].id
        pruned = {stream: bound for stream, bound in pruned.items() if bound > lowest}
    return Page(page.events, page.more, pruned)


_AFTER = bindparam("after", type_=BigInteger)
_BEFORE = bindparam("before", type_=BigInteger)


def _bounds(where: EventFilter) -> dict[str, int | None]:
    """The parameters of a statement of ``where``'s ``_Shape``."""
    return {"after": where.after or 0, "before": where.before}


@dataclass(frozen=True, slots=True)
class _Shape:
    """What of a filter shapes a page's statement: all but the values of ``after`` and
    ``before``, which are its parameters (``:after``, ``:before``), so the pages of one
    reader, each past the last, run one statement built once."""

    streams: tuple[str, ...]
    types: tuple[str, ...]
    after: bool
    before: bool
    since: datetime | None
    until: datetime | None

    @classmethod
    def of(cls, where: EventFilter) -> _Shape:
        return cls(
            where.streams, where.types, where.after is not None, where.before is not None,
            where.since, where.until,
        )


@functools.lru_cache(maxsize=256)
def _page_statement(
    backend: Backend, shape: _Shape, *, limit: int, newest_first: bool, max_bytes: int | None,
    with_pruned: bool,
) -> Select[Any]:
    """``read_page``'s statement, built once per shape: building it and its subqueries cost
    as much as reading a page's rows into events (bench/README.md, "Replay")."""
    query = _events_query(backend, shape, limit=limit, newest_first=newest_first, max_bytes=max_bytes)
    return _with_pruned(query, shape.streams, newest_first) if with_pruned else query


def _events_query(
    backend: Backend, shape: _Shape, *, limit: int, newest_first: bool, max_bytes: int | None
) -> Select[Any]:
    """The page's statement: its rows are the events (``_COLUMNS``, first), plus ``through``
    (the data's size up to and with the row) with ``max_bytes``."""
    order = Event.id.desc() if newest_first else Event.id
    matching = (
        select(Event.id, Event.stream, Event.type, Event.data, Event.time)
        .where(*_conditions(shape))
        .order_by(order)
        .limit(limit + 1)  # one more than asked: whether it exists says if there are more
        .subquery()
    )
    if max_bytes is None:
        return select(matching).order_by(_keyset(matching, newest_first))
    size = backend.data_size(matching.c.data)
    counted = select(
        matching,
        func.sum(size).over(order_by=_keyset(matching, newest_first)).label("through"),
        size.label("size"),
    ).subquery()
    return (
        select(*(counted.c[name] for name in _COLUMNS), counted.c.through)
        .where(counted.c.through - counted.c.size < max_bytes)
        .order_by(_keyset(counted, newest_first))
    )


def _page(rows: Sequence[Any], limit: int, max_bytes: int | None) -> Page:
    """The page of ``_events_query``'s rows."""
    # Past the byte bound, the first row left out starts where the last one kept ends: when
    # that is at the bound, more may follow (or none: the next page then finds nothing).
    # Counting the rows instead (count() over the whole) cost the database a sixth of the page.
    cut = max_bytes is not None and bool(rows) and rows[-1].through >= max_bytes
    return Page([_stored(row) for row in rows[:limit]], more=len(rows) > limit or cut)


def _with_pruned(query: Select[Any], streams: Sequence[str], newest_first: bool) -> Select[Any]:
    """The rows of ``query`` (a page), then those of ``pruned_above(streams, :after)``, in
    one statement.

    One statement needs no snapshot held across statements: a reader held up between two of
    them (a worker busy elsewhere) would keep a transaction idle meanwhile, which
    ``idle_in_transaction_session_timeout`` ends. Each bound comes as a row after the
    events, its id the bound and ``bound`` set; ``bound`` is the last column, so the events'
    own stay where ``_stored`` reads them (``_split_pruned``).
    """
    page = query.subquery()
    bounds = _pruned_query(streams, _AFTER).subquery()
    extra = [null()] * (len(page.c) - 2)  # the columns past id and stream
    both = union_all(
        select(*page.c, literal_column("0").label("bound")),
        select(bounds.c.pruned_through, bounds.c.stream, *extra, literal_column("1")),
    ).subquery()
    return select(both).order_by(both.c.bound, _keyset(both, newest_first))


def _split_pruned(rows: Sequence[Any]) -> tuple[Sequence[Any], dict[str, int]]:
    """``_with_pruned``'s rows: the page's, and per stream the pruned bound."""
    events = len(rows)
    while events and rows[events - 1].bound:
        events -= 1
    return rows[:events], {row.stream: int(row.id) for row in rows[events:]}


class Source(Protocol):
    """Where a pager may read besides the primary's engine (``replicas.AtLeast``): it runs
    ``read``, one statement, where it sees every event up to id ``need``."""

    def read(self, need: int, read: Callable[[Connection], T]) -> T: ...


def pages(
    engine: Engine | Source,
    where: EventFilter,
    *,
    size: int,
    newest_first: bool = False,
    max_bytes: int | None = None,
    with_pruned: bool = False,
) -> Iterator[Page]:
    """Every event matching ``where``, as keyset pages of at most ``size`` events (and
    about ``max_bytes`` of data).

    The one pager: the hub, a stream's replay and the CLI read through it. Each page
    borrows a connection only while it is read, so a consumer that waits between pages
    (a slow client, a paused fan-out) holds none, and each page is one statement in no
    transaction (``statement_reads``). Pages come with events, except, with ``with_pruned``, a
    last empty one that says what was pruned past the previous page. A ``Source`` reads each
    page where every event up to its ``after`` is.
    """
    while True:
        read = partial(
            read_page,
            where=where,
            limit=size,
            newest_first=newest_first,
            max_bytes=max_bytes,
            with_pruned=with_pruned,
        )
        if isinstance(engine, Engine):
            with statement_reads(engine) as conn:
                page = read(conn)
        else:
            page = engine.read(where.after or 0, read)
        if page.events or page.pruned:
            yield page
        if not page.more or not page.events:
            return
        where = where.beyond(page.events[-1].id, newest_first=newest_first)


def count_events(conn: Connection, where: EventFilter) -> int:
    """How many events match ``where``."""
    query = select(func.count()).select_from(Event).where(*_conditions(_Shape.of(where)))
    return int(conn.execute(query, _bounds(where)).scalar_one())


def statement_reads(engine: Engine) -> Connection:
    """A connection for reads that are one statement each (a statement sees one moment of the
    log by itself), run in no transaction where the driver would open one with a round trip of
    its own before them (the engine's ``outside_transaction``): a reader held up by its worker
    then holds no transaction open on the server meanwhile."""
    return backend_of(engine).outside_transaction(engine.connect())


def snapshot(engine: Engine) -> Connection:
    """A connection whose reads all see one moment of the log, until it is closed.

    Where the log's sessions read at READ COMMITTED (which gives each statement its own
    moment) the engine's ``snapshot`` raises the isolation for this connection.
    """
    return backend_of(engine).snapshot(engine.connect())


def pruned_above(conn: Connection, streams: Sequence[str], after: int) -> dict[str, int]:
    """Per stream of ``streams`` (every stream if empty), the highest id pruned, where
    that is above ``after``: events of that stream after ``after`` were deleted; under
    ``EVERY_STREAM``, the highest id a failover lost, where that is above ``after``."""
    return {row.stream: int(row.pruned_through) for row in conn.execute(_pruned_query(streams, after))}


def _pruned_query(streams: Sequence[str], after: int | BindParameter[int]) -> CompoundSelect[Any]:
    """``pruned_above``'s statement: rows of ``stream`` and ``pruned_through``."""
    query = select(PrunedStream.stream, PrunedStream.pruned_through).where(
        PrunedStream.pruned_through > after
    )
    if streams:
        query = query.where(stream_condition(PrunedStream.stream, streams))
    # What a failover lost is missing from every stream (``timelines.py``); in the same
    # statement, which a page's own takes in (``_with_pruned``).
    lost = (
        select(literal(EVERY_STREAM).label("stream"), func.max(Timeline.lost_through))
        .where(Timeline.lost_through > Timeline.previous_head, Timeline.lost_through > after)
        .having(func.max(Timeline.lost_through).is_not(None))
    )
    return union_all(query, lost)


def oldest(conn: Connection, streams: Sequence[str]) -> int | None:
    """The oldest id still kept of ``streams`` (names or patterns; every stream if empty);
    None if none is."""
    if not streams:
        return conn.execute(select(func.min(Event.id))).scalar_one_or_none()
    # One index lookup per name (a range per pattern), where a single min() over
    # ``stream IN (...)`` may scan.
    firsts = union_all(
        *(
            select(func.min(Event.id).label("id")).where(stream_condition(Event.stream, [s]))
            for s in streams
        )
    ).subquery()
    return conn.execute(select(func.min(firsts.c.id))).scalar_one_or_none()


_COLUMNS = ("id", "stream", "type", "data", "time")


def _keyset(table: Any, newest_first: bool) -> Any:
    return table.c.id.desc() if newest_first else table.c.id


def _stored(row: Any) -> StoredEvent:
    # By position (the order of ``_COLUMNS``): per row of every page, a lookup by name
    # cost more than building the event.
    return StoredEvent(row[0], row[1], row[2], row[3], utc(row[4]))


def _conditions(where: _Shape) -> list[ColumnElement[bool]]:
    """``where`` as conditions, ``after`` and ``before`` as parameters (``_bounds``)."""
    conditions: list[ColumnElement[bool]] = []
    if where.streams:
        conditions.append(stream_condition(Event.stream, where.streams))
    if where.types:
        conditions.append(Event.type.in_(where.types))
    if where.after:
        conditions.append(Event.id > _AFTER)
    if where.before:
        conditions.append(Event.id < _BEFORE)
    # Times never decrease along ids (``store_events``), so the events at or after a time
    # are those from the first id at or after it: one probe of the time index, then the
    # range walks the primary key or a stream's index like ``after``/``before`` do.
    if where.since is not None:
        conditions.append(Event.id >= first_at(where.since).scalar_subquery())
    if where.until is not None:
        conditions.append(Event.id <= func.coalesce(first_at(where.until).scalar_subquery() - 1, MAX_ID))
    return conditions


def stream_condition(column: Any, streams: Sequence[str]) -> ColumnElement[bool]:
    """``column`` holds a stream that one of ``streams`` (names or prefix patterns, not
    ``*``) matches, as ``events.matches`` decides: names by ``IN``, each prefix as its
    :func:`~eventlog.events.prefix_range`, which the ``(stream, id)`` index serves."""
    names = [s for s in streams if not is_prefix(s)]
    ranges = [prefix_range(p) for p in streams if is_prefix(p)]
    parts = [and_(column > low, column < high) for low, high in ranges]
    if names:
        parts.insert(0, column.in_(names))
    return or_(*parts) if len(parts) > 1 else parts[0]


def first_at(moment: datetime) -> Select[int]:
    """The id of the first event at or after ``moment`` (no row if there is none): one probe
    of the ``(time, id)`` index. Every event from it on is at or after ``moment``."""
    return select(Event.id).where(Event.time >= moment).order_by(Event.time, Event.id).limit(1)


def _claim_key(
    conn: Connection, key: str, fingerprint: str, now: datetime, *, retry: bool = True
) -> Appended | IdempotencyConflict | None:
    """Record ``key`` for this publish (None), or return the earlier publish made with it,
    or the conflict when that one stored other events.

    A concurrent publish with the same key waits here for the first one's transaction to
    end, then sees its result (the seam's contract): the key is claimed before the counter
    is touched, so the waiting never holds the counter's lock.
    """
    if backend_of(conn).claim_key(conn, key, fingerprint, now):
        return None
    earlier = conn.execute(select(IdempotencyKey).where(IdempotencyKey.key == key)).one()
    if earlier.fingerprint != fingerprint:
        return _conflict()
    assert earlier.first_id is not None and earlier.last_id is not None
    expected = earlier.last_id - earlier.first_id + 1
    events = read_page(
        conn, EventFilter(after=earlier.first_id - 1, before=earlier.last_id + 1), limit=expected
    ).events
    if len(events) < expected and retry:
        # A prune deleted them (and the key, in the same transaction) since the key was read:
        # the key is free again, as for any retry after its events were pruned.
        return _claim_key(conn, key, fingerprint, now, retry=False)
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
