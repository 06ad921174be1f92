"""Access control on a real ``eventlog serve`` (gunicorn + gevent), on both backends: a sample
of the matrix, streams that end at their token's expiry, replays checked against the token
of the reconnecting request, start-up refusals, and logs that never hold a URL's token."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from auth_tokens import AUDIENCE, SECRET, claims, forged, hs256
from conftest import EVENTLOG_BIN, Server, server_env
from helpers import free_port, wait_until

from eventlog.database import make_engine
from eventlog.migrate import upgrade
from eventlog.sse import Decoder, Message

SSE = {"Accept": "text/event-stream"}
AUTH = {"JWT_SECRET": SECRET, "JWT_AUDIENCE": AUDIENCE, "HEARTBEAT_SECONDS": 15, "RETRY_MS": 500}


@pytest.fixture
def server(start_server: Callable[..., Server], database_url: str) -> Server:
    """A server with a secret, on each backend."""
    return start_server(database_url, **AUTH)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post(server: Server, stream: str, data: object, token: str) -> httpx.Response:
    return httpx.post(f"{server.url}/streams/{stream}/events", json={"data": data},
                      headers=bearer(token), timeout=10)


class Stream:
    """An open SSE response read step by step: ``opened`` first, then messages."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.iter_raw()
        self._decoder = Decoder()
        self._early: list[Message] = []

    def opened(self) -> None:
        """Wait for the first bytes: from then on the server has the subscriber registered."""
        self._early = list(self._decoder.feed(next(self._chunks)))

    def read(self, until: Callable[[list[Message]], bool]) -> list[Message]:
        messages, self._early = self._early, []
        if messages and until(messages):
            return messages
        for chunk in self._chunks:
            messages.extend(self._decoder.feed(chunk))
            if messages and until(messages):
                break
        return messages


@pytest.mark.parametrize("via", ["header", "cookie", "query"])
def test_sample_of_the_matrix(server: Server, via: str) -> None:
    writer = hs256(claims(publish=["orders", "user.42.*"]))
    assert post(server, "orders", 1, writer).status_code == 201
    assert post(server, "user.42.inbox", 2, writer).status_code == 201
    assert post(server, "user.420.inbox", 3, writer).status_code == 403
    assert httpx.post(f"{server.url}/streams/orders/events", json={"data": 4}).status_code == 401

    client = httpx.Client(timeout=10)

    def get(path: str, token: str | None, *, live: bool = True) -> httpx.Response:
        headers = dict(SSE) if live else {}
        if token is not None and via == "header":
            headers.update(bearer(token))
        if token is not None and via == "cookie":
            headers["Cookie"] = f"eventlog_token={token}"
        if token is not None and via == "query":
            path += ("&" if "?" in path else "?") + f"access_token={token}"
        request = client.build_request("GET", f"{server.url}{path}", headers=headers)
        return client.send(request, stream=True)

    reader = hs256(claims(subscribe=["user.42.*"]))
    denied = [
        (get("/streams/orders/events?last_event_id=0", reader), 403),
        (get("/events?last_event_id=0", reader), 403),
        (get("/events?stream=user.42.inbox&stream=orders&last_event_id=0", reader), 403),
        (get("/streams/user.42.inbox/events?last_event_id=0", hs256(claims(subscribe=["user.42.*"], ttl=-5))), 401),
        (get("/streams/user.42.inbox/events?last_event_id=0", forged(claims(subscribe=["*"]), "none")), 401),
        (get("/streams/user.42.inbox/events?last_event_id=0", None), 401),
    ]
    for response, status in denied:
        body = response.read()
        response.close()
        assert response.status_code == status
        assert b"id:" not in body and b"data" not in body.replace(b'"detail"', b"")
    allowed = get("/streams/user.42.inbox/events?last_event_id=0", reader)
    try:
        assert allowed.status_code == 200
        [message] = Stream(allowed).read(lambda m: True)
        assert message.data == "2"
    finally:
        allowed.close()
    if via != "query":  # the audit query takes no token in its URL
        page = get("/streams/user.42.inbox/events", reader, live=False)
        page.read()
        assert page.status_code == 200 and [e["data"] for e in page.json()["events"]] == [2]
    client.close()
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # still serving


def test_open_stream_ends_within_a_second_of_its_tokens_expiry(server: Server) -> None:
    """Idle (heartbeats every 15 s), the stream must still be closed by the server at exp."""
    token = hs256(claims(subscribe=["orders"], ttl=2))
    expires_at = claims(ttl=2)["exp"]  # the same whole second as the token's, or the next
    with httpx.Client(timeout=httpx.Timeout(10, read=10)) as client, client.stream(
        "GET", f"{server.url}/streams/orders/events", headers={**SSE, **bearer(token)}
    ) as response:
        assert response.status_code == 200
        received = b"".join(response.iter_raw())  # returns when the server ends the stream
        ended = time.time()
    assert received.startswith(b"retry: 500\n") and b"data:" not in received  # idle to the end
    assert ended <= expires_at + 1, f"ended {ended - expires_at:.2f} s after exp"
    assert ended >= expires_at - 1


