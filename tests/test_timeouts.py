"""A database that is down or slow gets a clear answer within the configured bounds:
503 problem+json (never a 500 or a hang), and no event data or key in the server's log."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Server
from flask import Flask
from helpers import SHORT_TIMEOUTS, CuttableProxy, through, wait_until
from sqlalchemy import text

from eventlog import EventLog, create_app
from eventlog.database import make_engine
from eventlog.models import Event

pytestmark = pytest.mark.postgres

StartServer = Callable[..., Server]
SECRET = "do-not-log-7f3a9c"  # in an event's data and in an Idempotency-Key



def test_database_down_is_a_503_within_the_bounds_and_logs_no_event_data(
    server_url: str, server_proxy: CuttableProxy, start_server: StartServer, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    server = start_server(through(server_proxy, server_url), log=log, **SHORT_TIMEOUTS)
    # One deadline per request on every server engine, with a margin for a busy machine.
    bound = SHORT_TIMEOUTS["REPLY_TIMEOUT_SECONDS"] + 1.5
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/streams/s/events", json={"data": 1}).status_code == 201
        assert client.get("/events").status_code == 200
        server_proxy.cut(refuse=True)  # the database is down: connections reset, refused
        answers = {
            "publish": lambda: client.post(
                "/streams/s/events",
                json={"data": {"card": SECRET}},
                headers={"Idempotency-Key": f"key-{SECRET}"},
            ),
            "audit": lambda: client.get("/events?stream=s"),
            "readyz": lambda: client.get("/readyz"),
        }
        for name, call in answers.items():
            started = time.monotonic()
            response = call()
            assert time.monotonic() - started < bound, name
            assert response.status_code == 503, (name, response.text)
            if name == "readyz":
                assert response.json() == {"status": "unavailable", "database": "unreachable"}
            else:
                assert response.headers["Content-Type"] == "application/problem+json"
                assert response.headers["Retry-After"] == "1"
                assert SECRET not in response.text
        server_proxy.resume()
        # Back once the database is: dead connections are replaced by themselves (the
        # writer's kept one after a first failure, so the retry carries a key).
        wait_until(
            lambda: client.post(
                "/streams/s/events", json={"data": 2}, headers={"Idempotency-Key": "after"}
            ).status_code == 201,
            timeout=10,
        )
        assert [e["data"] for e in client.get("/events").json()["events"]] == [1, 2]
    server.stop()
    written = log.read_text()
    assert "database unavailable (OperationalError)" in written
    assert SECRET not in written
    assert "[parameters" not in written and "[SQL" not in written


def test_a_black_holed_database_makes_readyz_a_503_within_the_bounds(
    server_url: str, server_proxy: CuttableProxy, start_server: StartServer
) -> None:
    """No answer at all (not even a reset): /readyz still answers 503 in a few seconds."""
    server = start_server(through(server_proxy, server_url), **SHORT_TIMEOUTS)
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
    server_proxy.blackhole()
    for _ in range(2):  # on a kept connection, then on a new one
        started = time.monotonic()
        response = httpx.get(f"{server.url}/readyz", timeout=30)
        assert (response.status_code, response.json()["database"]) == (503, "unreachable")
        assert time.monotonic() - started < SHORT_TIMEOUTS["REPLY_TIMEOUT_SECONDS"] + 1.5
    server_proxy.heal()


# How each server engine locks a table against reads, as a long migration would, and tells
# the statement cap of a session.
LOCK_TABLE = {
    "postgresql": f"LOCK TABLE {Event.__tablename__} IN ACCESS EXCLUSIVE MODE",
    "mysql": f"LOCK TABLES {Event.__tablename__} WRITE",
}
STATEMENT_CAP = {
    "postgresql": ("SHOW statement_timeout", "5s"),
    "mysql": ("SELECT @@max_statement_time", "5.0"),
}


@pytest.fixture
def capped_app(server_url: str) -> Iterator[Flask]:
    app = create_app({"EVENTLOG_DATABASE_URL": server_url, "EVENTLOG_AUDIT_TIMEOUT_SECONDS": 0.05})
    yield app
    eventlog: EventLog = app.extensions["eventlog"]
    eventlog.close()


def test_an_audit_query_over_its_time_cap_is_a_clear_503(capped_app: Flask, server_url: str) -> None:
    """An audit page that takes longer than its cap is cancelled there and answered with a
    503 that says how to narrow the query. The indexes serve every documented filter in
    about a page (test_event_times.py), so what runs long here is a wait: the table is
    locked, as a long migration would lock it. The cap, below the lock timeout, ends the
    wait; the next read answers, and the cap stayed with that one read."""
    client = capped_app.test_client()
    assert client.post("/streams/s/events", json={"data": 1}).status_code == 201
    eventlog: EventLog = capped_app.extensions["eventlog"]
    engine = eventlog.engine.dialect.name.replace("mariadb", "mysql")
    locking = make_engine(server_url)
    with locking.connect() as locker:
        locker.execute(text(LOCK_TABLE[engine]))
        response = client.get("/events?since=2026-11-30T00:00:00Z")
        locker.rollback()
        locker.invalidate()  # a table lock of MySQL ends with its session
    locking.dispose()
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["type"].endswith(":query-too-long")
    assert "narrow" in problem["detail"]
    assert "Retry-After" not in response.headers
    answered = client.get("/events?since=2026-11-30T00:00:00Z&limit=5")
    assert answered.status_code == 200, answered.text
    assert [e["data"] for e in answered.get_json()["events"]] == [1]
    with eventlog.engine.connect() as conn:
        query, default = STATEMENT_CAP[engine]
        assert str(conn.execute(text(query)).scalar_one()) == default
