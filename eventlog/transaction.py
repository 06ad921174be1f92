"""Announcing events written in a caller's transaction once, and only once, it commits.

``EventLog.publish(..., session=...)`` writes in the caller's open transaction. The events
may be announced only after that transaction has committed (store before notify), and never
if it rolls back. How to learn of the commit depends on what the caller handed over:

- a ``Session`` (or a ``scoped_session``, such as Flask-SQLAlchemy's ``db.session``): its
  ``after_commit`` event, which fires once the database has committed;
- a ``Connection``: Core has no after-commit event (its ``commit`` event fires before the
  commit is sent), so the announcement waits for the first moment that is surely after it:
  the connection's next ``begin``, or its return to the pool (``with engine.begin()`` does
  both right after committing).

Announcing a range is a doorbell, not a delivery: an announcement that is lost or late only
delays delivery until the hub's periodic read, and one for ids that never committed (a
failed commit) finds nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, event
from sqlalchemy.orm import Session, scoped_session

from . import metrics
from .notify import Notifier

Announce = Callable[[int, int], None]
_PENDING = "eventlog.pending"  # written in the open transaction, not yet committed
_COMMITTED = "eventlog.committed"  # committed on a connection, not yet announced


def announce_after_commit(
    session: Session | scoped_session[Session] | Connection, notifier: Notifier
) -> tuple[Connection, Announce]:
    """The connection of ``session``'s open transaction, and a function that records a
    range of ids for ``notifier`` to announce once that transaction commits."""
    if isinstance(session, scoped_session):
        session = session()
    if isinstance(session, Session):
        _watch_session(session)
        info = session.info
        connection = session.connection()
    else:
        _watch_connection(session)
        info = session.info
        connection = session

    def later(first_id: int, last_id: int) -> None:
        info.setdefault(_PENDING, []).append((notifier, first_id, last_id))

    return connection, later


def _watch_session(session: Session) -> None:
    if not event.contains(session, "after_commit", _announce_session):
        event.listen(session, "after_commit", _announce_session)
        # Fires after after_commit, and for every other end too (rollback, close).
        event.listen(session, "after_transaction_end", _forget_session)


def _announce_session(session: Session) -> None:
    _announce(session.info.pop(_PENDING, []))


def _forget_session(session: Session, transaction: Any) -> None:
    if transaction.parent is None:  # the outermost transaction ended without a commit
        session.info.pop(_PENDING, None)


def _watch_connection(connection: Connection) -> None:
    if event.contains(connection, "commit", _committing):
        return
    event.listen(connection, "commit", _committing)
    event.listen(connection, "rollback", _forget_connection)
    event.listen(connection, "begin", _announce_connection)
    pool = connection.engine.pool
    if not event.contains(pool, "checkin", _announce_checked_in):
        event.listen(pool, "checkin", _announce_checked_in)


def _committing(connection: Connection) -> None:
    # Fired just before the commit is sent: remember the ranges for the moment after it.
    pending = connection.info.pop(_PENDING, [])
    if pending:
        connection.info.setdefault(_COMMITTED, []).extend(pending)


def _forget_connection(connection: Connection) -> None:
    connection.info.pop(_PENDING, None)


def _announce_connection(connection: Connection) -> None:
    _announce(connection.info.pop(_COMMITTED, []))


def _announce_checked_in(_dbapi_connection: Any, record: Any) -> None:
    # ``Connection.info`` is the pool record's ``info``: the same dictionary.
    if record is not None:
        _announce(record.info.pop(_COMMITTED, []))


def _announce(ranges: list[tuple[Notifier, int, int]]) -> None:
    for notifier, first_id, last_id in ranges:
        metrics.get().stored.inc(last_id - first_id + 1)  # committed now, so stored
        notifier.announce(first_id, last_id)
