"""Pattern subscriptions (``user.42.*``): what a pattern matches, in Python, in SQL, in the
hub and in rights alike; live streams with replay, exactly once across the handover, a
reconnect and a prune; the audit query's pages; the plans that serve them from the index."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import threading
import time
from datetime import UTC, datetime
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from auth_tokens import AUDIENCE, SECRET, claims, hs256
from conftest import EVENTLOG_BIN, Server, server_env
from helpers import Listener, publish, wait_until
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import Engine, select, text

from eventlog import EventFilter, EventLog, InvalidRequest
from eventlog.auth import Rights
from eventlog.cli import main
from eventlog.errors import Forbidden
from eventlog.events import matches, selection
from eventlog.models import Event
from eventlog.retention import Policy, prune
from eventlog.sse import Decoder, Message
from eventlog.store import head, oldest, pruned_above
from eventlog.stream import event_stream

SSE = "text/event-stream"
# Around the boundaries of user.42.*: only user.42.x and user.42.y.z are inside. Ids 1-12.
STREAMS = ["user.4", "user.42", "user.42.", "user.42.x", "user.42.y.z", "user.42:", "user.420.x",
           "user.42-x", "user.43.x", "users.42.x", "USER.42.x", "other"]
INSIDE = {"user.42.x", "user.42.y.z"}


def by_definition(pattern: str, stream: str) -> bool:
    """What a pattern means, written the obvious way (the code uses a range)."""
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return stream.startswith(pattern[:-1]) and len(stream) > len(pattern) - 1
    return stream == pattern


def test_matches_is_the_prefix_definition_on_every_short_name() -> None:
    alphabet = "a.Z-_:09"
    names = ["".join(c) for n in range(1, 4) for c in itertools.product(alphabet, repeat=n)]
    patterns = ["*", *names, *(n + "*" for n in names)]
    for pattern in patterns:
        for stream in names:
            assert matches(pattern, stream) is by_definition(pattern, stream), (pattern, stream)


def test_user_42_never_matches_user_420_or_the_bare_prefix() -> None:
    assert {s for s in STREAMS if matches("user.42.*", s)} == INSIDE
    # A prefix without a separator is a plain prefix, as in a token's right.
    assert matches("user.42*", "user.420.x") and matches("user.42*", "user.42.x")
    assert not matches("user.42*", "user.42")


def test_a_pattern_read_as_a_stream_is_matched_exactly_when_it_is_covered() -> None:
    """Rights check a requested pattern with ``matches``, as if it were a stream name: that
    must mean every stream of the narrow pattern matches the wide one."""
    alphabet = "ab."
    names = ["".join(c) for n in range(1, 5) for c in itertools.product(alphabet, repeat=n)]
    short = [n for n in names if len(n) < 4]  # so each prefix has continuations to tell by
    patterns = ["*", *short, *(n + "*" for n in short)]
    for wide, narrow in itertools.product(patterns, repeat=2):
        wanted = all(matches(wide, s) for s in names if matches(narrow, s))
        assert matches(wide, narrow) is wanted, (wide, narrow)


def test_selection_keeps_no_pattern_another_covers() -> None:
    assert selection(["user.42.x", "user.*", "user.42.*", "a", "a"]) == ("user.*", "a")
    assert selection(["a", "*"]) == ()  # '*' reads every stream, as no stream at all does
    with pytest.raises(InvalidRequest):
        selection(["a*b"])
    with pytest.raises(InvalidRequest):
        selection(["**"])


def test_rights_need_one_granted_pattern_that_covers_the_requested_one() -> None:
    rights = Rights(publish=(), subscribe=("user.42.*",), expires_at=None)
    for allowed in (["user.42.*"], ["user.42.orders.*"], ["user.42.x"], ["user.42.x", "user.42.y.*"]):
        rights.require_subscribe(allowed)
    for refused in (["user.*"], ["user.4*"], ["user.420.*"], ["user.42"], ["user.42*"], ["*"], []):
        with pytest.raises(Forbidden):
            rights.require_subscribe(refused)
    narrow = Rights(publish=(), subscribe=("user.42.orders.*", "user.42.x"), expires_at=None)
    with pytest.raises(Forbidden):
        narrow.require_subscribe(["user.42.*"])  # rights for parts of it are not enough


# --- SQL ---------------------------------------------------------------------------------


@pytest.fixture
def boundary(eventlog: EventLog) -> EventLog:
    """One event in each stream of STREAMS, in that order."""
    for stream in STREAMS:
        eventlog.publish(stream, stream)
    return eventlog


def test_sql_selects_what_matches_selects(boundary: EventLog) -> None:
    for streams in (["user.42.*"], ["user.42*"], ["user.*"], ["user.42.*", "other"], ["user.4", "user.42.y.*"]):
        got = [e.stream for e in boundary.events(EventFilter(streams=tuple(streams)))]
        assert got == [s for s in STREAMS if any(matches(p, s) for p in streams)], streams
    assert {e.stream for e in boundary.events(EventFilter(streams=("user.42.*",)))} == INSIDE


def test_pruned_bounds_and_oldest_cover_the_streams_a_pattern_matches(boundary: EventLog) -> None:
    # Keep one event per stream: prunes nothing yet; two more in user.420.x and user.42.x.
    boundary.publish("user.420.x", "again")  # 13
    boundary.publish("user.42.x", "again")  # 14
    assert prune(boundary.engine, Policy(events=1)) == 2  # user.420.x's 7 and user.42.x's 4
    with boundary.engine.connect() as conn:
        assert pruned_above(conn, ["user.42.*"], 0) == {"user.42.x": 4}  # never user.420.x's
        assert pruned_above(conn, ["user.42*"], 0) == {"user.42.x": 4, "user.420.x": 7}
        assert oldest(conn, ["user.42.*"]) == 5
        assert oldest(conn, ["user.42.x"]) == 14
        assert oldest(conn, ["nothing.*"]) is None


def test_audit_query_with_a_pattern_pages_with_next(client: FlaskClient, eventlog: EventLog) -> None:
    rng = random.Random(15)
    for n in range(60):
        eventlog.publish(rng.choice(["user.42.a", "user.420.a", "user.42.b.c", "user.4"]), n)
    wanted = [e.id for e in eventlog.events(EventFilter()) if matches("user.42.*", e.stream)]
    for order, expected in (("asc", wanted), ("desc", wanted[::-1])):
        url: str | None = f"/events?stream=user.42.*&limit=7&order={order}"
        got: list[int] = []
        while url is not None:
            response = client.get(url)
            assert response.status_code == 200, response.text
            assert response.json["pruned_through"] is None
            got += [e["id"] for e in response.json["events"]]
            url = response.json["next"]
        assert got == expected


def test_audit_page_with_a_pattern_says_what_was_pruned(client: FlaskClient, eventlog: EventLog) -> None:
    for stream in ("user.42.a", "user.42.a", "user.420.a", "user.420.a", "user.42.b"):
        eventlog.publish(stream, 0)
    assert prune(eventlog.engine, Policy(events=1)) == 2  # ids 1 (user.42.a) and 3 (user.420.a)
    page = client.get("/events?stream=user.42.*").json
    assert [e["id"] for e in page["events"]] == [2, 5] and page["pruned_through"] == 1
    assert client.get("/events?stream=user.42.*&after=1").json["pruned_through"] is None


def test_publishing_to_a_pattern_is_a_problem_and_stores_nothing(client: FlaskClient, eventlog: EventLog) -> None:
    for path in ("/streams/a.*/events", "/streams/*/events", "/streams/a*/events"):
        response = client.post(path, json={"data": 1})
        assert response.status_code == 400 and response.mimetype == "application/problem+json", path
    # The single-stream endpoint's frames do not name their stream: patterns go to /events.
    response = client.get("/streams/a.*/events", headers={"Accept": SSE})
    assert response.status_code == 400 and response.mimetype == "application/problem+json"
    assert eventlog.page(EventFilter(), limit=10).events == []
    assert client.get("/healthz").status_code == 200


def test_cli_query_and_export_take_patterns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTLOG_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade"]).exit_code == 0
    for stream in ("user.42.a", "user.420.a", "user.42.b"):
        assert runner.invoke(main, ["publish", stream, "1"]).exit_code == 0
    for command in ("query", "export"):
        result = runner.invoke(main, [command, "--stream", "user.42.*"])
        assert result.exit_code == 0, result.output
        assert [json.loads(line)["stream"] for line in result.stdout.splitlines()] == ["user.42.a", "user.42.b"]
    token = runner.invoke(main, ["token", "create", "--subscribe", "user.42.a.*", "--ttl", "60"],
                          env={"EVENTLOG_JWT_SECRET": SECRET})
    assert token.exit_code == 0, token.output
    result = runner.invoke(main, ["query", "--stream", "user.42.*", "--token", token.stdout.strip()],
                           env={"EVENTLOG_JWT_SECRET": SECRET})
    assert result.exit_code != 0 and "may not read" in result.output


def plan(engine: Engine, streams: tuple[str, ...], after: int) -> str:
    """The database's plan for the replay page of a pattern subscription."""
    from eventlog.store import _conditions

    query = select(Event.id).where(*_conditions(EventFilter(streams=streams, after=after))).order_by(Event.id).limit(1001)
    compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
    explain = "EXPLAIN QUERY PLAN" if engine.dialect.name == "sqlite" else "EXPLAIN"
    with engine.connect() as conn:
        return "\n".join(" ".join(map(str, row)) for row in conn.execute(text(f"{explain} {compiled}")))


