"""An app with Flask-SQLAlchemy, Flask-Migrate and eventlog on one database: the app's own
``flask db migrate`` sees its own tables only, never eventlog's (which it would drop).

Run as a user runs it: ``flask db init``, ``migrate`` and ``upgrade`` in a process of their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import fresh_postgres_database, url_of
from sqlalchemy import inspect, text

from eventlog.database import make_engine
from eventlog.migrate import head, upgrade

FLASK = Path(sys.executable).with_name("flask")

HOST_APP = """
import os

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column

import eventlog

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = app.config["EVENTLOG_DATABASE_URL"] = os.environ["DATABASE"]
db = SQLAlchemy(app)
events = eventlog.EventLog(app)
migrate = Migrate(app, db{include})


class Order(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str]
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with eventlog's tables (and a log in them), and nothing of the app's yet."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'host.db'}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
        return
    with fresh_postgres_database("eventlog_flask_migrate") as engine:
        upgrade(engine)
        yield url_of(engine)


def flask_db(folder: Path, database: str, *args: str) -> str:
    """Run ``flask db ARGS`` on the app in ``folder``; its output (it must succeed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLOG_")}
    env.update(DATABASE=database, FLASK_APP="host")
    done = subprocess.run(
        [str(FLASK), "db", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def scripts(folder: Path) -> list[str]:
    return [path.read_text() for path in sorted((folder / "migrations" / "versions").glob("*.py"))]


def test_autogenerate_leaves_eventlogs_tables_alone(tmp_path: Path, database: str) -> None:
    (tmp_path / "host.py").write_text(HOST_APP.format(include=", include_name=eventlog.include_name"))
    flask_db(tmp_path, database, "init")
    flask_db(tmp_path, database, "migrate", "-m", "orders")
    [first] = scripts(tmp_path)
    assert "op.create_table('order'" in first
    assert "eventlog" not in first  # neither a drop nor anything else of eventlog's

    flask_db(tmp_path, database, "upgrade")
    assert "No changes in schema detected" in flask_db(tmp_path, database, "migrate", "-m", "nothing")
    assert len(scripts(tmp_path)) == 1
    # The log and its revision are untouched, beside the app's own version table.
    engine = make_engine(database)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT last_id FROM eventlog_counter")).scalar_one() == 0
        assert conn.execute(text("SELECT version_num FROM eventlog_alembic_version")).scalar_one() == head()
        assert "alembic_version" in inspect(conn).get_table_names()
    engine.dispose()
