"""The Alembic migrations: they build the schema the models describe, and undo it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import fresh_postgres_database
from sqlalchemy import Engine, inspect, text

from eventlog.database import make_engine
from eventlog.migrate import VERSION_TABLE, current, downgrade, head, upgrade
from eventlog.models import Base


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on a brand-new, empty database."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
        yield engine
        engine.dispose()
        return
    with fresh_postgres_database("eventlog_migrations") as engine:
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
