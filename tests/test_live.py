"""Live streams from a real ``eventlog serve`` process (gunicorn + gevent), on both backends."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from pathlib import Path

import httpx
import pytest
from conftest import (
    ENGINES,
    EVENTLOG_BIN,
    SERVER_ENGINES,
    Server,
    empty_database,
    server_env,
    sqlite_database,
    url_of,
)
from helpers import Listener, free_port, publish, wait_until
from sqlalchemy import Engine, select, text

from eventlog.database import make_engine
from eventlog.migrate import upgrade
from eventlog.models import Counter

SSE = {"Accept": "text/event-stream"}


@pytest.fixture(scope="module", params=ENGINES)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per backend for the module; tests use streams of their own."""
    if request.param == "sqlite":
        url = sqlite_database(tmp_path_factory.mktemp("live"))
    else:
        engine = request.getfixturevalue(SERVER_ENGINES[request.param])
        empty_database(engine)
        url = url_of(engine)
    server = Server(free_port(), server_env(url, HEARTBEAT_SECONDS=1, RETRY_MS=500, POLL_SECONDS=0.5), [])
    try:
        server.start()
        yield server
    finally:
        server.stop()


def subscribers(server: Server) -> int:
    return int(httpx.get(f"{server.url}/healthz").json()["subscribers"])


