"""Every bad input a 4xx problem, every wait bounded: bodies, hosts, and what gunicorn
answers below Flask."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Server, sqlite_database
from flask.testing import FlaskClient

from eventlog import create_app
from eventlog.server import is_loopback

PUBLISH = "/streams/orders/events"


def stored_count(client: FlaskClient) -> int:
    return len(client.get("/events").json["events"])


STRICT_BODIES = [
    pytest.param(b"[" * 10_000 + b"]" * 10_000, "nested too deeply", id="deep-nesting"),
    pytest.param(b'{"data": 1e400}', "1e400 is too large", id="huge-float"),
    pytest.param(b'{"data": [-1e400]}', "-1e400 is too large", id="huge-negative-float"),
    pytest.param(b'{"data": NaN}', "NaN is not a JSON value", id="nan"),
    pytest.param(b'{"data": 1, "data": 2}', "'data' appears twice", id="duplicate-key"),
    pytest.param(b'{"data": {"a": 1, "a": 2}}', "'a' appears twice", id="duplicate-nested-key"),
    pytest.param('{"data": 1}'.encode("utf-16"), "byte order mark", id="utf-16-with-bom"),
    pytest.param('{"data": 1}'.encode("utf-16-le"), "not valid JSON", id="utf-16-without-bom"),
    pytest.param(b'\xef\xbb\xbf{"data": 1}', "byte order mark", id="utf-8-bom"),
    pytest.param(b'{"data": "caf\xe9"}', "not UTF-8", id="latin-1"),
]


@pytest.mark.parametrize(("body", "detail"), STRICT_BODIES)
def test_body_a_lenient_parser_would_reinterpret_is_a_400(
    client: FlaskClient, body: bytes, detail: str
) -> None:
    response = client.post(PUBLISH, data=body, content_type="application/json")
    assert response.status_code == 400, response.get_data()
    assert response.mimetype == "application/problem+json"
    assert detail in response.json["detail"]
    assert stored_count(client) == 0
    assert client.post(PUBLISH, json={"data": "still serving"}).status_code == 201


def test_json_in_another_charset_is_a_415(client: FlaskClient) -> None:
    response = client.post(
        PUBLISH, data='{"data": 1}'.encode("utf-16"), content_type="application/json; charset=utf-16"
    )
    assert response.status_code == 415
    assert "UTF-8" in response.json["detail"]
    assert stored_count(client) == 0


def test_utf_8_charset_parameter_is_fine(client: FlaskClient) -> None:
    response = client.post(PUBLISH, data=b'{"data": "\xc3\xa9"}', content_type="application/json; charset=UTF-8")
    assert response.status_code == 201
    assert response.json["data"] == "é"


def test_unknown_query_parameter_on_publish_is_a_400(client: FlaskClient) -> None:
    response = client.post(f"{PUBLISH}?dry_run=1", json={"data": 1})
    assert response.status_code == 400
    assert "dry_run" in response.json["detail"]
    assert stored_count(client) == 0


@pytest.mark.parametrize(
    "query",
    [
        f"after={2**63}",
        f"before={2**63}",
        "since=0001-01-01T00:00:00%2B01:00",
        "until=9999-12-31T23:59:59-01:00",
    ],
)
def test_audit_bounds_outside_the_table_are_400(client: FlaskClient, query: str) -> None:
    response = client.get(f"/events?{query}")
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"


@pytest.mark.parametrize(
    "request_kwargs",
    [{"headers": {"Last-Event-ID": "3"}}, {"query_string": {"last_event_id": "3"}}],
    ids=["header", "query"],
)
def test_resume_point_on_an_audit_page_is_a_400_not_ignored(
    client: FlaskClient, request_kwargs: dict[str, Any]
) -> None:
    for path in ("/events", "/streams/orders/events"):
        response = client.get(path, **request_kwargs)
        assert response.status_code == 400
        assert "'after'" in response.json["detail"]


# --- a real server: what reaches gunicorn before Flask --------------------------------------

def exchange(port: int, raw: bytes, *, timeout: float = 10) -> bytes:
    """Send ``raw`` and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        return read_to_close(sock)


def read_to_close(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split(" ")[1]), headers, body


def assert_problem(response: bytes, status: int) -> dict[str, Any]:
    code, headers, body = parse(response)
    assert code == status, response[:300]
    assert headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = json.loads(body)
    assert problem["status"] == status and problem["title"] and problem["detail"]
    return problem


@pytest.fixture
def server(tmp_path: Path, start_server: Callable[..., Server]) -> Server:
    """A server whose bodies must arrive within 2 s, taking 50 connections at once."""
    return start_server(sqlite_database(tmp_path), REQUEST_TIMEOUT_SECONDS=2, args=["--connections", "50"])


def count(server: Server) -> int:
    return len(httpx.get(f"{server.url}/events").json()["events"])


