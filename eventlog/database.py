"""The database seam's front door: an engine for a URL, and the engine module that serves it.

Everything that differs between the engines eventlog runs on lives in ``engines/``, one
module per engine behind ``engines.base.Backend``, whose docstring states the contract each
keeps. The rest of eventlog asks ``backend_of(engine)`` and never names a dialect.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from .engines.base import WRITES, Backend, Timeouts
from .engines.mysql import MySQL
from .engines.postgresql import PostgreSQL
from .engines.sqlite import SQLite
from .errors import DatabaseUnavailable, EventlogError

__all__ = ["WRITES", "Backend", "Timeouts", "backend_of", "classify", "make_engine", "supported_url"]

BACKENDS: dict[str, Backend] = {b.name: b for b in (SQLite(), PostgreSQL(), MySQL())}
_SCHEMES = {scheme: b for b in BACKENDS.values() for scheme in (b.name, *b.schemes)}
SUPPORTED = "SQLite, PostgreSQL, MySQL or MariaDB"


def supported_url(url: URL) -> URL | None:
    """``url`` with its engine's driver when it names none (``postgres://`` gets psycopg,
    ``mysql://`` and ``mariadb://`` PyMySQL); None for an engine eventlog does not run on."""
    backend = _SCHEMES.get(url.drivername.partition("+")[0])
    return None if backend is None else backend.url(url)


def make_engine(url: str | URL, timeouts: Timeouts | None = None, **options: Any) -> Engine:
    """An engine for ``url`` whose sessions keep the seam's contract, each wait bounded by
    ``timeouts`` (unbounded without). Engines made with ``execution_options(**WRITES)``
    write the log."""
    parsed = make_url(url)
    complete = supported_url(parsed)
    if complete is None:
        raise ValueError(f"eventlog runs on {SUPPORTED}, not {parsed.get_backend_name()}")
    return _backend(complete.get_backend_name()).create_engine(complete, timeouts, options)


def backend_of(bind: Engine | Connection) -> Backend:
    """The engine module behind ``bind``."""
    return _backend(bind.dialect.name)


def classify(bind: Engine | Connection, error: BaseException) -> type[EventlogError] | None:
    """What a failure of ``bind`` means in eventlog's terms (``Backend.classify``); None
    for an error that is not the database's, or that it cannot explain (a bug)."""
    if isinstance(error, PoolTimeout):  # every pooled connection busy for too long
        return DatabaseUnavailable
    if isinstance(error, DBAPIError):
        return backend_of(bind).classify(error)
    return None


def _backend(name: str) -> Backend:
    return _SCHEMES[name]
