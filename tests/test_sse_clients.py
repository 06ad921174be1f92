"""Popular SSE clients read our streams without seeing events we never sent.

fetch-event-source and httpx-sse dispatch an event at every blank line, with or without
data: a blank line after ``retry:`` or a heartbeat reached the application as an event
with empty data, and ``JSON.parse("")`` threw.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest
from conftest import Server, server_env, sqlite_database
from helpers import free_port, publish
from httpx_sse import connect_sse

SSE = {"Accept": "text/event-stream"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    url = sqlite_database(tmp_path_factory.mktemp("clients"))
    server = Server(free_port(), server_env(url, HEARTBEAT_SECONDS=0.2, POLL_SECONDS=0.2), [])
    try:
        server.start()
        yield server
    finally:
        server.stop()


def naive_events(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """Dispatch at every blank line, as those clients do: whatever fields came before it."""
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            yield fields
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = fields.get(name, "") + value.removeprefix(" ")


def test_every_dispatch_of_a_naive_client_is_one_of_our_events(server: Server) -> None:
    """Through the open, heartbeats (every 0.2 s) and events, each dispatch has JSON data."""
    received: list[dict[str, str]] = []
    with httpx.Client(timeout=10) as client, client.stream(
        "GET", f"{server.url}/streams/naive/events", headers=SSE
    ) as response:
        heartbeats = threading.Timer(0.7, lambda: [publish(server.url, "naive", i) for i in range(3)])
        heartbeats.start()  # first some heartbeats, then the events
        for event in naive_events(response.iter_lines()):
            received.append(event)
            if len(received) == 3:
                break
        heartbeats.join()
    assert [json.loads(event["data"]) for event in received] == [0, 1, 2]
    assert received[0]["retry"] == "2000"  # the field came with the first event, as it should


def test_httpx_sse_json_never_raises(server: Server) -> None:
    publish(server.url, "lib", {"first": True})
    with httpx.Client(timeout=10) as client, connect_sse(
        client, "GET", f"{server.url}/streams/lib/events", headers={"Last-Event-ID": "0"}
    ) as source:
        assert source.response.headers["content-type"] == "text/event-stream"
        threading.Timer(0.7, lambda: publish(server.url, "lib", {"second": True})).start()
        values = []
        for sse in source.iter_sse():
            values.append(sse.json())  # raises on empty data
            if len(values) == 2:
                break
    assert values == [{"first": True}, {"second": True}]
