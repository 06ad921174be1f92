"""Retention in a cluster: two ``eventlog serve`` processes (two workers each) over one
PostgreSQL and one Redis, pruning in the background while events are published and streamed.

Every worker runs a pruner; the advisory lock lets one of them prune at a time.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from conftest import EVENTLOG_BIN, Server, server_env
from helpers import Listener, wait_until
from sqlalchemy import Connection, Engine, func, select, text

from eventlog.engines.postgresql import LOCK_KEY

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

StartServer = Callable[..., Server]
KEEP = 50
LIVE_EVENTS = 200
SETTINGS: dict[str, Any] = {
    "RETAIN_EVENTS": KEEP, "PRUNE_SECONDS": 0.2, "POLL_SECONDS": 0.5, "HEARTBEAT_SECONDS": 0.5,
}


def post(base: str, stream: str, body: Any) -> list[int]:
    response = httpx.post(f"{base}/streams/{stream}/events", json=body, timeout=10)
    assert response.status_code == 201, response.text
    result = response.json()
    return [e["id"] for e in result["events"]] if isinstance(body, list) else [result["id"]]


def kept(base: str, *streams: str) -> list[int]:
    query = "&".join(f"stream={s}" for s in streams)
    response = httpx.get(f"{base}/events?{query}&limit=1000", timeout=10)
    assert response.status_code == 200 and response.json()["next"] is None
    return [e["id"] for e in response.json()["events"]]


def resets(listener: Listener) -> list[dict[str, Any]]:
    return [json.loads(m.data) for m in list(listener.messages) if m.event == "reset"]


def test_subscribers_get_one_honest_reset_and_every_kept_event_while_pruning_runs(
    start_server: StartServer, postgres_url: str, redis_url: str, redis_channel: str
) -> None:
    servers = [
        start_server(postgres_url, redis_url, args=["--workers", "2"], REDIS_CHANNEL=redis_channel, **SETTINGS)
        for _ in range(2)
    ]
    a, b = (s.url for s in servers)
    # busy: 100 events, then 200 more with quiet's 20 among them; quiet keeps all of its own,
    # busy only its newest 50. The oldest id kept over all streams is quiet's.
    busy = post(a, "busy", [{"data": i} for i in range(100)])
    quiet: list[int] = []
    for i in range(20):
        busy += post(b, "busy", [{"data": i} for i in range(10)])
        quiet += post(a, "quiet", {"data": i})
    wait_until(lambda: kept(a, "busy") == busy[-KEEP:], timeout=30)
    bound = max(set(busy) - set(busy[-KEEP:]))
    assert kept(b, "quiet") == quiet and quiet[0] < busy[-KEEP]

    live = [Listener(f"{url}/streams/live/events") for url in (a, b)]
    head = max(busy[-1], quiet[-1])
    everything = Listener(f"{b}/events", last_event_id=head)  # covered: no reset
    resuming = {
        "busy from 0": Listener(f"{a}/streams/busy/events", last_event_id=0),
        "busy below the bound": Listener(f"{b}/streams/busy/events", last_event_id=bound - 1),
        "busy at the bound": Listener(f"{a}/streams/busy/events", last_event_id=bound),
        "quiet from 0": Listener(f"{b}/streams/quiet/events", last_event_id=0),
        "both from 0": Listener(f"{a}/events?stream=busy&stream=quiet", last_event_id=0),
    }
    for listener in [*live, everything, *resuming.values()]:
        assert listener.connected.wait(10)

    # Meanwhile "live" gets 200 events through both servers, and is pruned as it goes.
    published: list[int] = []
    with httpx.Client(timeout=10) as client:
        for n in range(LIVE_EVENTS):
            response = client.post(f"{(a, b)[n % 2]}/streams/live/events", json={"data": n})
            assert response.status_code == 201, response.text
            published.append(response.json()["id"])
    wait_until(lambda: all(listener.ids()[-1:] == published[-1:] for listener in [*live, everything]), timeout=20)
    wait_until(lambda: kept(a, "live") == published[-KEEP:], timeout=20)

    for listener in live:  # live from the head: everything published after, no reset
        assert listener.ids() == published and resets(listener) == []
    assert everything.ids() == published and resets(everything) == []

    expected = {
        "busy from 0": ({"requested": 0, "oldest": busy[-KEEP], "head": head}, busy[-KEEP:]),
        "busy below the bound": ({"requested": bound - 1, "oldest": busy[-KEEP], "head": head}, busy[-KEEP:]),
        "busy at the bound": (None, busy[-KEEP:]),
        "quiet from 0": (None, quiet),
        "both from 0": ({"requested": 0, "oldest": quiet[0], "head": head}, sorted(busy[-KEEP:] + quiet)),
    }
    for name, listener in resuming.items():
        reset, ids = expected[name]
        got = resets(listener)
        # The head is whatever it was when the stream began; everything else is fixed.
        assert [{**r, "head": head} for r in got] == ([] if reset is None else [reset]), name
        if reset is not None:
            assert listener.messages[0].event == "reset" and got[0]["head"] >= head, name
        assert listener.ids() == ids, name
    for listener in [*live, everything, *resuming.values()]:
        listener.close()


def advisory_holders(conn: Connection) -> int:
    """How many sessions of this database hold the pruning lock."""
    return int(
        conn.execute(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND classid = :high AND objid = :low AND objsubid = 1"
            ),
            {"high": LOCK_KEY >> 32, "low": LOCK_KEY & 0xFFFFFFFF},
        ).scalar_one()
    )


def test_one_process_prunes_at_a_time(
    start_server: StartServer, postgres_url: str, postgres_engine: Engine, redis_url: str, redis_channel: str
) -> None:
    """While another session holds the pruning lock, no server prunes and ``eventlog prune``
    refuses; once it is released one of them prunes, and the lock is held only while it does."""
    holder = postgres_engine.connect()
    assert holder.execute(select(func.pg_try_advisory_lock(LOCK_KEY))).scalar_one() is True
    holder.commit()
    servers = [
        start_server(postgres_url, redis_url, args=["--workers", "2"], REDIS_CHANNEL=redis_channel, **{**SETTINGS, "RETAIN_EVENTS": 5})
        for _ in range(2)
    ]
    post(servers[0].url, "s", [{"data": i} for i in range(40)])
    time.sleep(2)  # ten pruning rounds of each of the four workers
    assert len(kept(servers[1].url, "s")) == 40
    env = server_env(postgres_url, redis_url, RETAIN_EVENTS=5)
    refused = subprocess.run([str(EVENTLOG_BIN), "prune"], env=env, capture_output=True, text=True)
    assert refused.returncode == 1 and "another process is pruning" in refused.stderr
    with postgres_engine.connect() as conn:
        assert advisory_holders(conn) == 1

    holder.execute(select(func.pg_advisory_unlock(LOCK_KEY)))
    holder.close()
    wait_until(lambda: len(kept(servers[1].url, "s")) == 5)
    samples = []
    with postgres_engine.connect() as conn:
        for _ in range(40):
            samples.append(advisory_holders(conn))
            conn.rollback()
            time.sleep(0.02)
    assert max(samples) <= 1 and 0 in samples, samples

    done = subprocess.run([str(EVENTLOG_BIN), "prune", "--dry-run"], env=env, capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "0 events would be pruned\n")
