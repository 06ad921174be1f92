"""Alembic environment: migrates the engine eventlog hands over, or the configured database.

``eventlog db upgrade`` and ``eventlog serve`` pass their engine in ``config.attributes``;
the plain ``alembic`` command (with alembic.ini) falls back to ``EVENTLOG_DATABASE_URL``.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from eventlog.config import Settings, from_environment
from eventlog.database import backend_of, make_engine
from eventlog.migrate import VERSION_TABLE
from eventlog.models import Base

config = context.config
if config.config_file_name:
    fileConfig(config.config_file_name, disable_existing_loggers=False)
engine = config.attributes.get("engine") or make_engine(
    Settings.from_config(from_environment()).database_url
)

with engine.connect() as connection:
    backend = backend_of(connection)
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=backend.batch_migrations,
        compare_type=True,
        version_table=VERSION_TABLE,  # beside an application's own alembic_version
    )
    with context.begin_transaction():
        # A migration may rewrite or index the whole table: the caps that keep the app's
        # statements short do not apply to it.
        with backend.lift_caps(connection):
            context.run_migrations()
