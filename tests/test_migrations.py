"""The Alembic migrations: they build the schema the models describe, and undo it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from eventlog.database import make_engine
from eventlog.migrate import current, downgrade, upgrade
from eventlog.models import Base

from conftest import POSTGRES_URL, unavailable


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on a brand-new, empty database."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
        yield engine
        engine.dispose()
        return
    admin = make_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("DROP DATABASE IF EXISTS eventlog_migrations"))
            conn.execute(text("CREATE DATABASE eventlog_migrations"))
    except Exception as error:  # noqa: BLE001
        admin.dispose()
        unavailable(f"PostgreSQL is not reachable: {type(error).__name__}")
    engine = make_engine(admin.url.set(database="eventlog_migrations").render_as_string(hide_password=False))
    yield engine
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS eventlog_migrations"))
    admin.dispose()


def test_upgrade_matches_models_and_downgrade_empties(empty_engine: Engine) -> None:
    assert current(empty_engine) is None
    upgrade(empty_engine)
    assert current(empty_engine) == "0001"
    with empty_engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert differences == []
        assert conn.execute(text("SELECT last_id FROM event_counter")).scalar_one() == 0
    downgrade(empty_engine, "base")
    assert current(empty_engine) is None
    assert set(inspect(empty_engine).get_table_names()) <= {"alembic_version"}
