"""A worker's memory stays bounded in bytes while slow readers fall behind a batch of large
events, and the readers still get every event exactly once when they catch up.

Before the byte bounds, one 63 MB batch of 60 events of 1 MiB with 20 slow readers took a
worker from 195 MB to 2,690 MB: each reader's buffer, replay page and write held its own copy.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from conftest import Server
from helpers import wait_until

MIB = 1024 * 1024
READERS = 20
EVENTS = 60
DATA_CHARS = MIB - 64  # a JSON string just under EVENTLOG_MAX_DATA_BYTES (1 MiB)
BUFFER_BYTES = 2 * MIB
PAGE_BYTES = 2 * MIB
ID_LINE = re.compile(rb"(?m)^id: (\d+)$")


def kib(pid: int, field: str) -> int:
    """A VmRSS/VmHWM line of /proc/<pid>/status, in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB$", status, re.M)
    assert match is not None
    return int(match.group(1))


class SlowReader(threading.Thread):
    """A live stream read over a raw socket, a few KB a second until ``hurry`` is set."""

    def __init__(self, port: int, hurry: threading.Event, last_id: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.sendall(
            "GET /streams/big/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        self.hurry = hurry
        self.last_id = last_id
        self.ids: list[int] = []
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            self._read()
        except OSError as error:
            self.error = error
        finally:
            self.sock.close()

    def _read(self) -> None:
        pending = bytearray()
        while not self.ids or self.ids[-1] < self.last_id:
            if self.hurry.is_set():
                chunk = self.sock.recv(4 * MIB)
            else:
                chunk = self.sock.recv(2048)
                time.sleep(0.5)
            if not chunk:
                return
            pending += chunk
            end = pending.rfind(b"\n\n")
            if end >= 0:  # whole frames: an id line heads each one (data is one line of x)
                frames = bytes(pending[:end])
                del pending[: end + 2]
                self.ids += [int(i) for i in ID_LINE.findall(frames)]


def test_slow_readers_cost_bounded_memory_and_lose_nothing(
    postgres_url: str, start_server: Callable[..., Server]
) -> None:
    server = start_server(
        postgres_url,
        MAX_REQUEST_BYTES=128 * MIB,
        SUBSCRIBER_BUFFER_BYTES=BUFFER_BYTES,
        PAGE_BYTES=PAGE_BYTES,
    )
    pid = httpx.get(f"{server.url}/healthz").json()["pid"]  # the worker, one by default
    body = ("[" + ",".join(f'{{"data":"{"x" * DATA_CHARS}"}}' for _ in range(EVENTS)) + "]").encode()
    hurry = threading.Event()
    readers = [SlowReader(server.port, hurry, EVENTS) for _ in range(READERS)]
    wait_until(lambda: httpx.get(f"{server.url}/healthz").json()["subscribers"] == READERS)
    for reader in readers:
        reader.start()
    base = kib(pid, "VmRSS") * 1024

    response = httpx.post(
        f"{server.url}/streams/big/events", content=body,
        headers={"Content-Type": "application/json"}, timeout=120,
    )
    assert response.status_code == 201, response.text[:200]
    time.sleep(8)  # the hub fans out; every reader overflows and pages its replay, stuck writing
    peak = kib(pid, "VmHWM") * 1024
    hurry.set()
    for reader in readers:
        reader.join(120)

    # Publishing holds the body a few times over (bytes, parsed, encoded, the SQL parameter);
    # each reader at most its buffer and one replay page, with its frames.
    bound = base + 5 * len(body) + READERS * (BUFFER_BYTES + 2 * PAGE_BYTES) + 64 * MIB
    print(f"worker RSS {base / MIB:.0f} MB before, peak {peak / MIB:.0f} MB; bound {bound / MIB:.0f} MB")
    assert peak < bound
    for reader in readers:
        assert reader.error is None
        assert reader.ids == list(range(1, EVENTS + 1))
