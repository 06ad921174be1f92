"""The PostgreSQL timelines the log was written on, and what a failover lost.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

A promoted standby starts a new timeline. Each row says where the log stood when eventlog
first wrote on a timeline (``previous_head``) and the highest id a server had seen before
that is not in this database (``lost_through``, above ``previous_head`` only after an
asynchronous failover lost acknowledged events); see ``eventlog/timelines.py``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from eventlog.engines.types import TABLE_OPTIONS, Id, Time

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "eventlog_timelines",
        sa.Column("timeline", Id, autoincrement=False, nullable=False),
        sa.Column("previous_head", Id, nullable=False),
        sa.Column("lost_through", Id, nullable=False),
        sa.Column("time", Time(), nullable=False),
        sa.PrimaryKeyConstraint("timeline", name=op.f("pk_eventlog_timelines")),
        **TABLE_OPTIONS,
    )


def downgrade() -> None:
    op.drop_table("eventlog_timelines")
