"""Exactly-once effects: a consumer that keeps its position in its own database, committed
with its work, killed -9 at random moments many times, has done each event's work once."""

from __future__ import annotations

import random
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from client_support import TIMEOUT
from conftest import Server
from sqlalchemy import create_engine, text

from eventlog.client import Client, PositionConflict
from eventlog.client.positions import Positions

HERE = Path(__file__).resolve().parent
EVENTS = 1000  # about 10 s of work: the consumer is busy at most of its kills


@pytest.mark.postgres
@pytest.mark.redis
def test_a_consumer_killed_at_random_points_does_each_event_once(
    start_server: Callable[..., Server], postgres_url: str, redis_url: str, redis_channel: str,
    tmp_path: Path,
) -> None:
    server = start_server(postgres_url, redis_url, REDIS_CHANNEL=redis_channel, RETRY_MS=100)
    database = f"sqlite:///{tmp_path / 'consumer.db'}"

    def command(last_id: int = 2**62) -> list[str]:
        return [sys.executable, str(HERE / "client_consumer.py"), server.url, database, str(last_id)]

    def publish() -> None:
        with Client(server.url) as client:
            for start in range(0, EVENTS, 50):
                client.publish_batch("orders", [{"data": i} for i in range(start, start + 50)])
                client.publish("other", "not for the consumer")
                time.sleep(0.05)

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    rng = random.Random()
    kills = 0
    for _ in range(25):
        consumer = subprocess.Popen(command(), stdout=subprocess.PIPE)
        assert consumer.stdout is not None
        # Once it works (or after 5 s, when it has nothing left to do), at a random moment.
        select.select([consumer.stdout], [], [], 5)
        time.sleep(rng.uniform(0, 0.3))
        consumer.kill()
        consumer.wait()
        consumer.stdout.close()
        kills += 1
    publisher.join(TIMEOUT)
    with Client(server.url) as client:
        orders = [e.id for e in client.query("orders")]
    assert len(orders) == EVENTS
    assert subprocess.run(command(orders[-1]), stdout=subprocess.DEVNULL, timeout=TIMEOUT).returncode == 0
    engine = create_engine(database)
    with engine.connect() as conn:
        done = conn.execute(text("SELECT event_id FROM effects ORDER BY event_id")).scalars().all()
    assert done == orders, f"after {kills} kills: {len(done) - len(set(done))} repeated, {len(set(orders) - set(done))} missed"
    assert Positions().get(engine, "worker") == orders[-1]


def test_a_position_never_goes_back_or_stays(tmp_path: Path) -> None:
    """Two runs of one consumer that overlap cannot both commit an event's work."""
    engine = create_engine(f"sqlite:///{tmp_path / 'positions.db'}")
    positions = Positions()
    positions.create(engine)
    positions.create(engine)  # idempotent
    assert positions.get(engine, "a") == 0 and positions.get(engine, "a", None) is None
    with engine.begin() as conn:
        positions.advance(conn, "a", 5)
        positions.advance(conn, "b", 2)
    for stale in (5, 3):
        with pytest.raises(PositionConflict), engine.begin() as conn:
            positions.advance(conn, "a", stale)
    assert (positions.get(engine, "a"), positions.get(engine, "b")) == (5, 2)
