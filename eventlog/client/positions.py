"""Consumer positions in the consumer's own SQL database, for exactly-once effects.

A consumer does each event's work and records the event's id as its position in one
transaction: a crash before the commit undoes both (the event comes again), one after it
keeps both (the event never comes again). Each consumer has a name, so several keep their
own positions in one table::

    positions = Positions()              # the table, in its own MetaData (or pass yours)
    positions.create(engine)             # or add positions.table to your migrations
    after = positions.get(engine, "mailer")
    for event in client.subscribe("orders", after=after):
        with Session(engine) as session, session.begin():
            session.add(Mail(order=event.data["order"]))
            positions.advance(session, "mailer", event.id)

``advance`` refuses to go back or stay put (PositionConflict), so two runs of the same
consumer that overlap cannot both commit one event's work.

Needs SQLAlchemy (this module alone in ``eventlog.client`` does).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Connection, Engine, MetaData, String, Table, insert, select, update
from sqlalchemy.orm import Session

from ._errors import PositionConflict

TABLE = "eventlog_consumer_positions"


class Positions:
    """The positions table: one row per consumer name, the id of its last event done."""

    def __init__(self, metadata: MetaData | None = None, *, name: str = TABLE) -> None:
        self.table = Table(
            name,
            MetaData() if metadata is None else metadata,
            Column("consumer", String(200), primary_key=True),
            Column("position", BigInteger, nullable=False),
        )

    def create(self, bind: Engine | Connection) -> None:
        """Create the table if it is not there (a consumer without migrations of its own)."""
        self.table.create(bind, checkfirst=True)

    def get(
        self, bind: Engine | Connection | Session, consumer: str, default: int | None = 0
    ) -> int | None:
        """The consumer's position: the id to subscribe ``after``; ``default`` (the start of
        the log) if it has none yet."""
        query = select(self.table.c.position).where(self.table.c.consumer == consumer)
        if isinstance(bind, Engine):
            with bind.connect() as conn:
                position = conn.scalar(query)
        else:
            position = bind.scalar(query)
        return default if position is None else position

    def advance(self, bind: Connection | Session, consumer: str, event_id: int) -> None:
        """Move the consumer's position to ``event_id``, in the caller's transaction.

        PositionConflict if it is already there or further: this event's work was done and
        committed before, so the caller must roll back.
        """
        c = self.table.c
        moved = bind.execute(
            update(self.table)
            .where(c.consumer == consumer, c.position < event_id)
            .values(position=event_id)
        )
        if moved.rowcount == 1:  # type: ignore[attr-defined]
            return
        current = bind.scalar(select(c.position).where(c.consumer == consumer))
        if current is not None:
            raise PositionConflict(
                f"consumer {consumer!r} is at event {current} already; event {event_id} was done"
            )
        # The first event of this consumer. Two first runs at once: one insert fails on the
        # primary key, and its transaction rolls back.
        bind.execute(insert(self.table).values(consumer=consumer, position=event_id))
