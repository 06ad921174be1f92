"""The client's decisions, without a server: when to retry and how long to wait, and what
an answer that is not a success becomes."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import pytest
from helpers import free_port

from eventlog.client import (
    Client,
    Event,
    Forbidden,
    InvalidRequest,
    ProblemError,
    QueryTooLong,
    ServiceUnavailable,
    TransportError,
    Unauthorized,
)
from eventlog.client._errors import from_answer
from eventlog.client._protocol import Attempts
from eventlog.errors import PROBLEM_BASE
from eventlog.events import StoredEvent


def test_waits_honour_the_floor_grow_with_failures_and_are_jittered() -> None:
    attempts = Attempts(None, renewable=False)
    waits = [attempts.delay(floor=2.0, first=2.0) for _ in range(8)]
    assert all(w is not None and w >= 2.0 for w in waits)  # never sooner than retry:
    assert waits[3] is not None and waits[3] >= 16.0 and all(w is not None and w <= 45.0 for w in waits)
    attempts.succeeded()
    assert (attempts.delay(2.0, 2.0) or 0) <= 3.0  # a connection that worked starts over
    firsts = {Attempts(None, renewable=False).delay(2.0, 2.0) for _ in range(10)}
    assert len(firsts) > 1  # clients dropped at once do not all come back at once


def test_what_is_retried_and_what_raises_at_once() -> None:
    def problem(status: int, slug: str | None = None) -> ProblemError:
        body = {"status": status, "type": PROBLEM_BASE + slug if slug else "about:blank", "title": "t", "detail": "d"}
        return from_answer(status, "application/problem+json", str(body).replace("'", '"').encode())

    attempts = Attempts(60, renewable=True)
    assert attempts.after_failure(problem(503), None) >= 0  # retried
    assert attempts.after_failure(httpx.ConnectError("refused"), None) >= 0
    assert attempts.after_failure(problem(401, "unauthorized"), None) == 0  # renewed once, at once
    with pytest.raises(Unauthorized):
        attempts.after_failure(problem(401, "unauthorized"), None)
    for error, kind in [
        (problem(403, "forbidden"), Forbidden), (problem(400, "invalid-request"), InvalidRequest),
        (problem(503, "query-too-long"), QueryTooLong),
    ]:
        with pytest.raises(kind):
            attempts.after_failure(error, None)
    assert isinstance(from_answer(502, "text/html", b"<h1>Bad Gateway</h1>"), ServiceUnavailable)


def test_a_server_that_never_answers_raises_after_retry_for() -> None:
    started = time.monotonic()
    with Client(f"http://127.0.0.1:{free_port()}", retry_for=1.0) as client, pytest.raises(TransportError):
        client.publish("orders", 1)
    assert time.monotonic() - started < 30  # it gave up rather than retrying for ever


def test_events_read_back_what_the_server_writes() -> None:
    stored = StoredEvent(7, "orders", "paid", '{"n":[1,"\u2028"]}', datetime(2026, 12, 6, 1, 2, 3, 456789, tzinfo=UTC))
    assert StoredEvent.from_json(stored.to_json()) == stored
    event = Event.from_json(stored.to_json())
    assert (event.id, event.data, event.time) == (7, {"n": [1, "\u2028"]}, stored.time)
    assert event.to_json() == stored.to_json()
    for bad in ('{"id": 7}', "not JSON"):
        with pytest.raises(InvalidRequest):
            Event.from_json(bad)
