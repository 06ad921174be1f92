"""Retention in one process, on both backends: what a prune deletes and what it remembers,
the ``reset`` a stream gets for a resume point whose events were pruned (and only then), the
audit page's ``pruned_through``, idempotency keys, and the ``prune``/``export`` commands."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from eventlog import EventFilter, EventLog
from eventlog.cli import main
from eventlog.models import IdempotencyKey, PrunedStream
from eventlog.retention import Policy, count, prune
from eventlog.sse import Decoder, Message
from eventlog.stream import event_stream


def bounds(eventlog: EventLog) -> dict[str, int]:
    with eventlog.engine.connect() as conn:
        return {row.stream: row.pruned_through for row in conn.execute(select(PrunedStream))}


def kept(eventlog: EventLog, *streams: str) -> list[int]:
    return [e.id for e in eventlog.events(EventFilter(streams=streams))]


def messages_until(stream: Iterator[bytes], last_id: int) -> list[Message]:
    """Decode the stream after its ``retry:`` line until the event ``last_id`` arrives."""
    decoder, messages = Decoder(), []
    deadline = time.monotonic() + 20
    while not any(m.id == str(last_id) and m.event != "reset" for m in messages):
        assert time.monotonic() < deadline, f"event {last_id} did not arrive; got {messages}"
        messages += decoder.feed(next(stream))
    return messages


def subscribe(eventlog: EventLog, streams: list[str], resume: int, last_id: int, **kw: Any) -> list[Message]:
    """What a stream resuming after ``resume`` sends up to the event ``last_id``."""
    stream = event_stream(eventlog.engine, eventlog.hub, streams, resume, retry_ms=100, **kw)
    try:
        return messages_until(stream, last_id)
    finally:
        stream.close()


def resets(messages: list[Message]) -> list[dict[str, Any]]:
    return [json.loads(m.data) for m in messages if m.event == "reset"]


@pytest.fixture
def pruned(eventlog: EventLog) -> EventLog:
    """Stream a gets ids 1-10, then b gets 11-12; keeping 3 per stream prunes a's 1-7.

    The oldest id kept over all streams (8) is a's, so a reset computed from it, instead of
    from the requested streams, is wrong for b, and so is "resume point < oldest kept".
    """
    eventlog.publish("a", 0, idempotency_key="first-a")
    eventlog.publish_batch("a", [{"data": i} for i in range(1, 10)])
    eventlog.publish_batch("b", [{"data": 10}, {"data": 11}])
    assert count(eventlog.engine, Policy(events=3)) == 7
    assert kept(eventlog) == list(range(1, 13))  # counting deleted nothing
    assert prune(eventlog.engine, Policy(events=3)) == 7
    return eventlog


def test_count_limit_keeps_the_newest_of_each_stream_and_records_the_bound(pruned: EventLog) -> None:
    assert kept(pruned, "a") == [8, 9, 10] and kept(pruned, "b") == [11, 12]
    assert bounds(pruned) == {"a": 7}
    assert prune(pruned.engine, Policy(events=3)) == 0  # nothing more to do


@pytest.mark.parametrize(
    ("streams", "resume", "expected_reset", "first_after"),
    [
        (["a"], 0, {"requested": 0, "oldest": 8, "head": 12}, 8),
        (["a"], 6, {"requested": 6, "oldest": 8, "head": 12}, 8),
        (["a"], 7, None, 8),  # covered: nothing of a after 7 was pruned
        (["b"], 5, None, 11),  # b lost nothing, though 5 is below the oldest id kept (8)
        (["b"], 0, None, 11),
        (["a", "b"], 5, {"requested": 5, "oldest": 8, "head": 12}, 8),
        ([], 3, {"requested": 3, "oldest": 8, "head": 12}, 8),
    ],
)
def test_resume_point_gets_a_reset_exactly_when_events_after_it_were_pruned(
    pruned: EventLog, streams: list[str], resume: int, expected_reset: dict[str, int] | None, first_after: int
) -> None:
    messages = subscribe(pruned, streams, resume, 12 if streams != ["a"] else 10)
    got = resets(messages)
    assert got == ([] if expected_reset is None else [expected_reset])
    if expected_reset is not None:
        assert messages[0].event == "reset" and messages[0].id == str(resume)  # before anything
    events = [int(m.id) for m in messages if m.event != "reset"]
    wanted = [i for i in kept(pruned, *streams) if i > resume]
    assert events == wanted and events[0] == first_after


def test_events_pruned_while_a_replay_runs_get_a_reset_before_the_rest(eventlog: EventLog) -> None:
    """The replay reads two events per page; between pages a prune removes events it has not
    read. The stream says so (once), then goes on with what is kept; without the check after
    each page it would skip 3-7 silently."""
    eventlog.publish_batch("a", [{"data": i} for i in range(10)])
    stream = event_stream(eventlog.engine, eventlog.hub, ["a"], 0, retry_ms=100, page_size=2)
    first = messages_until(stream, 2)
    assert [m.id for m in first] == ["1", "2"]
    assert prune(eventlog.engine, Policy(events=3)) == 7
    rest = messages_until(stream, 10)
    stream.close()
    assert resets(rest) == [{"requested": 2, "oldest": 8, "head": 10}]
    assert [m.id for m in rest] == ["2", "8", "9", "10"]  # the reset carries the cursor's id


def test_live_events_pruned_before_the_hub_read_them_get_a_reset(eventlog: EventLog) -> None:
    """With a tiny count limit a prune can beat the hub to new events: the hub sees the gap
    in the ids and sends its subscribers back to SQL, which tells them."""
    stream = event_stream(eventlog.engine, eventlog.hub, ["a"], None, retry_ms=100)
    next(stream)  # subscribed at the head (0)
    with eventlog.engine.begin() as conn:  # published and pruned before any hub can read
        from eventlog.store import Publish, append_all

        append_all(conn, [Publish([_event("a", i) for i in range(5)])])
    assert prune(eventlog.engine, Policy(events=2)) == 3
    eventlog.hub.ring(None)
    messages = messages_until(stream, 5)
    stream.close()
    assert resets(messages) == [{"requested": 0, "oldest": 4, "head": 5}]
    assert [m.id for m in messages if m.event != "reset"] == ["4", "5"]


def _event(stream: str, value: int) -> Any:
    from eventlog.events import NewEvent

    return NewEvent.of(stream, value)


def test_audit_page_carries_the_pruned_bound_of_its_range(pruned: EventLog, client: Any) -> None:
    def page(query: str) -> dict[str, Any]:
        response = client.get(f"/events?{query}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json
        return body

    assert page("stream=a")["pruned_through"] == 7  # ids 1-7 of a were deleted, not absent
    assert page("stream=a&after=7")["pruned_through"] is None
    assert page("stream=b")["pruned_through"] is None  # b lost nothing
    assert page("")["pruned_through"] == 7
    newest = page("stream=a&order=desc&limit=2")  # 10, 9: the pruned ids lie on later pages
    assert [e["id"] for e in newest["events"]] == [10, 9] and newest["pruned_through"] is None
    last = page("stream=a&order=desc&before=9")
    assert [e["id"] for e in last["events"]] == [8] and last["pruned_through"] == 7


def test_idempotency_key_is_pruned_with_its_event_and_a_retry_stores_anew(pruned: EventLog) -> None:
    with pruned.engine.connect() as conn:
        assert conn.execute(select(IdempotencyKey.key)).scalars().all() == []
    again = pruned.publish("a", 0, idempotency_key="first-a")
    assert again.id == 13  # stored anew: the first result is gone with its event


def test_age_limit_prunes_events_older_than_it(eventlog: EventLog) -> None:
    eventlog.publish_batch("a", [{"data": i} for i in range(3)])
    eventlog.publish("b", "old")
    time.sleep(1.2)
    eventlog.publish("a", "young")
    eventlog.publish("c", "young")
    assert count(eventlog.engine, Policy(seconds=1)) == 4
    assert prune(eventlog.engine, Policy(seconds=1)) == 4
    assert kept(eventlog) == [5, 6]
    assert bounds(eventlog) == {"a": 3, "b": 4}
    assert resets(subscribe(eventlog, ["a"], 1, 5)) == [{"requested": 1, "oldest": 5, "head": 6}]
    assert resets(subscribe(eventlog, ["c"], 1, 6)) == []


def test_both_limits_count_an_event_once(eventlog: EventLog) -> None:
    eventlog.publish_batch("a", [{"data": i} for i in range(6)])
    time.sleep(1.2)
    eventlog.publish_batch("a", [{"data": i} for i in range(4)])
    policy = Policy(seconds=1, events=2)
    assert count(eventlog.engine, policy) == 8  # 6 by age, of which all beyond the count too
    assert prune(eventlog.engine, policy) == 8
    assert kept(eventlog) == [9, 10]


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("EVENTLOG_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("EVENTLOG_RETAIN_EVENTS", "2")
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade"]).exit_code == 0
    for i in range(5):
        assert runner.invoke(main, ["publish", "orders", json.dumps({"n": i})]).exit_code == 0
    return runner


def test_prune_dry_run_counts_and_prune_deletes(runner: CliRunner) -> None:
    result = runner.invoke(main, ["prune", "--dry-run"])
    assert (result.exit_code, result.output) == (0, "3 events would be pruned\n")
    assert len(runner.invoke(main, ["query"]).output.splitlines()) == 5
    result = runner.invoke(main, ["prune"])
    assert (result.exit_code, result.output) == (0, "pruned 3 events\n")
    assert [json.loads(line)["id"] for line in runner.invoke(main, ["query"]).output.splitlines()] == [4, 5]


def test_prune_without_retention_says_so(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTLOG_RETAIN_EVENTS", "0")
    result = runner.invoke(main, ["prune"])
    assert result.exit_code == 0 and "every event is kept" in result.output


def test_export_round_trips_to_the_audit_querys_events(runner: CliRunner) -> None:
    result = runner.invoke(main, ["export", "--after", "1", "--limit", "3"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    exported = [json.loads(line) for line in lines]
    assert [e["id"] for e in exported] == [2, 3, 4]
    assert result.stderr == "exported 3 events\n"
    queried = [json.loads(line) for line in runner.invoke(main, ["query", "--after", "1"]).output.splitlines()]
    assert exported == queried[:3]
    assert set(exported[0]) == {"id", "stream", "type", "data", "time"}
    result = runner.invoke(main, ["export", "--since", "yesterday"])
    assert result.exit_code == 1 and "RFC 3339" in result.output
