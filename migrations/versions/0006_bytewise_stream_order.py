"""Stream names in byte order on PostgreSQL, so a pattern's range is a prefix.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

A pattern subscription (``user.42.*``) reads the stream index as the range
``'user.42.' < stream < 'user.42/'`` (``events.prefix_range``). That range holds exactly the
names with the prefix only where names sort by their bytes. A database created with a
linguistic collation (an ICU locale, or glibc's ``en_US.UTF-8``, common defaults) sorts
``orders.A1`` between ``orders.a`` and ``orders.b``, and may skip punctuation: there the range
would hand ``orders.A*`` the events of ``orders.b``. The ``C`` collation sorts by bytes, and
its btree serves the range; equality, all that other readers ask of the column, is the same
in every deterministic collation. ALTER ... TYPE rebuilds the column's indexes (not the
table). SQLite compares bytes already (BINARY), and MySQL/MariaDB store names as VARBINARY.

"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

COLUMNS = (("eventlog_events", "stream"), ("eventlog_pruned_streams", "stream"))


def upgrade() -> None:
    _collate("C")


def downgrade() -> None:
    _collate(None)


def _collate(collation: str | None) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        op.alter_column(
            table,
            column,
            type_=sa.String(200, collation=collation),
            existing_type=sa.String(200),
            existing_nullable=False,
        )
