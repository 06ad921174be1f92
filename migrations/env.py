"""Alembic environment: migrates the engine eventlog hands over, or the configured database.

``eventlog db upgrade`` and ``eventlog serve`` pass their engine in ``config.attributes``;
the plain ``alembic`` command (with alembic.ini) falls back to ``EVENTLOG_DATABASE_URL``.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from eventlog.config import Settings, from_environment
from eventlog.database import make_engine
from eventlog.migrate import VERSION_TABLE
from eventlog.models import Base

config = context.config
if config.config_file_name:
    fileConfig(config.config_file_name, disable_existing_loggers=False)
engine = config.attributes.get("engine") or make_engine(
    Settings.from_config(from_environment()).database_url
)

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        version_table=VERSION_TABLE,  # beside an application's own alembic_version
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # A migration may rewrite or index the whole table: the caps that keep the app's
            # statements short do not apply to it (for this transaction only).
            connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
            connection.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = 0")
        context.run_migrations()
