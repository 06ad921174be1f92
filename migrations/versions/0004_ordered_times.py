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

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("event_counter", sa.Column("last_time", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        """
        UPDATE events SET time = earlier.latest
        FROM (
            SELECT id, max(time) OVER (
                ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
            ) AS latest
            FROM events
        ) AS earlier
        WHERE events.id = earlier.id AND events.time < earlier.latest
        """
    )
    op.execute("UPDATE event_counter SET last_time = (SELECT max(time) FROM events)")
    op.drop_index("ix_events_time", table_name="events")
    op.create_index("ix_events_time_id", "events", ["time", "id"])


def downgrade() -> None:
    # The raised times stay: they are the order the log was read in.
    op.drop_index("ix_events_time_id", table_name="events")
    op.create_index("ix_events_time", "events", ["time"])
    op.drop_column("event_counter", "last_time")
