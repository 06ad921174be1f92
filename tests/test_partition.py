"""A database link that fails, silently or loudly, stalls no one for longer than the
configured timeouts, and loses or duplicates nothing.

Each test puts a TCP proxy (``helpers.CuttableProxy``) between one ``eventlog serve`` and
PostgreSQL. Black-holed, the proxy forwards nothing and closes nothing, as a network that
drops every packet does: the server's PostgreSQL session may then sit ``idle in
transaction`` holding the counter's lock, which every publish in the cluster needs.
Cut with ``refuse``, it is a database that is down.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from conftest import Server
from helpers import SHORT_TIMEOUTS as TIMEOUTS
from helpers import CuttableProxy, KeyedPublisher, assert_stored_once, through, wait_until
from sqlalchemy import Engine, text

pytestmark = pytest.mark.postgres

StartServer = Callable[..., Server]

OUTAGE = 6.0  # long against the TIMEOUTS
MARGIN = 1.5  # for a machine shared with other work



def timed(call: Callable[[], httpx.Response]) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    response = call()
    return time.monotonic() - started, response


def idle_in_transaction(engine: Engine, name: str) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name = :name AND state = 'idle in transaction'"
                ),
                {"name": name},
            ).scalar_one()
        )


def test_a_black_holed_server_stalls_neither_the_others_nor_its_own_clients(
    postgres_url: str, postgres_engine: Engine, database_proxy: CuttableProxy, start_server: StartServer
) -> None:
    """Two servers on one PostgreSQL publish with Idempotency-Keys (several statements per
    transaction). One server's database link is black-holed for 6 s mid-publish: its
    session, idle in transaction, holds the counter's lock until PostgreSQL ends it
    (idle_in_transaction_session_timeout), so the healthy server's publishes wait about that
    long, not the whole outage (without the timeout they wait all 6 s). The partitioned
    server answers its own clients, and /readyz, with 503 within its reply timeout (one
    deadline for queueing, connecting and answering). After the link heals, every request
    that got no 201 is retried with its key:
    the log holds every key exactly once, gap-free."""
    healthy = start_server(postgres_url, **TIMEOUTS)
    partitioned = start_server(through(database_proxy, postgres_url, "partitioned"), **TIMEOUTS)
    publishers = [
        KeyedPublisher(server.url, f"{label}{n}")
        for label, server in (("h", healthy), ("p", partitioned))
        for n in range(2)
    ]
    seen_holding = threading.Event()
    try:
        wait_until(lambda: all(len(p.attempts) >= 20 for p in publishers))
        for _ in range(5):  # until the black hole catches a transaction in the middle
            database_proxy.blackhole()
            cut_at = time.monotonic()
            # Seen from PostgreSQL: the partitioned session sits idle in transaction.
            watch_until = cut_at + TIMEOUTS["IDLE_IN_TRANSACTION_TIMEOUT_SECONDS"] + 1
            while time.monotonic() < watch_until and not seen_holding.is_set():
                if idle_in_transaction(postgres_engine, "partitioned"):
                    seen_holding.set()
                time.sleep(0.02)
            if seen_holding.is_set():
                break
            database_proxy.heal()  # caught between two transactions: try again
            time.sleep(TIMEOUTS["REPLY_TIMEOUT_SECONDS"] + 1)
        ready_after, ready = timed(lambda: httpx.get(f"{partitioned.url}/readyz", timeout=30))
        time.sleep(max(0.0, cut_at + OUTAGE - time.monotonic()))
        database_proxy.heal()
        healed_at = time.monotonic()
        wait_until(lambda: all(a.started > healed_at for p in publishers[2:] for a in p.attempts[-3:]))
    finally:
        for publisher in publishers:
            publisher.stop()

    assert seen_holding.is_set(), "the black hole did not catch a transaction in the middle"
    bound = TIMEOUTS["REPLY_TIMEOUT_SECONDS"] + MARGIN  # one deadline per request
    assert ready.status_code == 503 and ready.json()["database"] == "unreachable"
    assert ready_after < bound, ready_after

    def during(publisher: KeyedPublisher) -> list[Any]:
        """The attempts in flight at some point of the partition."""
        return [a for a in publisher.attempts if a.started < healed_at and a.started + a.elapsed > cut_at]

    healthy_waits = sorted(a.elapsed for p in publishers[:2] for a in during(p))
    # Waiting for the counter: until PostgreSQL ends the partitioned session.
    healthy_bound = TIMEOUTS["IDLE_IN_TRANSACTION_TIMEOUT_SECONDS"] + MARGIN
    assert healthy_waits and healthy_waits[-1] < healthy_bound, healthy_waits[-5:]
    # It kept publishing; on a loaded machine a wait may still pass the lock timeout and
    # get a 503 (bounded, and settled by the retry below) instead of a 201.
    healthy_statuses = [a.status for p in publishers[:2] for a in during(p)]
    assert set(healthy_statuses) <= {201, 503} and healthy_statuses.count(201) > len(healthy_statuses) / 2
    partitioned_answers = [a for p in publishers[2:] for a in during(p)]
    assert partitioned_answers, "the partitioned server's clients never got an answer"
    assert all(a.status in (201, 503) and a.elapsed < bound for a in partitioned_answers), [
        (a.status, round(a.elapsed, 2)) for a in partitioned_answers
    ]
    assert any(a.status == 503 for a in partitioned_answers), [
        (round(a.started - cut_at, 2), round(a.elapsed, 2), a.status)
        for p in publishers[2:] for a in p.attempts if a.started > cut_at - 3
    ]

    stored: dict[str, dict[str, Any]] = {}
    for publisher in publishers:
        stored.update(publisher.settle(healthy.url))
    with httpx.Client(timeout=10) as client:
        log = client.get(f"{healthy.url}/events?limit=1000").json()
        events = list(log["events"])
        while log["next"]:
            log = client.get(healthy.url + log["next"]).json()
            events += log["events"]
    assert_stored_once(events, publishers, stored)
