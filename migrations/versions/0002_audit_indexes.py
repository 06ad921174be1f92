"""Indexes for the audit filters on type: alone, and within a stream.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Each serves ``type=...`` (with ``stream=...``) in id order, either way, so a page reads
about ``limit`` index entries instead of walking the primary key past every other type.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_type_id", "events", ["type", "id"])
    op.create_index("ix_events_stream_type_id", "events", ["stream", "type", "id"])


def downgrade() -> None:
    op.drop_index("ix_events_stream_type_id", table_name="events")
    op.drop_index("ix_events_type_id", table_name="events")
