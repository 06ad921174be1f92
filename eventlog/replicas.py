"""Read replicas: reads that tolerate delay go to a PostgreSQL streaming replica that has
what the reader needs, else to the primary.

A replica shows a prefix of the log: ids are taken under the counter row's lock, held until
commit, so commit order is id order, and a standby replays commits in that order. So a
replica whose counter reads ``head`` in a snapshot holds, in that snapshot, every event up to
``head`` that the primary has not pruned, and what retention pruned of them (``pruned_streams``
is written in the deleting transaction). A read that needs the events up to ``need`` (a
replay that must meet the live buffer, an audit page after ``after``) may use a replica whose
snapshot's head is at least ``need``, and nothing else: a replica behind is waited for a
moment (``WAIT_SECONDS``), then skipped for the primary, never read as "nothing there".

Each process checks its replicas every ``CHECK_SECONDS`` in a background thread: one that does
not answer, is not in recovery (a promoted or misnamed server), has not replayed the primary's
latest promotion (``timelines.py``), or lags more than the limit (the age, on the primary's
clock, of the oldest event it lacks) is left out until a check finds it well again. A replica that fails during a read is left out at once and the read runs
on the primary: while the primary answers, a replica never costs a request.

What must see the newest state never comes here: publishing, the id counter, the head that
decides a ``reset``, the hubs' reads (``stream.py``, ``hub.py``).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from . import metrics
from .database import classify
from .errors import StatementTimeout
from .models import Counter, Event, Timeline
from .engines.common import COUNTER_ROW
from .store import head, snapshot, statement_reads

log = logging.getLogger(__name__)

T = TypeVar("T")

CHECK_SECONDS = 1.0  # how often each process checks each replica's state and lag
WAIT_SECONDS = 0.5  # how long a read waits for a replica to reach what it needs
WAIT_STEP_SECONDS = 0.005
_LATEST_TIMELINE = select(func.max(Timeline.timeline)).scalar_subquery()


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """What the last check found: ``state`` is "ok" (in use), "lagging", "unreachable",
    "not a standby", "behind a failover" or "unknown" (not checked yet); ``lag_seconds``
    None when unknown."""

    state: str = "unknown"
    lag_seconds: float | None = None
    head: int | None = None


class Replica:
    """One read replica: its engine and what the last check found."""

    def __init__(self, url: str, engine: Engine) -> None:
        parsed = make_url(url)
        # Host, port and database only: never the password, which logs and /readyz would show.
        self.name = f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"
        self.engine = engine
        self.status = ReplicaState()

    @property
    def usable(self) -> bool:
        return self.status.state == "ok"


class Replicas:
    """The primary and its read replicas: where each read that tolerates delay runs."""

    def __init__(self, primary: Engine, replicas: Sequence[Replica], *, max_lag_seconds: float) -> None:
        self.primary = primary
        self.replicas = tuple(replicas)
        self._max_lag = max_lag_seconds
        self._turn = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._metrics = metrics.get()

    def start(self) -> None:
        """Check the replicas at once, then every ``CHECK_SECONDS``, in the background (until
        the first check, reads go to the primary)."""
        with self._lock:
            if not self.replicas or self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="eventlog-replicas", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for replica in self.replicas:
            replica.engine.dispose()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # a bug must not end the checks: replicas would stay as they are
                log.exception("checking the read replicas failed")
            self._stop.wait(CHECK_SECONDS)

    def check(self) -> None:
        """Measure every replica and take it in or leave it out."""
        for replica in self.replicas:
            self._set(replica, self._measure(replica))

    def _measure(self, replica: Replica) -> ReplicaState:
        newest_id = select(Counter.last_id).where(Counter.id == COUNTER_ROW).scalar_subquery()
        try:
            # One statement in no transaction: a check held up by its process never leaves
            # a session idle in a transaction, which the server would end (a false "unreachable").
            with statement_reads(replica.engine) as conn:
                standby, newest, timeline = conn.execute(
                    select(func.pg_is_in_recovery(), newest_id, _LATEST_TIMELINE)
                ).one()
        except SQLAlchemyError:
            return ReplicaState("unreachable")
        if not standby:
            return ReplicaState("not a standby", head=newest)
        try:
            lag, primary_timeline = self._lag_behind(int(newest))
        except SQLAlchemyError:
            return replica.status  # the primary did not answer: nothing to compare with
        if (timeline or 0) < (primary_timeline or 0):
            # It has not replayed the primary's promotion: after an asynchronous failover it
            # may hold events the new primary lost, under ids handed out again.
            return ReplicaState("behind a failover", head=int(newest))
        state = "ok" if lag <= self._max_lag else "lagging"
        return ReplicaState(state, lag, int(newest))

    def _lag_behind(self, replica_head: int) -> tuple[float, int | None]:
        """How long ago, on the primary's clock, the oldest event a replica at
        ``replica_head`` lacks was committed (0 when it lacks none); and the latest timeline
        the primary recorded (``timelines.py``)."""
        oldest_missing = (
            select(func.extract("epoch", func.clock_timestamp() - Event.time))
            .where(Event.id > replica_head)
            .order_by(Event.id)
            .limit(1)
            .scalar_subquery()
        )
        with statement_reads(self.primary) as conn:
            age, timeline = conn.execute(select(oldest_missing, _LATEST_TIMELINE)).one()
        return (0.0 if age is None else max(0.0, float(age))), timeline

    def _set(self, replica: Replica, status: ReplicaState) -> None:
        before = replica.status
        replica.status = status
        self._metrics.replica_lag.labels(replica.name).set(
            -1 if status.lag_seconds is None else status.lag_seconds
        )
        self._metrics.replica_in_use.labels(replica.name).set(1 if status.state == "ok" else 0)
        if status.state == before.state:
            return
        if status.state == "ok":
            log.info("read replica %s in use (lag %.3f s)", replica.name, status.lag_seconds or 0)
        elif status.state == "lagging":
            log.warning(
                "read replica %s left out: %.1f s behind the primary (limit %g s)",
                replica.name, status.lag_seconds or 0, self._max_lag,
            )
        else:
            log.warning("read replica %s left out: %s", replica.name, status.state)

    def at_least(self, floor: int) -> AtLeast:
        """The reads of a reader that must see every event up to ``floor``."""
        return AtLeast(self, floor)

    def states(self) -> dict[str, ReplicaState]:
        """Each replica's name and what the last check found."""
        return {replica.name: replica.status for replica in self.replicas}

    def read(self, need: int, read: Callable[[Connection], T], *, statement: bool = False) -> T:
        """``read`` on one snapshot that holds every event up to id ``need``: a replica in
        use that has reached it (waited for up to ``WAIT_SECONDS``), else the primary.

        ``statement``: ``read`` is one statement (a pager's page), which sees one moment by
        itself: it runs in no transaction (``store.statement_reads``), after its session found
        the head at or past ``need``; a server's committed state only moves forward, so the
        statement sees at least that much. A replica that fails is left out and the read runs
        on the primary; the primary's errors are the caller's, as for any read.
        """
        connect = statement_reads if statement else snapshot
        for replica, wait in self._candidates(need):
            try:
                outcome = self._read_on(replica, need, read, connect, wait=wait)
            except DBAPIError as error:
                if classify(replica.engine, error) is StatementTimeout:
                    raise  # the caller's own time limit: the primary would take as long
                self._fail(replica, error)
                continue
            except SQLAlchemyError as error:
                self._fail(replica, error)
                continue
            if outcome is not None:
                self._metrics.replica_reads.labels(replica.name).inc()
                return outcome[0]
        self._metrics.replica_reads.labels("primary").inc()
        with connect(self.primary) as conn:
            return read(conn)

    def _candidates(self, need: int) -> list[tuple[Replica, bool]]:
        """The replicas to try, each with whether to wait for it: those in use that the last
        check found at or past ``need`` (a different one first at each read, so they share
        the load), else the one furthest ahead, worth a short wait."""
        usable = [r for r in self.replicas if r.usable]
        ahead = [r for r in usable if (r.status.head or 0) >= need]
        if ahead:
            first = next(self._turn) % len(ahead)
            return [(r, False) for r in ahead[first:] + ahead[:first]]
        if usable:
            return [(max(usable, key=lambda r: r.status.head or 0), True)]
        return []

    def _read_on(
        self,
        replica: Replica,
        need: int,
        read: Callable[[Connection], T],
        connect: Callable[[Engine], Connection],
        *,
        wait: bool,
    ) -> tuple[T] | None:
        """``(result,)`` of ``read`` on a ``connect`` connection of ``replica`` if its head
        there reaches ``need`` (with ``wait``, once it does, within ``WAIT_SECONDS``); else
        None."""
        deadline = time.monotonic() + (WAIT_SECONDS if wait else 0)
        while True:
            with connect(replica.engine) as conn:
                # The head is read on the session the read then uses (in its snapshot, or
                # before its one statement): what the read finds missing up to ``need`` is
                # missing on the primary too (or was pruned, which pruned_streams tells).
                newest = head(conn)
                if newest > (replica.status.head or 0):  # later reads need not wait for it
                    replica.status = dataclasses.replace(replica.status, head=newest)
                if newest >= need:
                    return (read(conn),)
            if time.monotonic() >= deadline or not replica.usable:
                return None
            time.sleep(WAIT_STEP_SECONDS)

    def _fail(self, replica: Replica, error: SQLAlchemyError) -> None:
        """Leave ``replica`` out until the next check finds it well."""
        log.warning("read replica %s failed a read (%s); reading from the primary", replica.name, type(error).__name__)
        self._set(replica, ReplicaState("unreachable"))


@dataclass(frozen=True, slots=True)
class AtLeast:
    """The pages of one reader (``store.pages``, a statement each) that must see every event
    up to ``floor`` (a replay that meets the live buffer there), whatever ``after`` each page
    starts from."""

    replicas: Replicas
    floor: int = 0

    def read(self, need: int, read: Callable[[Connection], T]) -> T:
        return self.replicas.read(max(need, self.floor), read, statement=True)
