"""Tables named with eventlog's own prefix: eventlog_events, eventlog_counter,
eventlog_idempotency_keys, eventlog_pruned_streams.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

``events`` is a name an application is likely to own already, and one prefix lets a host
app's autogenerate (Flask-Migrate) leave every table of eventlog alone with one rule
(``eventlog.include_name``). Each table is renamed in place, so every event keeps its id;
the primary keys and indexes, whose names carry the table's name (and share one namespace
per schema on PostgreSQL), are renamed with them. Only Alembic's portable operations: on
SQLite the batch recreates the table to rename its primary key, elsewhere it alters it.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLES = {
    "events": "eventlog_events",
    "event_counter": "eventlog_counter",
    "idempotency_keys": "eventlog_idempotency_keys",
    "pruned_streams": "eventlog_pruned_streams",
}
# Per table, its indexes: (name without the table's name, columns).
INDEXES = {
    "events": [
        ("stream_id", ["stream", "id"]),
        ("time_id", ["time", "id"]),
        ("type_id", ["type", "id"]),
        ("stream_type_id", ["stream", "type", "id"]),
    ],
    "idempotency_keys": [("first_id", ["first_id"])],
}
PRIMARY_KEYS = {
    "events": ["id"],
    "event_counter": ["id"],
    "idempotency_keys": ["key"],
    "pruned_streams": ["stream"],
}


def upgrade() -> None:
    for old, new in TABLES.items():
        _rename(old, source=old, target=new)


def downgrade() -> None:
    for old, new in TABLES.items():
        _rename(old, source=new, target=old)


def _rename(table: str, *, source: str, target: str) -> None:
    """Rename ``table`` (its name before this revision) from ``source`` to ``target``, with
    its primary key (``pk_<name>``) and indexes (``ix_<name>_<columns>``)."""
    op.rename_table(source, target)
    with op.batch_alter_table(target) as batch:
        batch.drop_constraint(f"pk_{source}", type_="primary")
        batch.create_primary_key(f"pk_{target}", PRIMARY_KEYS[table])
        for suffix, columns in INDEXES.get(table, []):
            batch.drop_index(f"ix_{source}_{suffix}")
            batch.create_index(f"ix_{target}_{suffix}", columns)