def test_headers_and_first_bytes_arrive_at_once(server: Server) -> None:
    with httpx.Client() as client, client.stream(
        "GET", f"{server.url}/streams/orders/events", headers={**SSE, "Accept-Encoding": "gzip"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"  # exactly: some clients compare it
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in response.headers  # never compressed: it would buffer
        assert next(response.iter_raw()) == b"retry: 500\n"


def test_replay_then_live_across_streams(server: Server) -> None:
    ids = [publish(server.url, "r-a" if i % 2 == 0 else "r-b", i)["id"] for i in range(3)]
    publish(server.url, "r-c", "other")
    listener = Listener(f"{server.url}/events?stream=r-a&stream=r-b", last_event_id=ids[0])
    assert listener.connected.wait(10)
    publish(server.url, "r-c", "other")
    ids.append(publish(server.url, "r-b", {"live": "\u2028\u0085\x0c"}, type="changed")["id"])
    wait_until(lambda: listener.ids() == ids[1:])
    listener.close()
    # On GET /events each frame's data is the whole stored event, so it names its stream.
    envelopes = [json.loads(m.data) for m in listener.messages]
    assert [(m.event, e["stream"], e["type"], e["data"]) for m, e in zip(listener.messages, envelopes)] == [
        ("message", "r-b", "message", 1),
        ("message", "r-a", "message", 2),
        ("changed", "r-b", "changed", {"live": "\u2028\u0085\x0c"}),
    ]
    assert [e["id"] for e in envelopes] == ids[1:]
    assert all(e["time"].endswith("Z") for e in envelopes)


def test_header_wins_over_query_parameter(server: Server) -> None:
    ids = [publish(server.url, "h", i)["id"] for i in range(4)]
    listener = Listener(f"{server.url}/streams/h/events?last_event_id={ids[0]}", last_event_id=ids[2])
    wait_until(lambda: listener.ids() == ids[3:])
    listener.close()
    listener = Listener(f"{server.url}/streams/h/events?last_event_id={ids[1]}")
    wait_until(lambda: listener.ids() == ids[2:])
    listener.close()


def test_malformed_resume_point_is_a_400_problem(server: Server) -> None:
    response = httpx.get(f"{server.url}/streams/a/events", headers={**SSE, "Last-Event-ID": "abc"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert "resume point" in response.json()["detail"]


def test_resume_point_beyond_head_is_reset_not_a_hang(server: Server) -> None:
    head = publish(server.url, "z", 1)["id"]
    listener = Listener(f"{server.url}/streams/z/events", last_event_id=head + 1000)
    wait_until(lambda: listener.messages)
    later = publish(server.url, "z", 2)["id"]
    wait_until(lambda: listener.ids() == [later])
    listener.close()
    reset = listener.messages[0]
    assert (reset.event, reset.id, json.loads(reset.data)) == (
        "reset", str(head), {"requested": head + 1000, "oldest": head, "head": head}
    )


def test_closed_client_frees_its_subscription_within_a_heartbeat(server: Server) -> None:
    """The client closes just after a heartbeat (1 s here). The server notices at the next
    tick, about a second later, by seeing the socket's end; writing alone would take two
    ticks, since TCP accepts the first write after a close."""
    wait_until(lambda: subscribers(server) == 0, timeout=5)  # earlier tests' clients are gone
    sock = socket.create_connection(("127.0.0.1", server.port))
    with sock:
        sock.sendall(b"GET /streams/c/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n")
        received = b""
        while b"retry:" not in received:
            received += sock.recv(4096)
        assert subscribers(server) == 1
        while b": heartbeat" not in received:
            received += sock.recv(4096)
    closed = time.monotonic()
    wait_until(lambda: subscribers(server) == 0, timeout=5)
    assert time.monotonic() - closed < 1.5


def test_a_closed_client_stops_counting_long_before_the_next_heartbeat(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """/healthz and the live-subscribers gauge count streams: a closed one leaves at once,
    seen on its socket, not a heartbeat (a minute here) later."""
    server = start_server(sqlite_database(tmp_path), HEARTBEAT_SECONDS=60)
    for _ in range(2):  # and again on the same worker, once the first watch is over
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"GET /events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n")
            received = b""
            while b"retry:" not in received:
                received += sock.recv(4096)
            assert subscribers(server) == 1
        wait_until(lambda: subscribers(server) == 0, timeout=20)
        assert "eventlog_live_subscribers 0.0" in httpx.get(f"{server.url}/metrics").text


def test_second_server_on_a_taken_port_refuses_to_start(server: Server) -> None:
    """Workers bind with SO_REUSEPORT, which would let a second server share the port and
    split the connections silently; it must stop with a clear message instead."""
    second = subprocess.run(
        [str(EVENTLOG_BIN), "serve", "--port", str(server.port), "--workers", "2", "--no-migrate"],
        env=server.env, capture_output=True, text=True, timeout=60,
    )
    assert second.returncode == 1
    assert f"cannot listen on 127.0.0.1:{server.port}: Address already in use" in second.stderr
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_readyz_reports_the_database(server: Server) -> None:
    assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready", "database": "ok"}


def test_database_outage_ends_streams_with_200_so_clients_come_back(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """EventSource gives up for good on a non-200 answer: with the database gone, a stream
    answers 200 with ``retry:`` and ends, so the browser retries later."""
    database = tmp_path / "gone.db"
    engine = make_engine(f"sqlite:///{database}")
    upgrade(engine)
    engine.dispose()
    server = start_server(f"sqlite:///{database}")
    database.unlink()
    database.mkdir()  # unopenable from now on
    response = httpx.get(f"{server.url}/streams/a/events", headers=SSE, timeout=10)
    assert response.status_code == 200
    assert response.text == "retry: 2000\n"
    assert httpx.get(f"{server.url}/readyz").status_code == 503


HOLD_SECONDS = 2.0
# The sessions of this test's database that wait for a lock, on each server engine.
WAITING_ON_LOCKS = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND wait_event_type = 'Lock'",
    "mysql": "SELECT count(*) FROM information_schema.innodb_trx AS t"
    " JOIN information_schema.processlist AS p ON p.id = t.trx_mysql_thread_id"
    " WHERE t.trx_state = 'LOCK WAIT' AND p.db = DATABASE()",
}


# PostgreSQL only for now: on MariaDB the stuck publish is not seen waiting on a lock when
# this test runs first in a session (it passes after other MariaDB tests); until that is
# understood, bench/driver_yield.py measures PyMySQL's cooperation with gevent instead.
@pytest.mark.parametrize("server_url", ["postgresql"], indirect=True)
def test_a_query_waiting_on_the_database_does_not_freeze_the_worker(
    server_url: str, start_server: Callable[..., Server]
) -> None:
    """The driver must yield to gevent (psycopg by itself, PyMySQL through gevent's patched
    sockets): with one publish stuck on the counter's lock, the same worker still answers
    other requests and keeps an open stream's heartbeats coming (a driver that blocks would
    freeze them all for as long as the query waits)."""
    server = start_server(server_url, HEARTBEAT_SECONDS=0.2)
    engine = make_engine(server_url)
    waiting = text(WAITING_ON_LOCKS[engine.dialect.name.replace("mariadb", "mysql")])
    result: dict[str, int] = {}
    beats: list[float] = []
    stop = threading.Event()

    def stuck_publish() -> None:
        result["status"] = httpx.post(f"{server.url}/streams/a/events", json={"data": 1}, timeout=30).status_code

    def listen() -> None:
        with contextlib.suppress(httpx.HTTPError), httpx.stream(
            "GET", f"{server.url}/streams/b/events", headers=SSE, timeout=30
        ) as response:
            for line in response.iter_lines():
                if line.startswith(": heartbeat"):
                    beats.append(time.monotonic())
                if stop.is_set():
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    wait_until(lambda: len(beats) >= 2)
    try:
        with engine.begin() as conn:
            conn.execute(select(Counter.last_id).with_for_update())
            publisher = threading.Thread(target=stuck_publish)
            publisher.start()
            wait_until(lambda: _count(engine, waiting) == 1)
            held_from = time.monotonic()
            started = time.monotonic()
            assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
            assert time.monotonic() - started < 1
            time.sleep(HOLD_SECONDS)
            assert "status" not in result  # still waiting for the lock we hold
            held_until = time.monotonic()
        publisher.join(timeout=10)
        assert result["status"] == 201
        # Heartbeats every 0.2 s went on while the publish waited (a blocked worker sends none).
        during = [t for t in beats if held_from <= t <= held_until]
        assert len(during) >= HOLD_SECONDS / 0.2 / 2, during
    finally:
        stop.set()
        engine.dispose()


def _count(engine: Engine, query: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def test_serve_migrates_a_fresh_database_first(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """The README's run command: ``eventlog serve`` on an empty database creates the schema."""
    server = start_server(f"sqlite:///{tmp_path / 'new.db'}", args=["--migrate"])  # wins over --no-migrate
    assert publish(server.url, "a", 1)["id"] == 1
