"""Event times that never decrease along ids, so time filters become id ranges.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

Until now a publish took its time before it waited for the counter's lock, so two racing
publishes could store a later id under an earlier time (by the length of the race), and
writers on several hosts stamped events with clocks that disagree. From here on the time is
taken under the lock, no earlier than the counter's new ``last_time``. This revision raises
each existing event that is older than an event before it to that event's time (the time at
which it could first be read), records the newest time in the counter, and indexes times
with their ids, where ``since``/``until`` find the id that bounds them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from eventlog.engines.types import Time

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("event_counter", sa.Column("last_time", Time(), nullable=True))
    events = sa.table("events", sa.column("id"), sa.column("time"))
    earlier = sa.select(
        events.c.id,
        sa.func.max(events.c.time)
        .over(order_by=events.c.id, rows=(None, -1))
        .label("latest"),
    ).subquery("earlier")
    # Built, not written: SQLAlchemy spells an UPDATE from another table in each
    # engine's own syntax (UPDATE ... FROM, or MySQL's UPDATE ... JOIN).
    op.execute(
        events.update()
        .values(time=earlier.c.latest)
        .where(events.c.id == earlier.c.id, events.c.time < earlier.c.latest)
    )
    op.execute("UPDATE event_counter SET last_time = (SELECT max(time) FROM events)")
    op.drop_index("ix_events_time", table_name="events")
    op.create_index("ix_events_time_id", "events", ["time", "id"])


def downgrade() -> None:
    # The raised times stay: they are the order the log was read in.
    op.drop_index("ix_events_time_id", table_name="events")
    op.create_index("ix_events_time", "events", ["time"])
    op.drop_column("event_counter", "last_time")
