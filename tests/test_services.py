"""The test suite's own setup: what it says when a service cannot be used."""

from __future__ import annotations

import pytest
from conftest import POSTGRES_URL, server_problem, unavailable
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from eventlog.database import make_engine


def reason(url: str) -> str:
    engine = make_engine(url)
    try:
        with engine.connect():
            pytest.fail(f"connected to {url}")
    except OperationalError as error:
        return server_problem(error, engine.url, "PostgreSQL")
    finally:
        engine.dispose()
    raise AssertionError("unreachable")


def test_a_missing_database_is_named_as_such_not_as_an_unreachable_server() -> None:
    server = make_url(POSTGRES_URL)
    engine = make_engine(POSTGRES_URL)
    try:
        engine.connect().close()
    except OperationalError:
        unavailable(f"PostgreSQL is not reachable at {server.render_as_string()}")
    finally:
        engine.dispose()
    missing = reason(server.set(database="eventlog_no_such_database").render_as_string(hide_password=False))
    assert "has no database 'eventlog_no_such_database'" in missing and "not reachable" not in missing
    nobody = reason(server.set(port=1, database="x").render_as_string(hide_password=False))
    assert nobody.startswith("PostgreSQL is not reachable at")
