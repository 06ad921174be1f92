"""The Python client against real servers (PostgreSQL + Redis): publishes stored exactly once
whatever happens to their answers, streams followed across drops, cuts and restarts with
every event once and in order, resets surfaced, tokens renewed. Each test runs with the sync
and the async client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from auth_tokens import AUDIENCE, SECRET, claims, hs256
from client_support import DRIVERS, GATEWAY_TIMEOUT, TIMEOUT, AnswerDropper, Driver
from conftest import Server
from helpers import CuttableProxy, wait_until

from eventlog.client import (
    Event,
    Forbidden,
    InvalidRequest,
    NotFound,
    Reset,
    ResetError,
    Unauthorized,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
FAST = {"RETRY_MS": 100, "HEARTBEAT_SECONDS": 1}


@pytest.fixture(params=sorted(DRIVERS))
def make(request: pytest.FixtureRequest) -> Iterator[Callable[..., Driver]]:
    """``make(url, **options)``: a sync or an async client (closed after the test)."""
    drivers: list[Driver] = []

    def make(url: str, **options: Any) -> Driver:
        driver = DRIVERS[request.param](url, **options)
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        driver.close()


@pytest.fixture
def server(start_server: Callable[..., Server], postgres_url: str, redis_url: str, redis_channel: str) -> Server:
    return start_server(postgres_url, redis_url, REDIS_CHANNEL=redis_channel, **FAST)


def stored(server: Server, token: str | None = None) -> list[dict[str, Any]]:
    """Every event in the log, straight from the server."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    answer = httpx.get(f"{server.url}/events?limit=1000", headers=headers, timeout=10)
    events: list[dict[str, Any]] = answer.json()["events"]
    return events


def take(iterator: Iterator[Any], count: int, pause: float = 0.0) -> list[Any]:
    """The next ``count`` items, failing (not hanging) if they do not come within TIMEOUT;
    ``pause``: seconds to wait after each, as a slow consumer would."""
    items: list[Any] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(count):
                items.append(next(iterator))
                time.sleep(pause)
        except BaseException as error:  # handed to the test's thread
            failure.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    assert not thread.is_alive(), f"only {len(items)} of {count} items within {TIMEOUT} s"
    if failure:
        raise failure[0]
    return items


def as_json(event: Event) -> dict[str, Any]:
    return {"id": event.id, "stream": event.stream, "type": event.type, "data": event.data,
            "time": event.to_json().split('"time":"')[1][:-2]}


# --- publish and query -------------------------------------------------------------------------

def test_publish_batch_and_query_round_trip(make: Callable[..., Driver], server: Server) -> None:
    client = make(server.url)
    one = client.publish("orders", {"n": 1, "text": "a\u2028b\x85c\r\nd"}, type="paid")
    batch = client.publish_batch("orders", [{"data": 2}, {"data": [3], "type": "x"}])
    client.publish("other", None)
    assert [one.id, *(e.id for e in batch)] == [1, 2, 3]
    assert one.data == {"n": 1, "text": "a\u2028b\x85c\r\nd"} and one.time.utcoffset() is not None
    assert [as_json(e) for e in client.query(page_size=2)] == stored(server)
    assert [e.id for e in client.query("orders", types=["x", "paid"], page_size=1)] == [1, 3]
    assert [e.id for e in client.query(["orders", "other"], order="desc", after=1)] == [4, 3, 2]
    assert [e.id for e in client.query(since=batch[0].time, until=batch[1].time)] == []
    assert [e.id for e in client.query(since=batch[0].time)] == [2, 3, 4]


def test_problems_raise_typed_errors_carrying_the_details(make: Callable[..., Driver], server: Server) -> None:
    client = make(server.url)
    with pytest.raises(InvalidRequest) as invalid:
        client.publish("not a name", 1)  # found before sending, as the server would answer
    assert invalid.value.status == 400 and "stream name" in invalid.value.detail
    with pytest.raises(InvalidRequest):
        client.publish_batch("orders", [{"data": 1, "colour": "red"}])
    with pytest.raises(NotFound) as missing:
        make(f"{server.url}/wrong-prefix").publish("orders", 1)
    assert missing.value.problem["status"] == 404
    assert stored(server) == []