def fill_for_plans(engine: Engine) -> None:
    """8,000 events over 8,000 streams user.<n>.<k>, and the statistics the planner uses."""
    rows = [{"stream": f"user.{n}.{k}", "data": "0"} for n in range(400) for k in range(20)]
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        first = head(conn) + 1  # the counter stays behind: no one publishes after this
        conn.execute(
            Event.__table__.insert(),
            [{"id": first + i, "type": "message", "time": moment, **r} for i, r in enumerate(rows)],
        )
        analyze = "ANALYZE" if engine.dialect.name in ("sqlite", "postgresql") else f"ANALYZE TABLE {Event.__table__.name}"
        conn.execute(text(analyze))


def assert_served_by_the_stream_index(engine: Engine) -> None:
    found = plan(engine, ("user.42.*",), 0)
    assert f"ix_{Event.__table__.name}_stream" in found, found  # (stream, id) or (stream, type, id)
    if engine.dialect.name == "postgresql":
        assert "Index Cond" in found and "'user.42.'" in found and "'user.42/'" in found, found
    elif engine.dialect.name == "sqlite":
        assert "stream>? AND stream<?" in found, found
    else:
        assert " range " in found, found


def test_a_pattern_is_read_from_the_stream_index(eventlog: EventLog) -> None:
    """The range a pattern becomes is an index range on (stream, id), on every database: a
    LIKE would scan on PostgreSQL (it needs text_pattern_ops there) and SQLite (case-blind)."""
    fill_for_plans(eventlog.engine)
    assert_served_by_the_stream_index(eventlog.engine)


