"""Retention: delete what ``EVENTLOG_RETAIN_SECONDS`` and ``EVENTLOG_RETAIN_EVENTS`` no longer
keep, in small batches, remembering per stream the highest id deleted.

An event goes when it is older than the age limit, or when its stream holds at least the
count limit of newer events. Two passes find them: the age pass walks ids from the oldest up
to the first event that is young enough (found on the time index), the count pass walks each
stream up to its newest event beyond the count. Both delete at most ``BATCH`` ids per
statement, each batch its own short transaction, then pause as long as the batch took, so
publishers, the hubs and replays keep their pace however much there is to delete.

Each batch, in its transaction, also raises ``eventlog_pruned_streams`` to the highest id it deleted
of each stream and deletes the idempotency keys whose first event it deleted: a key lives as
long as its events, and a retry with a pruned key stores its events anew. The counter row is
never touched, and no row a publisher writes is locked: publishing never waits on a prune.

One process of the cluster prunes at a time: the pruner holds the engine's pruning lock
(``Backend.prune_lock``, a lock of its database session) while it prunes; a process that
finds it held skips its turn, and if the process dies its session ends and the lock with it,
so another process prunes next time. On SQLite each batch takes the database's write lock
instead: processes may prune in turn, and a second pruner finds nothing left to delete.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    delete,
    func,
    select,
    text,
)
from sqlalchemy.exc import SQLAlchemyError

from . import metrics
from .database import backend_of
from .models import Event, IdempotencyKey
from .store import first_at

log = logging.getLogger(__name__)

BATCH = 5000  # ids per DELETE: a short transaction, a bounded amount of WAL
PAUSE_SECONDS = 0.01  # the least pause between batches (it is as long as the batch took)

# Every distinct stream, one index probe each (a skip scan, which neither database plans by
# itself for DISTINCT): a million events of ten streams cost ten lookups, not a million.
_STREAMS = text(
    f"""
    WITH RECURSIVE streams(name) AS (
        SELECT min(stream) FROM {Event.__tablename__}
        UNION ALL
        SELECT (SELECT min(stream) FROM {Event.__tablename__} WHERE stream > streams.name)
        FROM streams WHERE streams.name IS NOT NULL
    )
    SELECT name FROM streams WHERE name IS NOT NULL
    """
).columns(name=Event.stream.type)


@dataclass(frozen=True, slots=True)
class Policy:
    """What to keep: events younger than ``seconds``, and the newest ``events`` of each
    stream (0: no such limit). Neither: keep everything."""

    seconds: float = 0.0
    events: int = 0

    @property
    def active(self) -> bool:
        return self.seconds > 0 or self.events > 0


@dataclass(frozen=True, slots=True)
class _Pass:
    """Events to delete: those matching ``where``, with ids up to ``through``.

    ``by_range``: walk ``BATCH`` ids at a time (the age pass, on the primary key: a
    condition on time would tempt the planner to the time index and a sort), rather than
    the next ``BATCH`` matching events (a stream's pass, on the stream's index).
    """

    where: ColumnElement[bool]
    through: int
    by_range: bool = False
    after: int = 0  # where the walk starts


def count(engine: Engine, policy: Policy) -> int:
    """How many events a prune would delete now."""
    with engine.connect() as conn:
        passes = _passes(conn, policy)
        total = 0
        for n, step in enumerate(passes):
            # An event both passes want counts once: in the first that wants it.
            earlier = [~and_(p.where, Event.id <= p.through) for p in passes[:n]]
            query = (
                select(func.count())
                .select_from(Event)
                .where(step.where, Event.id <= step.through, *earlier)
            )
            total += int(conn.execute(query).scalar_one())
    return total


def prune(
    engine: Engine,
    policy: Policy,
    *,
    on_batch: Callable[[int], object] | None = None,
    stop: threading.Event | None = None,
) -> int | None:
    """Delete what ``policy`` no longer keeps; return how many events, or None when another
    process is pruning. ``on_batch`` hears each batch's count; ``stop`` ends early."""
    stop = stop or threading.Event()
    with _pruning(engine) as conn:
        if conn is None:
            return None
        deleted = 0
        for step in _passes(conn, policy):
            after: int | None = step.after
            while after is not None and not stop.is_set():
                began = time.monotonic()
                ids, after = _delete_batch(conn, step, after)
                deleted += len(ids)
                metrics.get().pruned.inc(len(ids))
                if on_batch is not None and ids:
                    on_batch(len(ids))
                # As long as the batch took: the database spends at most half its time on
                # a prune, whatever the load; a busy machine gets a slower prune, not
                # slower publishing.
                stop.wait(max(PAUSE_SECONDS, time.monotonic() - began))
        return deleted


