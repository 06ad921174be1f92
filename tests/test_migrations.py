"""The Alembic migrations: they build the schema the models describe, and undo it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import ENGINES, fresh_database, url_of
from sqlalchemy import Engine, column, insert, inspect, select, text, update
from sqlalchemy import table as table_clause
from sqlalchemy.sql.expression import TableClause

from eventlog import create_app
from eventlog.database import make_engine
from eventlog.migrate import VERSION_TABLE, current, downgrade, head, upgrade
from eventlog.models import Base, IdempotencyKey


@pytest.fixture(params=ENGINES)
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on a brand-new, empty database."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
        yield engine
        engine.dispose()
        return
    with fresh_database(request.param, "eventlog_migrations") as engine:
        yield engine


def test_upgrade_matches_models_and_downgrade_empties(empty_engine: Engine) -> None:
    assert current(empty_engine) is None
    upgrade(empty_engine)
    assert current(empty_engine) == head()
    with empty_engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True, "version_table": VERSION_TABLE}), Base.metadata)
        assert differences == []
        assert conn.execute(text("SELECT last_id FROM eventlog_counter")).scalar_one() == 0
    downgrade(empty_engine, "base")
    assert current(empty_engine) is None
    assert set(inspect(empty_engine).get_table_names()) <= {VERSION_TABLE}


@pytest.mark.parametrize("revision", [None, "0003"], ids=["never-migrated", "at-0003"])
def test_a_database_behind_this_version_says_so_until_upgraded(
    empty_engine: Engine, revision: str | None
) -> None:
    """An application that embeds a newer eventlog but has not run ``eventlog db upgrade``
    gets a 503 naming the fix for each publish, and /readyz keeps it out of rotation,
    instead of a 500 (PostgreSQL) or "retry shortly" (SQLite). Once upgraded, all works."""
    if revision is not None:
        upgrade(empty_engine, revision)
    app = create_app({"EVENTLOG_DATABASE_URL": url_of(empty_engine)})
    client = app.test_client()
    try:
        response = client.post("/streams/s/events", json={"data": 1})
        assert response.status_code == 503
        assert response.get_json()["type"].endswith(":schema-not-migrated")
        assert "eventlog db upgrade" in response.get_json()["detail"]
        assert "Retry-After" not in response.headers
        ready = client.get("/readyz")
        assert (ready.status_code, ready.get_json()["database"]) == (503, "not migrated")

        upgrade(empty_engine)
        assert client.post("/streams/s/events", json={"data": 1}).status_code == 201
        assert client.get("/readyz").get_json() == {"status": "ready", "database": "ok"}
        # A revision this version does not know is a newer one (a rolling deploy): ready.
        with empty_engine.begin() as conn:
            conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = 'f00d'"))
        assert client.get("/readyz").status_code == 200
    finally:
        app.extensions["eventlog"].close()


# --- 0005: the tables move to names of their own ----------------------------------------------

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
# The log as 0004 named it, written with Core constructs so each dialect quotes ``key`` (a
# reserved word on MySQL) and binds the times in its own way.
OLD_LOG: list[tuple[str, list[dict[str, Any]]]] = [
    ("events", [
        {"id": 1, "stream": "orders", "type": "created", "data": '{"order": 1}', "time": T0},
        {"id": 2, "stream": "users", "type": "message", "data": "[1,2]", "time": T0 + timedelta(seconds=1)},
        {"id": 5, "stream": "orders", "type": "paid", "data": '"x"', "time": T0 + timedelta(seconds=2)},
    ]),
    ("idempotency_keys", [{"key": "order-1", "fingerprint": "f1", "first_id": 1, "last_id": 1, "time": T0}]),
    ("pruned_streams", [{"stream": "users", "pruned_through": 4}]),
]


def _old_table(name: str, rows: list[dict[str, Any]]) -> TableClause:
    return table_clause(name, *(column(c) for c in rows[0]))


def test_0005_moves_an_old_log_with_every_event_id_key_and_bound(empty_engine: Engine) -> None:
    """A log under the old names (0004) comes out of the upgrade under eventlog_* names with
    every row as it was, named as the models name things (so autogenerate is clean), and
    goes on where it stopped: the next id, the same key's first result, the pruned bound."""
    upgrade(empty_engine, "0004")
    with empty_engine.begin() as conn:
        for name, rows in OLD_LOG:
            conn.execute(insert(_old_table(name, rows)), rows)
        conn.execute(
            update(table_clause("event_counter", column("last_id"), column("last_time"))).values(
                last_id=5, last_time=T0 + timedelta(seconds=2)
            )
        )
    upgrade(empty_engine)

    inspector = inspect(empty_engine)
    assert set(inspector.get_table_names()) == {table.name for table in Base.metadata.tables.values()} | {VERSION_TABLE}
    for table in Base.metadata.tables.values():
        if empty_engine.dialect.name == "postgresql":  # SQLite does not report the name back
            assert inspector.get_pk_constraint(table.name)["name"] == f"pk_{table.name}"
        assert {i["name"] for i in inspector.get_indexes(table.name)} == {i.name for i in table.indexes}
    with empty_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "version_table": VERSION_TABLE})
        assert compare_metadata(context, Base.metadata) == []

    app = create_app({"EVENTLOG_DATABASE_URL": url_of(empty_engine)})
    client = app.test_client()
    try:
        log = client.get("/events").get_json()["events"]
        assert [(e["id"], e["stream"], e["type"], e["data"]) for e in log] == [
            (1, "orders", "created", {"order": 1}), (2, "users", "message", [1, 2]), (5, "orders", "paid", "x"),
        ]
        assert client.get("/events?stream=users").get_json()["pruned_through"] == 4
        assert client.post("/streams/orders/events", json={"data": 6}).get_json()["id"] == 6
        with empty_engine.connect() as conn:
            key = conn.execute(
                select(IdempotencyKey.key, IdempotencyKey.fingerprint, IdempotencyKey.first_id, IdempotencyKey.last_id)
            )
            assert key.all() == [("order-1", "f1", 1, 1)]
    finally:
        app.extensions["eventlog"].close()