def post_head(port: int, length: int = 0, *, chunked: bool = False) -> bytes:
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}"
    return (
        f"POST {PUBLISH} HTTP/1.1\r\nHost: localhost:{port}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode()


def test_gunicorns_own_refusals_are_problems(server: Server) -> None:
    port = server.port
    host = f"Host: localhost:{port}\r\n"
    problem = assert_problem(exchange(port, f"GET /{'a' * 9000} HTTP/1.1\r\n{host}\r\n".encode()), 414)
    assert "too large" in problem["detail"]
    many = "".join(f"X-{i}: 1\r\n" for i in range(101))
    assert_problem(exchange(port, f"GET /healthz HTTP/1.1\r\n{host}{many}\r\n".encode()), 431)
    long_header = f"X-Long: {'a' * 9000}\r\n"
    assert_problem(exchange(port, f"GET /healthz HTTP/1.1\r\n{host}{long_header}\r\n".encode()), 431)
    assert_problem(exchange(port, b"GARBAGE\r\n\r\n"), 400)
    bad_length = f"POST {PUBLISH} HTTP/1.1\r\n{host}Content-Length: 1x\r\n\r\n".encode()
    assert_problem(exchange(port, bad_length + b'{"data": 1}'), 400)
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert count(server) == 0


def test_malformed_chunked_body_is_a_400(server: Server) -> None:
    body = b'{"data": 1}'
    malformed = post_head(server.port, chunked=True) + b"zz\r\n" + body + b"\r\n0\r\n\r\n"
    problem = assert_problem(exchange(server.port, malformed), 400)
    assert "malformed" in problem["detail"]
    wellformed = post_head(server.port, chunked=True) + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(wellformed)
        assert sock.recv(65536).startswith(b"HTTP/1.1 201 ")
    assert count(server) == 1


def test_body_shorter_than_its_content_length_is_a_400(server: Server) -> None:
    body = b'[{"data": 1}, {"data": 2}]'
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        # The announced length covers a longer batch; the client stops after the first part.
        sock.sendall(post_head(server.port, len(body) + 20) + body)
        sock.shutdown(socket.SHUT_WR)
        problem = assert_problem(read_to_close(sock), 400)
    assert "Content-Length" in problem["detail"]
    assert count(server) == 0


def test_stalled_bodies_get_a_408_and_never_starve_the_server(server: Server) -> None:
    """Twice as many stalled bodies as the worker takes connections (50): each is answered
    408 and closed after the 2 s timeout, so the ones waiting behind them, and /healthz,
    get their turn. Without a timeout they held every connection for good."""
    stalled = []
    for _ in range(100):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(post_head(server.port, 100) + b'{"data":')
        stalled.append(sock)
    started = time.monotonic()
    health: list[int] = []
    checker = threading.Thread(
        target=lambda: health.append(httpx.get(f"{server.url}/healthz", timeout=30).status_code)
    )
    checker.start()
    try:
        answers = [read_to_close(sock) for sock in stalled]  # EOF: the server closed it
        elapsed = time.monotonic() - started
        checker.join(30)
    finally:
        for sock in stalled:
            sock.close()
    for answer in answers:
        assert "2 s" in assert_problem(answer, 408)["detail"]
    # Two rounds of 2 s; the bound is what matters, with room for a loaded machine.
    assert elapsed < 15
    assert health == [200]
    assert count(server) == 0


def test_slow_but_honest_body_within_the_timeout_is_stored(server: Server) -> None:
    body = b'{"data": "slow"}'
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(post_head(server.port, len(body)))
        for piece in (body[:5], body[5:10], body[10:]):
            time.sleep(0.4)
            sock.sendall(piece)
        assert sock.recv(65536).startswith(b"HTTP/1.1 201 ")


def test_stalled_request_head_is_closed(server: Server) -> None:
    """A head that never ends is closed without an answer within gunicorn's keepalive (5 s):
    the client may never have begun a request."""
    started = time.monotonic()
    assert exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n", timeout=20) == b""
    assert time.monotonic() - started < 15


def test_unknown_host_is_refused(server: Server) -> None:
    """DNS rebinding: a page whose name now points at 127.0.0.1 sends its own name as Host."""
    response = httpx.get(f"{server.url}/events", headers={"Host": "evil.example"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "tag:eventlog,2026:problem:host-not-allowed"
    assert "EVENTLOG_ALLOWED_HOSTS" in response.json()["detail"]
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", "localhost", "LOCALHOST", "LocalHost:1"):
        assert httpx.get(f"{server.url}/healthz", headers={"Host": host}).status_code == 200


def test_any_host_when_allowed(tmp_path: Path, start_server: Callable[..., Server]) -> None:
    server = start_server(sqlite_database(tmp_path), ALLOWED_HOSTS="*")
    assert httpx.get(f"{server.url}/healthz", headers={"Host": "events.example"}).status_code == 200


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("events.example", False)],
)
def test_the_default_hosts_follow_the_bind_address(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_host_names_compare_case_insensitively(tmp_path: Path) -> None:
    app = create_app({"EVENTLOG_DATABASE_URL": sqlite_database(tmp_path), "EVENTLOG_ALLOWED_HOSTS": "Events.Example.com"})
    client = app.test_client()
    try:
        for host in ("events.example.com", "EVENTS.EXAMPLE.COM:443"):
            assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
        assert client.get("/healthz", headers={"Host": "other.example.com"}).status_code == 400
    finally:
        app.extensions["eventlog"].close()
