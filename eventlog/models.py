"""The tables: the event log, the id counter that orders it, idempotency keys, and what
retention has pruned."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .engines.types import TABLE_OPTIONS, Data, Id, Name, Time

# Stable constraint names, so Alembic can find and change them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}



class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Event(Base):
    """One stored event. ``data`` holds the event's JSON text exactly as it is sent out."""

    __tablename__ = "eventlog_events"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    stream: Mapped[str] = mapped_column(Name(200))
    type: Mapped[str] = mapped_column(Name(200))
    data: Mapped[str] = mapped_column(Data)
    time: Mapped[datetime] = mapped_column(Time())

    __table_args__ = (
        # Each audit filter reads in id order from an index (see migration 0002).
        Index("ix_eventlog_events_stream_id", "stream", "id"),
        # Times never decrease along ids, so a time bound is an id bound found here.
        Index("ix_eventlog_events_time_id", "time", "id"),
        Index("ix_eventlog_events_type_id", "type", "id"),
        Index("ix_eventlog_events_stream_type_id", "stream", "type", "id"),
        TABLE_OPTIONS,
    )


class Counter(Base):
    """The single row whose ``last_id`` is the newest committed event id (the log's head),
    and whose ``last_time`` is that event's time.

    Publishing increments it inside the publishing transaction; the row lock held until
    commit is what makes commit order equal id order. Under the same lock each publish's
    time is taken no earlier than ``last_time``, so times never decrease along ids.
    """

    __tablename__ = "eventlog_counter"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_id: Mapped[int] = mapped_column(Id)
    last_time: Mapped[datetime | None] = mapped_column(Time())

    __table_args__ = (TABLE_OPTIONS,)


class IdempotencyKey(Base):
    """The first result of a publish made with an ``Idempotency-Key`` header."""

    __tablename__ = "eventlog_idempotency_keys"

    key: Mapped[str] = mapped_column(Name(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    first_id: Mapped[int | None] = mapped_column(Id)
    last_id: Mapped[int | None] = mapped_column(Id)
    time: Mapped[datetime] = mapped_column(Time())

    # Retention deletes a key with its first event: it looks keys up by that id.
    __table_args__ = (Index("ix_eventlog_idempotency_keys_first_id", "first_id"), TABLE_OPTIONS)


class PrunedStream(Base):
    """Per stream, the highest event id retention has deleted.

    Written in the transaction that deletes the events, so whoever no longer finds an event
    finds the bound that covers it: a resume point or an audit page below it is told so.
    """

    __tablename__ = "eventlog_pruned_streams"

    stream: Mapped[str] = mapped_column(Name(200), primary_key=True)
    pruned_through: Mapped[int] = mapped_column(Id)

    __table_args__ = (TABLE_OPTIONS,)

class Timeline(Base):
    """A PostgreSQL timeline the log was written on (a promotion starts a new one): where
    the log stood when eventlog first wrote on it, and, after an asynchronous failover that
    lost acknowledged events, the highest id a server had seen of them (``timelines.py``).

    Ids up to ``lost_through`` above ``previous_head`` were never handed out on this timeline,
    or (after a late witness) may have been handed out twice: a resume point below
    ``lost_through`` gets a ``reset``.
    """

    __tablename__ = "eventlog_timelines"

    timeline: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    previous_head: Mapped[int] = mapped_column(Id)
    lost_through: Mapped[int] = mapped_column(Id)
    time: Mapped[datetime] = mapped_column(Time())

    __table_args__ = (TABLE_OPTIONS,)