def test_a_pattern_is_a_prefix_on_postgresql_with_a_linguistic_collation() -> None:
    """A database created with an ICU locale sorts orders.A1 between orders.a and orders.b:
    without the byte order migration 0006 gives the stream column, orders.A* read orders.b
    and orders.a*, orders.A1. The index still serves the range."""
    from conftest import fresh_postgres_database, url_of

    from eventlog import create_app

    icu = "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
    with fresh_postgres_database("eventlog_icu", icu) as engine:
        app = create_app({"EVENTLOG_DATABASE_URL": url_of(engine)})
        events: EventLog = app.extensions["eventlog"]
        try:
            events.upgrade()
            streams = ["orders.a1", "orders.A1", "orders.b", "orders.B", "orders-a", "orders:a",
                       "orders.a", "orders._x", "orders..y", "ordersa"]
            for stream in streams:
                events.publish(stream, 0)
            for pattern in ("orders.a*", "orders.A*", "orders.*", "orders*", "orders.b*", "orders._*"):
                got = [e.stream for e in events.events(EventFilter(streams=(pattern,)))]
                assert got == [s for s in streams if matches(pattern, s)], pattern
            fill_for_plans(events.engine)
            assert_served_by_the_stream_index(events.engine)
        finally:
            events.close()


# --- live streams ------------------------------------------------------------------------


def read_until(stream: Iterator[bytes], last_id: int) -> list[Message]:
    """Decode the stream after its ``retry:`` line until the event ``last_id`` arrives."""
    decoder, messages = Decoder(), []
    deadline = time.monotonic() + 20
    while not any(m.id == str(last_id) and m.event != "reset" for m in messages):
        assert time.monotonic() < deadline, f"event {last_id} did not arrive; got {messages}"
        messages += decoder.feed(next(stream))  # a heartbeat at least every 0.2 s
    return messages


