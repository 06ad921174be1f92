"""A database out of space: a publish gets a 507 naming the cause, nothing is half stored,
/readyz says so, and everything recovers by itself once space is freed.

The log is a SQLite file on a tmpfs of a few MiB that the test mounts (root only): the disk
really fills, and SQLite answers as it does on any full disk (SQLITE_FULL). A filler file
on the same tmpfs is the space an operator frees.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Server, sqlite_database, unavailable

StartServer = Callable[..., Server]
BATCH = 4  # events per batch, each marked with its batch
EVENT_BYTES = 64 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of the test's own, unmounted at the end."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        unavailable(f"cannot mount a tmpfs here (root only): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def batch(number: int, rng: random.Random) -> list[dict[str, Any]]:
    # Random hex: incompressible, so every event takes its size on disk.
    return [
        {"type": f"b{number}", "data": f"{rng.getrandbits(EVENT_BYTES * 4):x}"} for _ in range(BATCH)
    ]


def all_events(client: httpx.Client) -> list[dict[str, Any]]:
    page = client.get("/events?limit=1000").json()
    events = list(page["events"])
    while page["next"]:
        page = client.get(page["next"]).json()
        events += page["events"]
    return events


def test_a_full_disk_is_a_507_and_readyz_says_so_until_space_is_freed(
    small_disk: Path, start_server: StartServer
) -> None:
    url = sqlite_database(small_disk)
    filler = small_disk / "filler"
    filler.write_bytes(os.urandom(1024 * 1024))  # the space freed later
    server = start_server(url)
    rng = random.Random(20)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/readyz").json()["status"] == "ready"
        answers = []
        for number in range(100):  # 4 MiB fill up long before
            response = client.post("/streams/s/events", json=batch(number, rng))
            answers.append(response.status_code)
            if response.status_code != 201:
                break
        refused = number
        assert answers[:-1] == [201] * refused and refused > 0, answers
        assert response.status_code == 507, response.text
        assert response.headers["Content-Type"] == "application/problem+json"
        problem = response.json()
        assert problem["type"].endswith(":out-of-space")
        assert problem["detail"] == "the database is out of space; nothing was stored"
        assert "Retry-After" not in response.headers

        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"status": "unavailable", "database": "out of space"}
        assert client.get("/healthz").status_code == 200  # the process itself is fine

        # All or nothing: every stored batch is whole, the refused one left no event, and
        # the ids have no gap.
        events = all_events(client)
        assert [e["id"] for e in events] == list(range(1, len(events) + 1))
        assert [e["type"] for e in events] == [f"b{n}" for n in range(refused) for _ in range(BATCH)]

        # Space comes back: the next publish stores, and readiness follows by itself.
        filler.unlink()
        response = client.post("/streams/s/events", json=batch(refused, rng))
        assert response.status_code == 201, response.text
        assert client.get("/readyz").json() == {"status": "ready", "database": "ok"}
        events = all_events(client)
        assert [e["type"] for e in events[-BATCH:]] == [f"b{refused}"] * BATCH
        assert [e["id"] for e in events] == list(range(1, len(events) + 1))
