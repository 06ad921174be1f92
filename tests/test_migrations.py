"""The Alembic migrations: they build the schema the models describe, and undo it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import ENGINES, fresh_database, url_of
from sqlalchemy import Engine, inspect, text

from eventlog import create_app
from eventlog.database import make_engine
from eventlog.migrate import VERSION_TABLE, current, downgrade, head, upgrade
from eventlog.models import Base


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
        assert conn.execute(text("SELECT last_id FROM event_counter")).scalar_one() == 0
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