def test_replay_after_reconnect_is_checked_against_the_new_token(server: Server) -> None:
    writer = hs256(claims(publish=["*"]))
    both = hs256(claims(subscribe=["user.1.inbox", "admin"]))
    with httpx.Client(timeout=10) as client, client.stream(
        "GET", f"{server.url}/events?stream=user.1.inbox&stream=admin",
        headers={**SSE, **bearer(both)},
    ) as response:
        stream = Stream(response)
        stream.opened()
        first = post(server, "admin", "seen-while-allowed", writer).json()
        [seen] = stream.read(lambda m: True)
    assert seen.id == str(first["id"])
    missed = [post(server, s, f"missed-{s}", writer).json() for s in ("admin", "user.1.inbox", "admin")]

    demoted = hs256(claims(subscribe=["user.1.inbox"]))
    # Asking for the lost stream again, with the old resume point: refused, nothing replayed.
    refused = httpx.get(f"{server.url}/events?stream=user.1.inbox&stream=admin",
                        headers={**SSE, **bearer(demoted), "Last-Event-ID": seen.id})
    assert refused.status_code == 403 and b"missed" not in refused.content
    # Every stream at once needs '*': refused too.
    assert httpx.get(f"{server.url}/events", headers={**SSE, **bearer(demoted),
                     "Last-Event-ID": seen.id}).status_code == 403
    with httpx.Client(timeout=10) as client, client.stream(
        "GET", f"{server.url}/events?stream=user.1.inbox",
        headers={**SSE, **bearer(demoted), "Last-Event-ID": seen.id},
    ) as response:
        assert response.status_code == 200
        stream = Stream(response)
        stream.opened()
        marker = post(server, "user.1.inbox", "after", writer).json()
        replayed = stream.read(lambda m: m[-1].id == str(marker["id"]))
    assert [m.id for m in replayed] == [str(missed[1]["id"]), str(marker["id"])]
    assert all("admin" not in m.data for m in replayed)


def run_serve(url: str, port: int, *args: str, **settings: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(EVENTLOG_BIN), "serve", "--no-migrate", "--port", str(port), *args],
        env=server_env(url, **settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_serve_refuses_an_open_api_beyond_loopback(database_url: str, tmp_path: Path) -> None:
    refused = run_serve(database_url, free_port(), "--host", "0.0.0.0")
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 1
    [line] = err.strip().splitlines()
    assert "EVENTLOG_JWT_SECRET" in line and "EVENTLOG_JWT_PUBLIC_KEY" in line and "--insecure" in line

    missing = run_serve(database_url, free_port(), "--host", "0.0.0.0", JWT_PUBLIC_KEY=tmp_path / "gone.pem")
    _, err = missing.communicate(timeout=60)
    [line] = err.strip().splitlines()
    assert missing.returncode == 1 and "EVENTLOG_JWT_PUBLIC_KEY: cannot read" in line

    for args, settings in ((["--insecure"], {}), ([], {"INSECURE": "1"})):
        port = free_port()
        started = run_serve(database_url, port, "--host", "0.0.0.0", *args, **settings)
        try:  # it listens on every address, loopback included; the test only talks to that
            wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200,
                       timeout=60)
        finally:
            started.send_signal(signal.SIGINT)
            _, err = started.communicate(timeout=30)
        assert "without access control" in err


@pytest.fixture
def logged_server(start_server: Callable[..., Server], tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    database = f"sqlite:///{tmp_path / 'eventlog.db'}"
    engine = make_engine(database)
    upgrade(engine)
    engine.dispose()
    log = tmp_path / "server.log"
    server = start_server(database, args=["--log-level", "debug", "--access-log"], log=log, **AUTH)
    yield server, log
    server.stop()


def test_a_token_in_a_url_reaches_no_log_line(logged_server: tuple[Server, Path]) -> None:
    server, log = logged_server
    token = hs256(claims(subscribe=["orders"]))
    expired = hs256(claims(subscribe=["orders"], ttl=-5))
    with httpx.Client(timeout=10) as client:
        with client.stream("GET", f"{server.url}/streams/orders/events?access_token={token}",
                           headers=SSE) as response:
            assert response.status_code == 200
            next(response.iter_raw())
        for path, status in (
            (f"/streams/orders/events?access_token={expired}", 401),
            (f"/streams/orders/events?limit=5&access_token={token}", 400),  # not a live stream
            (f"/nowhere?access_token={token}", 404),
            (f"/events?stream=bad%20name&access_token={token}", 400),
        ):
            assert client.get(f"{server.url}{path}", headers=SSE if "limit" not in path else {}).status_code == status
    server.stop()  # flushes every log line
    text = log.read_text()
    assert "/streams/orders/events" in text and "/nowhere" in text, "the access log was on"
    assert "DEBUG" in text or "[DEBUG]" in text
    for secret in (token, expired, token.split(".")[2], expired.split(".")[2]):
        assert secret not in text
    assert "access_token" not in text
