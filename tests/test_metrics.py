"""/metrics: Prometheus counters and gauges, summed over the workers of ``eventlog serve``."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import httpx
import pytest
from conftest import RedisServer, Server
from flask import Flask
from flask.testing import FlaskClient
from helpers import Listener, publish, subscribers_by_worker, wait_until
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from eventlog import EventLog
from eventlog.events import NewEvent
from eventlog.store import Publish, append_all

StartServer = Callable[..., Server]


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return scrape(text)[(name, tuple(sorted(labels.items())))]


def server_value(server: Server, name: str, **labels: str) -> float:
    response = httpx.get(f"{server.url}/metrics", timeout=5)
    assert response.status_code == 200
    return value(response.text, name, **labels)


# --- in one process (the Flask test client, an embedding app) -------------------------------


def test_metrics_count_publish_outcomes_in_process(client: FlaskClient) -> None:
    """Outside ``eventlog serve`` the metrics live in the process: each outcome counts events."""
    before = client.get("/metrics").text
    assert client.get("/metrics").content_type.startswith("text/plain")

    headers = {"Idempotency-Key": "k-1"}
    assert client.post("/streams/m/events", json=[{"data": 1}, {"data": 2}], headers=headers).status_code == 201
    assert client.post("/streams/m/events", json=[{"data": 1}, {"data": 2}], headers=headers).status_code == 201
    assert client.post("/streams/m/events", json={"data": 3}, headers=headers).status_code == 422
    after = client.get("/metrics").text

    def grew(outcome: str) -> float:
        name = "eventlog_published_events_total"
        return value(after, name, outcome=outcome) - value(before, name, outcome=outcome)

    assert (grew("stored"), grew("idempotent_replay"), grew("refused")) == (2, 2, 1)
    count = "eventlog_publish_duration_seconds_count"
    assert value(after, count) - value(before, count) == 3
    # Defined before anything happened: the retention branch's counter, both reset reasons.
    assert ("eventlog_pruned_events_total", ()) in scrape(after)
    assert ("eventlog_resets_total", (("reason", "pruned"),)) in scrape(after)


@pytest.mark.settings(EVENTLOG_METRICS="off")
def test_metrics_can_be_turned_off(client: FlaskClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"


def test_events_the_hub_found_by_polling_are_counted_apart(
    app: Flask, eventlog: EventLog, client: FlaskClient
) -> None:
    """An event written without an announcement reaches the hub only by its poll: counted.
    An announced one is not."""
    eventlog.hub.start()
    polled = lambda: value(client.get("/metrics").text, "eventlog_polled_events_total")  # noqa: E731
    start = polled()
    eventlog.publish("p", 1)
    wait_until(lambda: eventlog.hub.cursor >= 1)
    engine: Engine = eventlog.engine
    with engine.begin() as conn:  # stored in our own transaction and never announced
        append_all(conn, [Publish([NewEvent("p", "message", "2"), NewEvent("p", "message", "3")])])
    wait_until(lambda: eventlog.hub.cursor >= 3)
    assert polled() - start == 2


# --- across the workers of eventlog serve ----------------------------------------------------------


def test_metrics_sum_over_workers_and_forget_a_killed_one(
    postgres_url: str, redis_url: str, redis_channel: str, start_server: StartServer
) -> None:
    """With two workers, /metrics (whichever worker answers) counts every publish of both,
    and the live subscriber gauge follows streams as they open and close on both. A worker
    killed by SIGKILL (no cleanup of its own) leaves the gauge when gunicorn reaps it."""
    server = start_server(postgres_url, redis_url, args=["--workers", "2"], REDIS_CHANNEL=redis_channel,
        HEARTBEAT_SECONDS=0.2,  # a closed stream ends at the next tick
    )
    # Until both listen, the kernel hands every connection to the first.
    wait_until(lambda: len(subscribers_by_worker(server.url, workers=2)) == 2)
    # Fresh connections, so both workers answer publishes and scrapes.
    for n in range(20):
        publish(server.url, "orders", {"n": n})
    assert server_value(server, "eventlog_published_events_total", outcome="stored") == 20

    listeners = [Listener(f"{server.url}/streams/orders/events") for _ in range(12)]
    try:
        for listener in listeners:
            assert listener.connected.wait(10)
        shares = subscribers_by_worker(server.url, workers=2)
        assert len(shares) == 2 and all(shares.values()), shares  # both workers hold streams
        assert server_value(server, "eventlog_live_subscribers") == 12

        last = publish(server.url, "orders", "live")["id"]
        wait_until(lambda: all(last in listener.ids() for listener in listeners))
        assert server_value(server, "eventlog_delivered_events_total") == 12
        assert server_value(server, "eventlog_delivery_lag_seconds_count") == 12  # each first batch

        victim, lost = next(iter(shares.items()))
        os.kill(victim, signal.SIGKILL)
        # The survivor's streams only; without mark_process_dead the dead one's would stay.
        wait_until(lambda: server_value(server, "eventlog_live_subscribers") == 12 - lost)
        wait_until(lambda: len(subscribers_by_worker(server.url, workers=2)) == 2)  # restarted
        assert victim not in subscribers_by_worker(server.url, workers=2)
    finally:
        for listener in listeners:
            listener.close()
    wait_until(lambda: server_value(server, "eventlog_live_subscribers") == 0)
    # Counters of the killed worker stay in the sums: they are history, not state.
    assert server_value(server, "eventlog_published_events_total", outcome="stored") == 21


def test_notifier_gauge_follows_the_redis_subscription(
    postgres_url: str, redis_server: RedisServer, start_server: StartServer
) -> None:
    """A worker subscribes when its first stream starts its hub; Redis down takes it to 0."""
    server = start_server(postgres_url, redis_server.url, args=["--workers", "2"], HEARTBEAT_SECONDS=0.5)
    assert server_value(server, "eventlog_notifier_connected") == 0  # no stream yet, no hub
    listener = Listener(f"{server.url}/streams/orders/events")
    assert listener.connected.wait(10)
    wait_until(lambda: server_value(server, "eventlog_notifier_connected") == 1)
    redis_server.stop()
    wait_until(lambda: server_value(server, "eventlog_notifier_connected") == 0)
    redis_server.start()
    wait_until(lambda: server_value(server, "eventlog_notifier_connected") == 1, timeout=20)
    listener.close()
