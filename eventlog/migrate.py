"""Schema migrations through Alembic, run on an engine the caller owns.

eventlog keeps its revision in a version table of its own, ``eventlog_alembic_version``, so
its migrations live beside an application's own (Flask-Migrate's ``alembic_version``) in
one database. A database migrated before that table existed has eventlog's revision in
``alembic_version``; the first upgrade moves it over, and leaves any other revision there.

Every table of eventlog's is named ``eventlog_...``, so an application's own autogenerate
can leave them all alone with one rule, ``include_name`` below.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib.resources import files

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    inspect,
    select,
    text,
)

TABLE_PREFIX = "eventlog_"
"""The prefix of every table eventlog owns, its version table included."""
VERSION_TABLE = f"{TABLE_PREFIX}alembic_version"
LEGACY_VERSION_TABLE = "alembic_version"
# The shape Alembic gives its version tables.
_VERSION = Table(
    VERSION_TABLE,
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"),
)


def include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """Alembic's ``include_name`` hook for an application that embeds eventlog: its
    autogenerate then leaves eventlog's tables (``eventlog_*``) alone, which eventlog
    migrates itself. With Flask-Migrate::

        migrate = Migrate(app, db, include_name=eventlog.include_name)
    """
    return not (type_ == "table" and name is not None and name.startswith(TABLE_PREFIX))


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config whose scripts are the packaged ``migrations/`` and whose
    connection comes from ``engine`` (``env.py`` reads it from ``attributes``)."""
    config = Config()
    config.set_main_option("script_location", str(files("eventlog.migrations")))
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision``."""
    config = alembic_config(engine)
    with engine.begin() as conn:
        _adopt_legacy_version(conn, config)
    command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Revert migrations down to ``revision`` (``base`` empties the schema)."""
    command.downgrade(alembic_config(engine), revision)


def current(engine: Engine) -> str | None:
    """The revision eventlog's tables are at, or None for an unmigrated database."""
    with engine.connect() as connection:
        return _revision(connection)


def _revision(conn: Connection) -> str | None:
    # Read straight from the table: Alembic's MigrationContext logs two lines each time,
    # and /readyz asks on every probe.
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(select(_VERSION.c.version_num)).scalar_one_or_none()


def head() -> str | None:
    """The newest revision the package ships."""
    return _scripts().get_current_head()


def revisions() -> list[str]:
    """The revisions the package ships, oldest first."""
    return [script.revision for script in reversed(list(_scripts().walk_revisions()))]


def precedes(revision: str, than: str) -> bool:
    """Whether ``revision`` comes before ``than`` (an upgrade to it would do nothing)."""
    if revision in ("head", than) or than not in revisions():
        return False
    return revision == "base" or revision in {s.revision for s in _scripts().iterate_revisions(than, "base")}


def behind(conn: Connection) -> bool:
    """Whether the database needs ``upgrade`` for this version: never migrated, or at a
    revision older than the package's head. A revision the package does not know is newer
    (a later version migrated it during a rolling deploy), and counts as not behind."""
    revision = _revision(conn)
    return revision is None or revision in _older_revisions()


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


@functools.cache
def _older_revisions() -> frozenset[str]:
    """Every revision the package ships but its head."""
    scripts = _scripts()
    return frozenset(script.revision for script in scripts.walk_revisions()) - {scripts.get_current_head()}


def _adopt_legacy_version(conn: Connection, config: Config) -> None:
    """Move eventlog's revision out of ``alembic_version`` into its own table, once."""
    tables = set(inspect(conn).get_table_names())
    if VERSION_TABLE in tables or LEGACY_VERSION_TABLE not in tables:
        return
    ours = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    rows = conn.execute(text(f"SELECT version_num FROM {LEGACY_VERSION_TABLE}")).scalars().all()
    adopted = [revision for revision in rows if revision in ours]
    if not adopted:
        return  # another application's revisions: not ours to touch
    _VERSION.create(conn)
    for revision in adopted:
        conn.execute(_VERSION.insert().values(version_num=revision))
        conn.execute(text(f"DELETE FROM {LEGACY_VERSION_TABLE} WHERE version_num = :r"), {"r": revision})
    if len(adopted) == len(rows):
        conn.execute(text(f"DROP TABLE {LEGACY_VERSION_TABLE}"))