# --- a publish is stored once, whatever happens to its answer -----------------------------------

@pytest.mark.parametrize("answer", [None, GATEWAY_TIMEOUT], ids=["reset", "503"])
def test_a_publish_whose_answer_is_lost_is_stored_once(
    make: Callable[..., Driver], server: Server, answer: bytes | None
) -> None:
    proxy = AnswerDropper(server.port)
    try:
        client = make(proxy.url)
        proxy.drop(2, answer)
        event = client.publish("orders", {"n": 1})
        assert proxy.drops == 2  # two answers lost: three attempts stored one event
        proxy.drop(1, answer)
        batch = client.publish_batch("orders", [{"data": 2}, {"data": 3}])
        assert proxy.drops == 3
    finally:
        proxy.close()
    assert stored(server) == [as_json(event), *(as_json(e) for e in batch)]


def test_a_publish_across_a_kill_and_restart_is_stored_once(make: Callable[..., Driver], server: Server) -> None:
    """The server stores the event, its answer is lost, and it is killed -9: the client's
    retries meet a closed port until the restart, then get the first answer again."""
    proxy = AnswerDropper(server.port)

    def crash() -> None:
        proxy.dropped.wait(TIMEOUT)
        server.kill()
        time.sleep(1)
        server.start()

    crasher = threading.Thread(target=crash, daemon=True)
    crasher.start()
    try:
        client = make(proxy.url)
        proxy.drop(1)
        event = client.publish("orders", {"n": 1})
        crasher.join(TIMEOUT)
    finally:
        proxy.close()
    assert stored(server) == [as_json(event)]


# --- subscribe: every event once, in order --------------------------------------------------

def test_subscribe_across_a_kill_and_restart(make: Callable[..., Driver], server: Server) -> None:
    client = make(server.url)
    publisher = make(server.url)
    events = client.subscribe("orders", after=0)
    publisher.publish_batch("orders", [{"data": i} for i in range(5)])
    first = take(events, 5)
    server.kill()
    time.sleep(0.5)  # the client retries against a closed port meanwhile
    server.start()
    publisher.publish_batch("orders", [{"data": i} for i in range(5, 10)])
    publisher.publish("other", "not asked for")
    rest = take(events, 5)
    assert [(e.id, e.data) for e in first + rest] == [(i + 1, i) for i in range(10)]


def test_subscribe_across_proxy_cuts_mid_frame(make: Callable[..., Driver], server: Server) -> None:
    """Frames of 200 kB span many reads: cuts land inside them, and the half-read frame is
    never yielded; the stream resumes after the last whole event."""
    proxy = CuttableProxy(server.port)
    publisher = make(server.url)
    count = 30
    for i in range(count):
        publisher.publish("big", {"i": i, "pad": "x" * 200_000})
    client = make(proxy.url)
    events = client.subscribe("big", after=0)
    received: list[Event] = []
    done = threading.Event()

    def cut() -> None:
        while not done.wait(0.3):  # the reader takes 0.1 s per event: a cut finds frames in flight
            proxy.cut()

    cutter = threading.Thread(target=cut, daemon=True)
    cutter.start()
    try:
        received = take(events, count, pause=0.1)
    finally:
        done.set()
        cutter.join(5)
        proxy.close()
    assert [e.data["i"] for e in received] == list(range(count))
    assert all(e.data["pad"] == "x" * 200_000 for e in received)
    resumed = [r.last_event_id for r in proxy.requests if r.last_event_id not in (None, "0")]
    assert resumed, "no cut fell inside the stream"
    assert [int(i) for i in resumed] == sorted(int(i) for i in resumed)


