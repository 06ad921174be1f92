"""What a database error means for the caller, read from the DBAPI error that a SQLAlchemy
error wraps: PostgreSQL's SQLSTATE, or SQLite's result code (``sqlite_errorname``, Python 3.11+).

Pure: each function looks at an exception and nothing else, so the HTTP layer, readiness
and the CLI can all ask the same question of the same error.
"""

from __future__ import annotations

DISK_FULL = "53100"  # PostgreSQL disk_full: a table, index or WAL could not grow
QUERY_CANCELED = "57014"  # PostgreSQL query_canceled: statement_timeout (or an operator) ended it
SQLITE_FULL = "SQLITE_FULL"  # "database or disk is full" (the disk, or max_page_count)


def out_of_space(error: BaseException) -> bool:
    """Whether ``error`` is the database refusing a write for lack of space.

    Either engine rolls the whole transaction back then: nothing of it was stored.
    """
    cause = getattr(error, "orig", None) or error
    return (
        getattr(cause, "sqlstate", None) == DISK_FULL
        or getattr(cause, "sqlite_errorname", None) == SQLITE_FULL
    )


def statement_timed_out(error: BaseException) -> bool:
    """Whether ``error`` is PostgreSQL ending a statement at its ``statement_timeout``
    (SQLSTATE 57014, which an operator's ``pg_cancel_backend`` also raises): the statement
    ran, and was stopped, so the database is up and nothing of it was stored."""
    cause = getattr(error, "orig", None) or error
    return getattr(cause, "sqlstate", None) == QUERY_CANCELED