def test_a_pattern_stream_gets_its_events_once_in_order_across_handover_and_reconnect(eventlog: EventLog) -> None:
    """Events of matching and other streams are published while the stream replays in small
    pages and then lives; it is cut and resumed from its last id several times. Every
    matching id arrives once, in order, in the envelope that names its stream; an overlapping
    selection (user.42.x also under user.42.*) changes nothing."""
    rng = random.Random(42)
    streams = ["user.42.x", "user.42.y.z", "user.420.x", "user.42", "other"]
    selected = ["user.42.*", "user.42.x", "other"]

    def publish_some(count: int) -> None:
        for n in range(count):
            eventlog.publish_batch(rng.choice(streams), [{"data": n}] * rng.choice([1, 1, 3]))

    publish_some(30)
    got: list[Message] = []
    resume = 0
    for _ in range(4):
        stream = event_stream(eventlog.engine, eventlog.hub, selected, resume, retry_ms=100,
                              envelope=True, page_size=rng.choice([1, 2, 5]))
        publisher = threading.Thread(target=publish_some, args=(20,))
        publisher.start()
        next(stream)  # subscribed: the replay is next, while the publisher runs
        publisher.join()
        wanted = [e.id for e in eventlog.events(EventFilter(streams=tuple(selected)))]
        messages = read_until(stream, wanted[-1])
        stream.close()
        got += messages
        resume = int(messages[-1].id)  # what EventSource sends as Last-Event-ID
    everything = eventlog.events(EventFilter())
    expected = [e for e in everything if any(matches(p, e.stream) for p in selected)]
    assert [int(m.id) for m in got] == [e.id for e in expected]
    assert [json.loads(m.data)["stream"] for m in got] == [e.stream for e in expected]
    assert not any(json.loads(m.data)["stream"] in ("user.420.x", "user.42") for m in got)


def test_the_hub_hands_each_subscriber_exactly_what_its_patterns_match(eventlog: EventLog) -> None:
    hub = eventlog.hub
    selections = [["user.42.*"], ["user.42*"], ["user.*", "user.42.x"], ["user.42.x"], ["*"],
                  ["user.42.y.*", "other"], ["user.42.*", "user.4*"]]
    subscriptions = [hub.subscribe(s) for s in selections]
    try:
        for stream in STREAMS:
            eventlog.publish(stream, stream)
        for streams, subscription in zip(selections, subscriptions, strict=True):
            wanted = [s for s in STREAMS if any(matches(p, s) for p in streams)]
            got: list[str] = []
            while len(got) < len(wanted):  # in id order: a wrong one shows before the last
                frames, overflowed = subscription.take()  # a heartbeat tick wakes it too
                assert not overflowed
                got += [json.loads(f.wire.split(b"data: ", 1)[1]) for f in frames]
            assert got == wanted, streams
    finally:
        for subscription in subscriptions:
            hub.unsubscribe(subscription)
    assert not hub._by_stream and not hub._prefix_lengths  # nothing left behind


def test_a_pattern_stream_gets_a_reset_when_a_matching_stream_was_pruned_and_only_then(eventlog: EventLog) -> None:
    for stream in ("user.420.x", "user.420.x", "user.42.x", "user.42.x", "user.42.y", "user.420.x"):
        eventlog.publish(stream, 0)
    assert prune(eventlog.engine, Policy(events=1)) == 3  # 1, 2 (user.420.x) and 3 (user.42.x)
    stream = event_stream(eventlog.engine, eventlog.hub, ["user.42.*"], 0, retry_ms=100)
    messages = read_until(stream, 5)
    stream.close()
    assert [(m.event, m.id) for m in messages] == [("reset", "0"), ("message", "4"), ("message", "5")]
    assert json.loads(messages[0].data) == {"requested": 0, "oldest": 4, "head": 6}
    # Resuming after user.42.x's pruned bound: user.420.x lost 1-6's events, user.42.* did not.
    stream = event_stream(eventlog.engine, eventlog.hub, ["user.42.*"], 3, retry_ms=100)
    messages = read_until(stream, 5)
    stream.close()
    assert [(m.event, m.id) for m in messages] == [("message", "4"), ("message", "5")]


# --- HTTP, rights ------------------------------------------------------------------------

AUTH = {"EVENTLOG_JWT_SECRET": SECRET, "EVENTLOG_JWT_AUDIENCE": AUDIENCE}


