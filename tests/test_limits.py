"""The limits agree with the timeouts: a publish at exactly each limit is stored, with both
cores kept busy by other processes, on SQLite and PostgreSQL; one byte or event more is a 413.
A publish that the database stops at its statement timeout says so (not "unavailable").

The limits are the defaults (EVENTLOG_MAX_BATCH, EVENTLOG_MAX_DATA_BYTES and
EVENTLOG_MAX_REQUEST_BYTES): what they allow must store within the default timeouts.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from conftest import Server

from eventlog.config import Settings

StartServer = Callable[..., Server]
DEFAULTS = Settings()
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def busy_cores() -> Iterator[None]:
    """Two processes that keep both cores busy for as long as the test runs."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


def order(rng: random.Random, number: int, size: int) -> dict[str, Any]:
    """An event's data of about ``size`` bytes, as a web app's would be: many small objects
    with numbers and short strings (slower to parse and to compress than one long string)."""
    lines: list[dict[str, Any]] = []
    used = 40
    while used < size:
        line = {"sku": f"{rng.getrandbits(48):012x}", "qty": rng.randrange(1, 99), "price": rng.randrange(10**6) / 100}
        lines.append(line)
        used += len(json.dumps(line, separators=(",", ":"))) + 1
    return {"order": number, "lines": lines}


def body_of(events: list[dict[str, Any]]) -> bytes:
    return json.dumps(events, separators=(",", ":")).encode()


def batch_of_exactly(size: int, count: int, rng: random.Random) -> bytes:
    """A batch of ``count`` events whose body is exactly ``size`` bytes."""
    events = [{"data": order(rng, n, size // count - 200)} for n in range(count)]
    events[-1]["data"]["note"] = ""  # then as long as the body needs
    missing = size - len(body_of(events))
    assert missing >= 0
    events[-1]["data"]["note"] = "n" * missing
    body = body_of(events)
    assert len(body) == size
    return body


def publish(client: httpx.Client, body: bytes) -> httpx.Response:
    return client.post("/streams/limits/events", content=body, headers=JSON)


def test_a_publish_at_every_limit_is_stored_with_both_cores_busy(
    database_url: str, start_server: StartServer, busy_cores: None
) -> None:
    server = start_server(database_url)
    rng = random.Random(20)
    most, largest, request = DEFAULTS.max_batch, DEFAULTS.max_data_bytes, DEFAULTS.max_request_bytes
    one_largest = {"data": "x" * (largest - 2)}  # a JSON string: its two quotes count
    cases = {
        "the most events in a batch": body_of([{"data": n} for n in range(most)]),
        "the largest data of an event": body_of([one_largest]),
        "a batch of the largest events that fit": body_of([one_largest] * (request // (largest + 20))),
        "the largest request, with the most events": batch_of_exactly(request, most, rng),
        "the largest request, in few events": batch_of_exactly(request, request // largest + 1, rng),
    }
    with httpx.Client(base_url=server.url, timeout=120) as client:
        stored = 0
        for case, body in cases.items():
            response = publish(client, body)
            assert response.status_code == 201, (case, response.status_code, response.text[:300])
            count = len(json.loads(body))
            stored += count
            assert len(response.json()["events"]) == count, case
            assert response.json()["events"][-1]["id"] == stored, case

        # One more of anything is a readable 413, and stores nothing.
        over = {
            "one event too many": body_of([{"data": n} for n in range(most + 1)]),
            "one byte too much data": body_of([{"data": "x" * (largest - 1)}]),
            "one byte too large a request": batch_of_exactly(request + 1, most, rng),
        }
        for case, body in over.items():
            response = publish(client, body)
            assert response.status_code == 413, (case, response.status_code, response.text[:300])
            assert response.headers["Content-Type"] == "application/problem+json", case
        head = client.get("/events?limit=1&order=desc").json()["events"][0]["id"]
        assert head == stored


@pytest.mark.postgres
def test_a_publish_stopped_at_the_statement_timeout_says_so(
    postgres_url: str, start_server: StartServer
) -> None:
    """Not "the database is unavailable; retry shortly": the database answered, by ending
    the statement, and nothing was stored."""
    server = start_server(postgres_url, STATEMENT_TIMEOUT_SECONDS=0.05)
    rng = random.Random(57014)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = publish(client, batch_of_exactly(DEFAULTS.max_request_bytes, 100, rng))
        assert response.status_code == 503, response.text
        assert response.headers["Content-Type"] == "application/problem+json"
        problem = response.json()
        assert problem["type"].endswith(":statement-timeout")
        assert "statement timeout (0.05 s)" in problem["detail"]
        assert "stored nothing" in problem["detail"]
        assert "Retry-After" not in response.headers
        assert client.get("/events").json()["events"] == []
