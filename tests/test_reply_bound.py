"""EVENTLOG_REPLY_TIMEOUT_SECONDS bounds a request's database work in all: while a server's
database link is black-holed, no answer comes later than that, whatever the request waited
for (the writer's queue behind a stuck publish, a new connection, an answer).

A timeout per wait did not: a publish queued behind one stuck for the whole reply timeout,
then opened a new connection (the connect timeout more), and was answered after both; on
MariaDB, PyMySQL's per-read timeout answered after 6 s for a 3 s reply timeout, and a link
lost while a connection's isolation level was put back at check-in was a 500.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest
from conftest import Server
from helpers import SHORT_TIMEOUTS as TIMEOUTS
from helpers import CuttableProxy, through, wait_until

pytestmark = pytest.mark.postgres

StartServer = Callable[..., Server]
BLACK_HOLE = 7.0  # as long as in the trial that found answers after 7.29 s and 9 s
SLACK = 1.0  # this process's HTTP round trip and the server's own work, on a busy machine


@dataclass
class Answer:
    what: str
    started: float
    elapsed: float
    status: int | None  # None: no answer (the connection failed)
    retry_after: str | None = None


class Client:
    """Sends one kind of request after another in a thread, recording every answer."""

    def __init__(self, base_url: str, what: str, call: Callable[[httpx.Client, int], httpx.Response]) -> None:
        self.what = what
        self.answers: list[Answer] = []
        self._call = call
        self._base = base_url
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"client-{what}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(base_url=self._base, timeout=60) as client:
            n = 0
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = self._call(client, n)
                except httpx.HTTPError:
                    self.answers.append(Answer(self.what, started, time.monotonic() - started, None))
                    continue
                self.answers.append(
                    Answer(
                        self.what,
                        started,
                        time.monotonic() - started,
                        response.status_code,
                        response.headers.get("Retry-After"),
                    )
                )
                n += 1
                if response.status_code >= 500:
                    self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=70)
        assert not self._thread.is_alive(), f"{self.what} did not stop"


def test_no_answer_comes_later_than_the_reply_timeout_while_the_database_is_black_holed(
    server_url: str, server_proxy: CuttableProxy, start_server: StartServer
) -> None:
    server = start_server(through(server_proxy, server_url), **TIMEOUTS)
    calls: dict[str, Callable[[httpx.Client, int], httpx.Response]] = {
        # One statement that commits by itself, on the writer's kept connection.
        "publish": lambda c, n: c.post("/streams/s/events", json={"data": n}),
        # A transaction of several statements on a pooled connection.
        "keyed": lambda c, n: c.post(
            "/streams/k/events", json={"data": n}, headers={"Idempotency-Key": f"k-{n}-{time.time()}"}
        ),
        "audit": lambda c, n: c.get("/events?stream=s&limit=10"),
        "readyz": lambda c, n: c.get("/readyz"),
    }
    clients = [Client(server.url, what, call) for what, call in calls.items() for _ in range(2)]
    try:
        wait_until(lambda: all(len(c.answers) >= 10 for c in clients), timeout=30)
        server_proxy.blackhole()
        cut_at = time.monotonic()
        time.sleep(BLACK_HOLE)
        server_proxy.heal()
        healed_at = time.monotonic()
        # Back by itself: every kind of request succeeds again after the link heals.
        wait_until(
            lambda: all(
                any(a.started > healed_at and a.status in (200, 201) for a in c.answers) for c in clients
            ),
            timeout=30,
        )
    finally:
        for client in clients:
            client.stop()

    answers = [a for c in clients for a in c.answers]
    felt = [a for a in answers if a.started + a.elapsed > cut_at and a.started < healed_at]
    assert any(a.status == 503 for a in felt), "the black hole was not felt"
    bound = TIMEOUTS["REPLY_TIMEOUT_SECONDS"] + SLACK
    late = sorted(
        ((a.what, round(a.started - cut_at, 2), round(a.elapsed, 2), a.status) for a in answers if a.elapsed > bound),
        key=lambda late: -late[2],
    )
    assert late == [], f"answers past {bound} s (kind, start after the cut, seconds, status): {late[:10]}"
    assert {a.status for a in answers} <= {200, 201, 503}, sorted({a.status for a in answers}, key=str)
    # A 503 of a publish or audit page that the database did not answer says when to retry.
    assert all(a.retry_after == "1" for a in felt if a.status == 503 and a.what != "readyz")