@pytest.mark.settings(**AUTH)
@pytest.mark.parametrize(
    ("granted", "requested", "status"),
    [
        (["user.42.*"], "stream=user.42.*", 200),
        (["user.42.*"], "stream=user.42.orders.*", 200),
        (["user.42.*"], "stream=user.42.x&stream=user.42.y.*", 200),
        (["user.42.*"], "stream=user.*", 403),
        (["user.42.*"], "stream=user.420.*", 403),
        (["user.42.*"], "stream=user.42*", 403),
        (["user.42.*"], "stream=*", 403),
        (["user.42.orders.*", "user.42.x"], "stream=user.42.*", 403),
        (["*"], "stream=user.*", 200),
    ],
)
def test_a_pattern_needs_a_right_that_covers_it(
    client: FlaskClient, eventlog: EventLog, granted: list[str], requested: str, status: int
) -> None:
    eventlog.publish("user.42.x", "mine")
    eventlog.publish("user.420.x", "not mine")
    token = hs256(claims(subscribe=granted))
    headers = {"Authorization": f"Bearer {token}"}
    audit = client.get(f"/events?{requested}", headers=headers)
    assert audit.status_code == status, audit.text
    live = client.get(f"/events?{requested}&last_event_id=0", headers={**headers, "Accept": SSE}, buffered=False)
    try:
        assert live.status_code == status
        if status == 403:
            assert audit.mimetype == "application/problem+json" and b"mine" not in audit.data
        else:
            chunks = iter(live.response)
            assert next(chunks).startswith(b"retry:")
            sent = b"".join(itertools.takewhile(lambda chunk: b"heartbeat" not in chunk, chunks))
            for stream, data in (("user.42.x", b'"mine"'), ("user.420.x", b'"not mine"')):
                wanted = any(matches(p.split("=")[1], stream) for p in requested.split("&"))
                assert (data in sent) is wanted, stream
    finally:
        live.close()


# --- real servers ------------------------------------------------------------------------


def test_pattern_stream_across_servers_a_reconnect_and_a_prune(
    database_url: str, redis_url: str, redis_channel: str, start_server: Callable[..., Server]
) -> None:
    """Two ``eventlog serve`` processes that hear each other only through Redis (their polls
    are a minute apart). A pattern subscriber on one gets what the other stores, once, in
    order; it hangs up, events are published and pruned, and it comes back to the other
    server with Last-Event-ID: a reset for the events pruned, then what is kept, then live."""
    settings = {"REDIS_CHANNEL": redis_channel, "POLL_SECONDS": 60, "HEARTBEAT_SECONDS": 0.5}
    first = start_server(database_url, redis_url, **settings)
    second = start_server(database_url, redis_url, **settings)
    selected = "stream=user.42.*&stream=other"
    streams = ["user.42.a", "user.42.b.c", "user.420.a", "user.42", "other"]
    rng = random.Random(8)

    def matching(events: list[dict[str, Any]]) -> list[int]:
        return [e["id"] for e in events if any(matches(p, e["stream"]) for p in ("user.42.*", "other"))]

    listener = Listener(f"{first.url}/events?{selected}")
    assert listener.connected.wait(10)
    published = [publish(second.url, rng.choice(streams), n) for n in range(30)]
    wait_until(lambda: listener.ids() == matching(published))
    frames = [json.loads(m.data) for m in listener.messages]
    assert [f["stream"] for f in frames] == [e["stream"] for e in published if e["id"] in listener.ids()]
    listener.close()
    last = listener.ids()[-1]

    missed = [publish(first.url, s, 0) for s in ("user.42.a", "user.420.a", "user.42.a", "user.42.a", "user.42.b.c")]
    env = server_env(database_url, RETAIN_EVENTS=2)
    pruned = subprocess.run([str(EVENTLOG_BIN), "prune"], env=env, capture_output=True, text=True, timeout=60)
    assert pruned.returncode == 0, pruned.stderr
    kept = httpx.get(f"{second.url}/events?{selected}&after={last}").json()["events"]
    assert missed[0]["id"] not in {e["id"] for e in kept}  # user.42.a kept its newest two

    listener = Listener(f"{second.url}/events?{selected}", last_event_id=last)
    assert listener.connected.wait(10)
    live = [publish(first.url, s, 1) for s in ("user.420.a", "other", "user.42.b.c")]
    wait_until(lambda: listener.ids() == matching(kept) + matching(live))
    listener.close()
    reset = listener.messages[0]
    oldest = httpx.get(f"{second.url}/events?{selected}&limit=1").json()["events"][0]["id"]
    assert reset.event == "reset" and reset.id == str(last)
    body = json.loads(reset.data)  # the head when the replay began: live events may be in
    assert body["requested"] == last and body["oldest"] == oldest and body["head"] >= missed[-1]["id"]
    assert [m.event for m in listener.messages].count("reset") == 1
