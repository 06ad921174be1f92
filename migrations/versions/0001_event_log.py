"""The event log, its id counter and idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from eventlog.engines.types import TABLE_OPTIONS, Data, Name, Time

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", Id, autoincrement=False, nullable=False),
        sa.Column("stream", Name(200), nullable=False),
        sa.Column("type", Name(200), nullable=False),
        sa.Column("data", Data, nullable=False),
        sa.Column("time", Time(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_events_stream_id", "events", ["stream", "id"])
    op.create_index("ix_events_time", "events", ["time"])

    counter = op.create_table(
        "event_counter",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_id", Id, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_counter")),
        **TABLE_OPTIONS,
    )
    op.bulk_insert(counter, [{"id": 1, "last_id": 0}])

    op.create_table(
        "idempotency_keys",
        sa.Column("key", Name(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("first_id", Id, nullable=True),
        sa.Column("last_id", Id, nullable=True),
        sa.Column("time", Time(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_idempotency_keys")),
        **TABLE_OPTIONS,
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("event_counter")
    op.drop_index("ix_events_time", table_name="events")
    op.drop_index("ix_events_stream_id", table_name="events")
    op.drop_table("events")
