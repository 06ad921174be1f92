"""Group commit: the publishes waiting at the same moment in one process share a transaction.

Every publishing transaction in the cluster queues for the counter row's lock (that is what
orders commits by id), so the publish rate is bounded by how long one transaction holds it.
Sharing the transaction among concurrent publishes divides that time, and the round trips,
between them; each publish still gets its own run of consecutive ids and its own outcome.

There is no background thread: the first caller to find the writer idle leads. It writes
everything queued by then, hands the lead to the first caller queued after that, and returns.
Nobody leads twice in a row, so no caller waits behind an endless stream of others.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from sqlalchemy import Connection, Engine, exc

from .database import WRITES
from .errors import IdempotencyConflict
from .events import StoredEvent
from .store import Appended, Publish, append_all, needs_transaction

MAX_EVENTS = 10_000  # per shared transaction, to keep the counter's lock hold short


class _Ticket:
    """One caller's place in the queue, and then its outcome."""

    __slots__ = ("error", "leads", "outcome", "publish", "ready")

    def __init__(self, publish: Publish) -> None:
        self.publish = publish
        self.leads = False
        self.ready = threading.Event()
        self.outcome: Appended | IdempotencyConflict | None = None
        self.error: BaseException | None = None


class Writer:
    """Appends publishes to the log, sharing transactions between concurrent callers, and
    announces what each transaction stored once it has committed."""

    def __init__(
        self,
        engine: Engine,
        announce: Callable[[list[StoredEvent]], None],
        *,
        max_bytes: int | None = None,
    ) -> None:
        """``announce`` gets the events each transaction stored, in id order, once it has
        committed. ``max_bytes``: most event data per shared transaction (one publish may hold more):
        what one publish may send (EVENTLOG_MAX_REQUEST_BYTES) is what is known to store
        within the statement timeout, and concurrent large batches must not add up past it."""
        self._engine = engine.execution_options(**WRITES)
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        # Kept between batches: only the leader uses it, one batch at a time, and checking a
        # connection out of the pool and back cost as much CPU as the statement it runs.
        self._held: Connection | None = None
        self._announce = announce
        self._lock = threading.Lock()
        self._queue: list[_Ticket] = []
        self._busy = False
        self._max_bytes = math.inf if max_bytes is None else max_bytes

    def write(self, publish: Publish, deadline: float | None = None) -> Appended:
        """Store one publish and return its result once committed (blocks until then).

        With a ``deadline`` (``time.monotonic()`` time) a publish still queued then, or
        made the leader too late to begin, leaves the queue with SQLAlchemy's TimeoutError
        (the one a pool raises); one already in a batch gets that batch's outcome, which its
        leader, queued before it, has by its own earlier deadline.
        """
        ticket = _Ticket(publish)
        with self._lock:
            self._queue.append(ticket)
            if not self._busy:
                self._busy = ticket.leads = True
        if not ticket.leads:
            # Written by a leader, or made the next leader.
            ticket.ready.wait(None if deadline is None else max(deadline - time.monotonic(), 0))
            if deadline is not None and time.monotonic() >= deadline and self._leave(ticket):
                raise exc.TimeoutError("the database did not take this publish in time")
            ticket.ready.wait()
        if ticket.leads:
            self._lead()
        if ticket.error is not None:
            raise ticket.error
        if isinstance(ticket.outcome, IdempotencyConflict):
            raise ticket.outcome
        assert ticket.outcome is not None
        return ticket.outcome

    def _lead(self) -> None:
        with self._lock:
            batch = self._take()
        publishes = [t.publish for t in batch]
        try:
            if needs_transaction(self._engine, publishes):
                with self._engine.begin() as conn:
                    outcomes = append_all(conn, publishes)
            else:
                outcomes = self._append_autocommit(publishes)
            for ticket, outcome in zip(batch, outcomes, strict=True):
                ticket.outcome = outcome
            new = [e for o in outcomes if isinstance(o, Appended) and not o.replayed for e in o.events]
            if new:
                # Only now, after the commit: a notification must never outrun its data.
                self._announce(new)
                # Let the greenlets this woke run before any response is written: the
                # announcer (other processes' doorbell) and the local hub's first slice of
                # deliveries. The writer is still busy meanwhile: publishes arriving now
                # queue for the next batch, which begins only after this one's callers.
                time.sleep(0)
        except BaseException as error:  # every caller in the batch learns what happened
            for ticket in batch:
                ticket.error = error
        finally:
            with self._lock:
                self._hand_over()
            for ticket in batch:
                ticket.leads = False
                ticket.ready.set()

    def _hand_over(self) -> None:
        """Make the first queued caller the leader, or the writer idle (under the lock)."""
        if self._queue:
            self._queue[0].leads = True
            self._queue[0].ready.set()
        else:
            self._busy = False

    def _leave(self, ticket: _Ticket) -> bool:
        """Take ``ticket`` out of the queue unless a leader has taken it into a batch; a
        lead it was handed and had not begun passes on. Whether it left."""
        with self._lock:
            if ticket not in self._queue:
                return False
            self._queue.remove(ticket)
            if ticket.leads:
                ticket.leads = False
                self._hand_over()
            return True

    def _append_autocommit(
        self, publishes: list[Publish]
    ) -> list[Appended | IdempotencyConflict]:
        """One statement that commits by itself, on the connection kept for it."""
        if self._held is None:
            self._held = self._autocommit.connect()
        try:
            return append_all(self._held, publishes)
        except BaseException:
            # It may be broken (the database restarted, say): the next batch takes a new one.
            self._held.invalidate()
            self._held.close()
            self._held = None
            raise

    def close(self) -> None:
        """Close the kept connection; for shutdown, when nothing is being published."""
        if self._held is not None:
            self._held.close()
            self._held = None

    def _take(self) -> list[_Ticket]:
        """The queued tickets, oldest first, up to MAX_EVENTS events and ``max_bytes`` of
        data (at least one)."""
        count, size, taken = 0, 0, 0
        for ticket in self._queue:
            count += len(ticket.publish.events)
            size += sum(len(e.data) for e in ticket.publish.events)
            if taken and (count > MAX_EVENTS or size > self._max_bytes):
                break
            taken += 1
        batch, self._queue = self._queue[:taken], self._queue[taken:]
        return batch