@contextlib.contextmanager
def _pruning(engine: Engine) -> Iterator[Connection | None]:
    """A connection to prune on, holding the cluster's pruning lock; None if it is taken."""
    with engine.connect() as conn, backend_of(conn).prune_lock(conn) as taken:
        yield conn if taken else None


def _passes(conn: Connection, policy: Policy) -> list[_Pass]:
    """The age pass and the per-stream count passes, each bounded by the ids it may reach."""
    passes: list[_Pass] = []
    if policy.seconds > 0:
        cutoff = datetime.now(UTC) - timedelta(seconds=policy.seconds)
        # Times never decrease along ids (``store.store_events``): every event below the
        # first young one is old.
        young = conn.execute(first_at(cutoff)).scalar_one_or_none()
        first, newest = conn.execute(select(func.min(Event.id), func.max(Event.id))).one()
        through = (young - 1) if young is not None else newest
        if first is not None and through is not None and through >= first:
            passes.append(_Pass(Event.time < cutoff, through, by_range=True, after=first - 1))
    if policy.events > 0:
        for (stream,) in conn.execute(_STREAMS).all():
            # The newest event beyond the count: it and everything before it go.
            beyond = conn.execute(
                select(Event.id)
                .where(Event.stream == stream)
                .order_by(Event.id.desc())
                .offset(policy.events)
                .limit(1)
            ).scalar_one_or_none()
            if beyond is not None:
                passes.append(_Pass(Event.stream == stream, beyond))
    conn.rollback()  # end the reads' transaction: each batch is a transaction of its own
    return passes


def _delete_batch(conn: Connection, step: _Pass, after: int) -> tuple[list[int], int | None]:
    """Delete the next batch of ``step`` after id ``after``, record the bound of each stream
    and drop their idempotency keys, in one transaction.

    Returns the ids deleted and where the next batch starts (None: the pass is done).
    """
    if step.by_range:
        until = min(after + BATCH, step.through)
        doomed, limit = and_(step.where, Event.id > after, Event.id <= until), None
        following: int | None = until if until < step.through else None
    else:
        doomed, limit = and_(step.where, Event.id > after, Event.id <= step.through), BATCH
        following = None
    backend = backend_of(conn)
    with conn.begin():
        rows = backend.delete_events(conn, doomed, limit=limit)
        ids = [row.id for row in rows]
        if rows:
            highest: dict[str, int] = {}
            for row in rows:
                highest[row.stream] = max(row.id, highest.get(row.stream, 0))
            backend.raise_pruned(conn, highest)
            # The keys whose first event is gone: a range on their index, not 5,000 parameters.
            conn.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.first_id.between(min(ids), max(ids)),
                    ~select(Event.id).where(Event.id == IdempotencyKey.first_id).exists(),
                )
            )
    if not step.by_range and len(ids) == BATCH:
        following = max(ids)
    return ids, following


class Pruner:
    """Prunes every ``interval`` seconds in a background thread (a greenlet under gevent),
    when ``policy`` limits anything. Every process runs one; the lock picks who prunes."""

    def __init__(self, engine: Engine, policy: Policy, *, interval: float) -> None:
        self._engine = engine
        self._policy = policy
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._policy.active and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="eventlog-pruner", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop after the batch under way (its transaction commits or rolls back whole)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                deleted = prune(self._engine, self._policy, stop=self._stop)
            except SQLAlchemyError as error:
                log.warning("pruning failed (%s); retrying in %g s", type(error).__name__, self._interval)
            except Exception:  # a bug must not end retention for the process
                log.exception("pruning failed; retrying later")
            else:
                if deleted:
                    log.info("pruned %d events", deleted)
