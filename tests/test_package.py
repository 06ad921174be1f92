"""The package's public surface and its type annotations."""

from __future__ import annotations

from pathlib import Path

import eventlog

ROOT = Path(__file__).resolve().parent.parent


def test_public_names_are_pinned() -> None:
    assert sorted(eventlog.__all__) == [
        "Appended", "ConfigError", "EventFilter", "EventLog", "EventlogError", "Forbidden",
        "IdempotencyConflict", "InvalidRequest", "NewEvent", "Page", "PayloadTooLarge", "QueryTooLong",
        "StoredEvent", "Unauthorized", "UnsupportedMediaType", "blueprint", "create_app", "include_name",
    ]
    assert all(hasattr(eventlog, name) for name in eventlog.__all__)


def test_package_type_checks_strictly() -> None:
    from mypy import api

    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), str(ROOT / "eventlog")])
    assert status == 0, out + err


def test_client_public_names_are_pinned() -> None:
    import eventlog.client

    assert sorted(eventlog.client.__all__) == [
        "AsyncClient", "Client", "ClientError", "Event", "FilePosition", "Forbidden",
        "IdempotencyConflict", "InvalidRequest", "NotFound", "OutOfSpace", "PayloadTooLarge",
        "PositionConflict", "ProblemError", "QueryTooLong", "Reset", "ResetError", "SchemaNotMigrated",
        "ServiceUnavailable", "StatementTimeout", "TransportError", "Unauthorized", "UnsupportedMediaType",
    ]
    assert all(hasattr(eventlog.client, name) for name in eventlog.client.__all__)


SERVER_MODULES = ("flask", "werkzeug", "sqlalchemy", "alembic", "redis", "gevent", "gunicorn", "psycopg", "jwt")


def test_the_client_imports_nothing_of_the_server() -> None:
    """A program that only talks to a server loads none of what serving needs."""
    import subprocess
    import sys

    check = (
        "import sys, eventlog.client, eventlog.client._file_position;"
        f"print(sorted(m for m in sys.modules if m.partition('.')[0] in {SERVER_MODULES!r}))"
    )
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_client_has_a_class_for_every_problem_type_the_server_sends() -> None:
    """A new problem type on the server gets its class in the client (or is named here as
    one the client reads by its status alone)."""
    from eventlog import errors
    from eventlog.client._errors import problem_error

    by_status = {errors.ConfigError, errors.DatabaseUnavailable}  # never sent / a plain 503
    for cls in errors.EventlogError.__subclasses__():
        if cls in by_status:
            continue
        error = problem_error({"type": errors.PROBLEM_BASE + cls.slug, "status": cls.status})
        assert error.slug == cls.slug, cls.__name__
