"""What several engines share: the counter's row, the plain insert of numbered rows, the
``INSERT ... ON CONFLICT`` forms of SQLite and PostgreSQL, snapshots and session locks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, Select, case, delete, insert, select
from sqlalchemy.dialects.postgresql import Insert as PostgresqlInsert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.exc import SQLAlchemyError

from ..events import NewEvent
from ..models import Event, IdempotencyKey, PrunedStream
from .base import Backend

COUNTER_ROW = 1
_INSERT = insert(Event)


def insert_rows(conn: Connection, first_id: int, time: datetime, events: Sequence[NewEvent]) -> None:
    """Insert ``events`` under the ids from ``first_id`` on, all at ``time``."""
    conn.execute(
        _INSERT,
        [
            {"id": first_id + n, "stream": e.stream, "type": e.type, "data": e.data, "time": time}
            for n, e in enumerate(events)
        ],
    )


class OnConflict(Backend):
    """An engine with ``INSERT ... ON CONFLICT`` and ``DELETE ... RETURNING`` (SQLite,
    PostgreSQL)."""

    insert: Callable[[Any], SqliteInsert | PostgresqlInsert]
    """The dialect's ``insert`` construct."""

    def claim_key(self, conn: Connection, key: str, fingerprint: str, now: datetime) -> bool:
        claimed = conn.execute(
            self.insert(IdempotencyKey)
            .values(key=key, fingerprint=fingerprint, time=now)
            .on_conflict_do_nothing(index_elements=[IdempotencyKey.key])
            .returning(IdempotencyKey.key)
        ).first()
        return claimed is not None

    def delete_events(
        self, conn: Connection, where: ColumnElement[bool], *, limit: int | None
    ) -> Sequence[Row[int, str]]:
        doomed = delete(Event).where(where)
        if limit is not None:
            doomed = delete(Event).where(
                Event.id.in_(select(Event.id).where(where).order_by(Event.id).limit(limit).scalar_subquery())
            )
        return conn.execute(doomed.returning(Event.id, Event.stream)).all()

    def raise_pruned(self, conn: Connection, highest: dict[str, int]) -> None:
        upsert = self.insert(PrunedStream)
        new = upsert.excluded.pruned_through
        conn.execute(
            upsert.on_conflict_do_update(
                index_elements=[PrunedStream.stream],
                set_={
                    "pruned_through": case(
                        (new > PrunedStream.pruned_through, new), else_=PrunedStream.pruned_through
                    )
                },
            ),
            [{"stream": s, "pruned_through": i} for s, i in sorted(highest.items())],
        )


@contextlib.contextmanager
def session_lock(conn: Connection, take: Select[tuple[bool]], release: Select[Any]) -> Iterator[bool]:
    """Hold a lock of ``conn``'s session, which ``take`` tries to get without waiting (True
    if it did) and ``release`` gives back; it also ends with the session, so a process that
    dies holds nothing."""
    taken = bool(conn.execute(take).scalar_one())
    conn.commit()
    if not taken:
        yield False
        return
    try:
        yield True
    finally:
        try:
            conn.rollback()
            conn.execute(release)
            conn.commit()
        except SQLAlchemyError:
            conn.invalidate()  # closing the session releases the lock as well
