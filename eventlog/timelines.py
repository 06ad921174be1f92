"""Failover: each new PostgreSQL connection checks the timeline it is on, so that ids an
asynchronous failover lost are never handed out again unannounced.

A standby promoted to primary starts a new timeline (its WAL file names carry the number).
With synchronous replication nothing acknowledged is lost: the new primary holds every event
any server has seen, and the log simply goes on. With asynchronous replication the newest
acknowledged events may be missing there, and its counter would hand their ids out again
to new events: a subscriber that saw the lost event 120 would then skip the new event 120.

Every server process knows the highest id it has seen (its hub's cursor, its own publishes).
On its first connection to a timeline it has not seen yet, under the counter row's lock:

- the first process there records the timeline with the head it found (``previous_head``);
- a process that has seen ids above the head holds the proof that events were lost: it
  raises the counter past them (plus one id, never used), and records that bound as the
  timeline's ``lost_through``; a later process that saw even more raises both again.

New events then get ids no server has handed out before (when a witness was first there;
otherwise ids up to ``lost_through`` may have been handed out twice). Whoever reads past a
resume point below ``lost_through`` is told with a ``reset``, as for pruned events (``store.
pruned_above``): what it saw, or will not see, of the lost range no longer exists. Hubs that
that saw the lost ids send their subscribers through that same check.

Not covered: a failover after which no process that saw the lost ids comes back (all were
restarted), and publishes made in an application's own transaction on a connection that
eventlog's engine did not open first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, event

from .models import Counter, Timeline

log = logging.getLogger(__name__)

# The timeline of the current WAL insert position: the first 8 hex digits of its file name.
_TIMELINE = (
    "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN NULL"
    " ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END"
)
_COUNTER = Counter.__tablename__
_TIMELINES = Timeline.__tablename__


class Timelines:
    """Checks each new connection of ``engine`` (the primary's) for a new timeline."""

    def __init__(self, engine: Engine, seen: Callable[[], int], on_lost: Callable[[], object]) -> None:
        self._seen = seen
        self._on_lost = on_lost
        self.current: int | None = None  # the timeline this process last checked
        event.listen(engine, "connect", self._on_connect)

    def _on_connect(self, dbapi_connection: Any, _record: Any) -> None:
        try:
            self._check(dbapi_connection)
        except Exception as error:  # before migrations, say: the next connection checks again
            dbapi_connection.rollback()
            log.debug("timeline check skipped (%s)", type(error).__name__)

    def _check(self, connection: Any) -> None:
        with connection.cursor() as cursor:
            standby, timeline = cursor.execute(_TIMELINE).fetchone()
            if standby or timeline == self.current:
                connection.rollback()
                return
            seen = self._seen()
            head = cursor.execute(
                f"SELECT last_id FROM {_COUNTER} WHERE id = 1 FOR UPDATE"
            ).fetchone()[0]
            found = cursor.execute(
                f"SELECT previous_head, lost_through FROM {_TIMELINES} WHERE timeline = %s",
                (timeline,),
            ).fetchone()
            previous, recorded = (head, head) if found is None else found
            # Ids this process saw above where the timeline began were lost (or are now
            # ambiguous): one more id than it saw, so its own cursor lies inside the range.
            lost_through = seen + 1 if seen > previous and seen + 1 > recorded else recorded
            if found is None:
                cursor.execute(
                    f"INSERT INTO {_TIMELINES} (timeline, previous_head, lost_through, time)"
                    " VALUES (%s, %s, %s, clock_timestamp())",
                    (timeline, head, lost_through),
                )
            elif lost_through > recorded:
                cursor.execute(
                    f"UPDATE {_TIMELINES} SET lost_through = %s WHERE timeline = %s",
                    (lost_through, timeline),
                )
            witnessed = lost_through > recorded
            if lost_through > head:
                cursor.execute(f"UPDATE {_COUNTER} SET last_id = %s WHERE id = 1", (lost_through,))
                log.error(
                    "the database is on a new timeline (%d) without events %d-%d that this"
                    " process saw (an asynchronous failover lost them); new events start"
                    " after %d, and readers from before get a reset",
                    timeline, previous + 1, seen, lost_through,
                )
            connection.commit()
        self.current = timeline
        if witnessed:
            # Its subscribers may have read lost ids that new events now carry: each goes
            # back to SQL from its cursor, where the lost range makes a ``reset``.
            self._on_lost()
