"""The logs of ``eventlog serve``: an access line per request without query secrets, a live
stream's line when it ends, text or JSON lines, and gunicorn settings from GUNICORN_CMD_ARGS."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import Server
from flask.testing import FlaskClient
from helpers import Listener, publish, wait_until

from eventlog.migrate import head

StartServer = Callable[..., Server]
SECRET = "SECRET123"


def access_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "eventlog.access" in line]


def test_access_log_has_a_line_per_request_and_no_query_values(
    database_url: str, start_server: StartServer, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    server = start_server(database_url, args=["--access-log"], log=log, HEARTBEAT_SECONDS=0.2)
    publish(server.url, "orders", {"n": 1})
    httpx.get(f"{server.url}/events?stream=orders&access_token={SECRET}&limit={SECRET}", timeout=5)
    listener = Listener(f"{server.url}/streams/orders/events?last_event_id=1")
    assert listener.connected.wait(10)
    publish(server.url, "orders", {"n": 2})
    publish(server.url, "orders", {"n": 3})
    wait_until(lambda: len(listener.ids()) == 2)
    listener.close()
    # The stream's line comes once it has ended (the heartbeat tick after the client left).
    wait_until(lambda: any("stream sent" in line for line in access_lines(log)))

    text = log.read_text()
    assert SECRET not in text
    lines = access_lines(log)
    start = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO eventlog\.access: ")
    assert all(start.match(line) for line in lines), lines
    shape = re.compile(r"(\S+) (\S+) (\S+) (\d{3}) \d+ bytes in [\d.]+ s(?:, stream sent (\d+) events)?")
    requests = [shape.fullmatch(line.split(": ", 1)[1]) for line in lines if "/healthz" not in line]
    assert [r.groups() if r else None for r in requests] == [
        ("127.0.0.1", "POST", "/streams/orders/events", "201", None),
        # The server takes a URL token out before anything reads the request: not even its name.
        ("127.0.0.1", "GET", "/events?stream&limit", "400", None),
        ("127.0.0.1", "POST", "/streams/orders/events", "201", None),
        ("127.0.0.1", "POST", "/streams/orders/events", "201", None),
        ("127.0.0.1", "GET", "/streams/orders/events?last_event_id", "200", "2"),
    ]
    assert f"eventlog listening on {server.url} (1 worker)" in text


def test_json_logs_are_one_object_per_line(
    database_url: str, start_server: StartServer, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    server = start_server(database_url, log=log, args=["--workers", "2", "--access-log"], LOG_FORMAT="json")
    publish(server.url, "orders", {"n": 1})
    httpx.get(f"{server.url}/streams/orders/events?access_token={SECRET}", timeout=5)
    wait_until(lambda: '"method": "GET", "path": "/streams/orders/events"' in log.read_text())

    lines = log.read_text().splitlines()
    # Every line, the schema check's answer included (`eventlog db check`, in a child).
    records = [json.loads(line) for line in lines]
    assert SECRET not in log.read_text()
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert any("by polling" in r["message"] and r["level"] == "WARNING" for r in records)
    listening = f"eventlog listening on {server.url} (2 workers), database at revision {head()}"
    assert {"logger": "eventlog.server", "message": listening}.items() <= next(
        r for r in records if r["logger"] == "eventlog.server"
    ).items()
    # gunicorn's own line names the address too, though its master holds no socket of its own.
    assert any(re.fullmatch(rf"Listening at: {server.url} \(\d+\)", r["message"]) for r in records), lines
    gets = [r for r in records if r["logger"] == "eventlog.access" and r["path"] == "/streams/orders/events"]
    assert [(r["method"], r["status"], r["query"]) for r in gets] == [
        ("POST", 201, []),
        ("GET", 400, []),  # a token without access control; taken out before anything read it
    ]
    assert gets[0]["bytes"] > 0 and gets[0]["duration_seconds"] >= 0


def test_gunicorn_cmd_args_apply_except_where_eventlog_decides(
    database_url: str, start_server: StartServer
) -> None:
    """GUNICORN_CMD_ARGS reaches gunicorn (a worker replaced after 3 requests), but cannot
    move the address eventlog was told to listen on. The replaced worker's counts stay in
    /metrics: a worker that exits leaves the metrics directory alone."""
    args = "--max-requests 3 --bind 127.0.0.1:9"
    server = start_server(database_url, env={"GUNICORN_CMD_ARGS": args})
    publish(server.url, "orders", 1)
    first = httpx.get(f"{server.url}/healthz", timeout=5).json()["pid"]
    wait_until(lambda: httpx.get(f"{server.url}/healthz", timeout=5).json()["pid"] != first, timeout=30)
    metrics = httpx.get(f"{server.url}/metrics", timeout=5)
    assert 'eventlog_published_events_total{outcome="stored"} 1.0' in metrics.text


def test_readiness_probes_log_nothing(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    """A load balancer asks every few seconds: Alembic's two lines each time would drown the log."""
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        assert client.get("/readyz").status_code == 200
    assert [r.getMessage() for r in caplog.records] == []
