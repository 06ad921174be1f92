"""Retention: the highest id pruned per stream, and idempotency keys by their first event.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from eventlog.engines.types import TABLE_OPTIONS, Name

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "pruned_streams",
        sa.Column("stream", Name(200), nullable=False),
        sa.Column("pruned_through", Id, nullable=False),
        sa.PrimaryKeyConstraint("stream", name=op.f("pk_pruned_streams")),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_idempotency_keys_first_id", "idempotency_keys", ["first_id"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_first_id", table_name="idempotency_keys")
    op.drop_table("pruned_streams")
