"""Alembic environment: migrates the engine eventlog hands over, or the configured database.

``eventlog db upgrade`` and ``eventlog serve`` pass their engine in ``config.attributes``;
the plain ``alembic`` command (with alembic.ini) falls back to ``EVENTLOG_DATABASE_URL``.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context

from eventlog.config import DEFAULTS
from eventlog.database import make_engine
from eventlog.models import Base

config = context.config
if config.config_file_name:
    fileConfig(config.config_file_name, disable_existing_loggers=False)
engine = config.attributes.get("engine") or make_engine(
    os.environ.get("EVENTLOG_DATABASE_URL", DEFAULTS["DATABASE_URL"])
)

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