def test_a_resume_point_beyond_the_head_is_a_reset(make: Callable[..., Driver], server: Server) -> None:
    client = make(server.url)
    client.publish_batch("orders", [{"data": 1}, {"data": 2}])
    with pytest.raises(ResetError) as raised:
        take(client.subscribe("orders", after=100), 1)
    assert raised.value.reset == Reset(id=2, requested=100, oldest=1, head=2)
    items = client.subscribe("orders", after=100, resets="yield")
    assert take(items, 1) == [Reset(id=2, requested=100, oldest=1, head=2)]
    client.publish("orders", 3)
    assert [e.data for e in take(items, 1)] == [3]  # after the reset's id: the new event


def test_a_resume_point_behind_a_prune_is_a_reset(
    make: Callable[..., Driver], start_server: Callable[..., Server], postgres_url: str,
    redis_url: str, redis_channel: str,
) -> None:
    server = start_server(
        postgres_url, redis_url, REDIS_CHANNEL=redis_channel, RETAIN_EVENTS=2, PRUNE_SECONDS=0.2, **FAST
    )
    client = make(server.url)
    client.publish_batch("orders", [{"data": i} for i in range(1, 6)])
    wait_until(lambda: [e["id"] for e in stored(server)] == [4, 5])
    items = client.subscribe("orders", after=1, resets="yield")
    reset, *events = take(items, 3)
    assert isinstance(reset, Reset) and (reset.requested, reset.oldest, reset.head) == (1, 4, 5)
    assert [e.id for e in events] == [4, 5]


# --- access control ------------------------------------------------------------------------------

@pytest.fixture
def secured(start_server: Callable[..., Server], postgres_url: str, redis_url: str, redis_channel: str) -> Server:
    return start_server(
        postgres_url, redis_url, REDIS_CHANNEL=redis_channel, JWT_SECRET=SECRET, JWT_AUDIENCE=AUDIENCE, **FAST
    )


def test_an_expired_token_is_renewed_and_the_stream_resumes_without_a_gap(
    make: Callable[..., Driver], secured: Server
) -> None:
    """The first token is already expired (a 401, then the callable is asked again); each
    later one lives 2 s, so the server ends the stream at its expiry and the client
    reconnects with a new one, after the last event it yielded."""
    issued: list[str] = []

    def token() -> str:
        issued.append(hs256(claims(subscribe=["orders"], ttl=2 if issued else -60)))
        return issued[-1]

    publisher = make(secured.url, token=hs256(claims(publish=["orders"])))
    client = make(secured.url, token=token)
    events = client.subscribe("orders", after=0)
    received: list[Event] = []
    deadline = time.monotonic() + 7  # spans at least three tokens
    n = 0
    while time.monotonic() < deadline:
        publisher.publish("orders", n)
        n += 1
        received += take(events, 1)
        time.sleep(0.1)
    assert [e.data for e in received] == list(range(n))
    assert [e.id for e in received] == list(range(1, n + 1))
    assert len(issued) >= 4  # the expired one, then at least three


def test_a_forbidden_stream_raises_at_once(make: Callable[..., Driver], secured: Server) -> None:
    asked: list[str] = []

    def token() -> str:
        asked.append(hs256(claims(publish=["mine"], subscribe=["mine"])))
        return asked[-1]

    client = make(secured.url, token=token)
    with pytest.raises(Forbidden) as denied:
        take(client.subscribe("orders", after=0), 1)
    assert denied.value.status == 403 and denied.value.problem["type"].endswith(":forbidden")
    with pytest.raises(Forbidden):
        client.publish("orders", 1)
    assert len(asked) == 2  # one request each: neither retried nor renewed
    expired = make(secured.url, token=hs256(claims(subscribe=["orders"], ttl=-60)))
    with pytest.raises(Unauthorized):  # a fixed token cannot be renewed
        take(expired.subscribe("orders"), 1)
    assert stored(secured, hs256(claims(subscribe=["*"]))) == []
