"""A worker's memory stays bounded in bytes while slow readers fall behind a batch of large
events, and the readers still get every event exactly once when they catch up.

Before the byte bounds, one 63 MB batch of 60 events of 1 MiB with 20 slow readers took a
worker from 195 MB to 2,690 MB: each reader's buffer, replay page and write held its own copy.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from conftest import Server
from helpers import wait_until

MIB = 1024 * 1024
READERS = 20
EVENTS = 60
DATA_CHARS = MIB - 64  # a JSON string just under EVENTLOG_MAX_DATA_BYTES (1 MiB)
BUFFER_BYTES = 8 * MIB  # one reader's live buffer: 20 of them could hold 160 MiB...
LIVE_BYTES = 8 * MIB  # ...but all the worker's live buffers together hold at most this
PAGE_BYTES = 2 * MIB
REPLAY_BYTES = 16 * MIB  # the worker's ceiling for all replays together
ID_LINE = re.compile(rb"id: (\d+)\n")  # a literal start: re finds it fast (the data is x only)


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


PROBE = r"""
import json, socket, sys, threading, time

port = int(sys.argv[1])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
worst = {"healthz": 0.0, "stream opens": 0.0, "live event": 0.0}
slow = []
HEAD = b"Host: localhost\r\nConnection: close\r\n"


def request(raw, until):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw)
        seen = b""
        while until not in seen:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {seen[:80]!r}")
            seen += chunk


def timed(what, call):
    began = time.monotonic()
    call()
    took = time.monotonic() - began
    worst[what] = max(worst[what], took)
    if took > 0.1:
        slow.append((what, round(began - started, 2), round(took * 1000)))


def sse(stream):
    return b"GET /streams/%s/events HTTP/1.1\r\n%sAccept: text/event-stream\r\n\r\n" % (stream, HEAD)


def arrive(n):
    seen = b""
    while b"data: %d\n" % n not in seen:
        chunk = live.recv(4096)
        if not chunk:
            raise ConnectionError("the live stream ended")
        seen = seen[-64:] + chunk


live = socket.create_connection(("127.0.0.1", port), timeout=30)
live.sendall(sse(b"probe-live"))
live.recv(4096)  # its head and retry: subscribed
started = time.monotonic()
print("ready", flush=True)
n = 0
while not stop.wait(0.05):
    n += 1
    timed("healthz", lambda: request(b"GET /healthz HTTP/1.1\r\n%s\r\n" % HEAD, b"}"))
    timed("stream opens", lambda: request(sse(b"probe"), b"retry:"))
    if n % 5 == 0:  # now and then a small event, which the database stores at once
        body = b'{"data": %d}' % n
        request(b"POST /streams/probe-live/events HTTP/1.1\r\n%sContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (HEAD, len(body), body), b"}")
        timed("live event", lambda: arrive(n))
print(json.dumps({"worst": worst, "slow": slow[:20]}), flush=True)
"""


class Prober:
    """A process of its own (the readers' parsing here would delay its timing) that asks the
    worker every 50 ms for /healthz and for a new live stream's first bytes, and now and then
    times an event from its 201 to its arrival on a live stream; it reports the slowest of each."""

    def __init__(self, port: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", PROBE, str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == "ready\n"

    def finish(self) -> dict[str, Any]:
        out, _ = self.process.communicate("", timeout=60)
        assert self.process.returncode == 0, "the prober failed"
        report: dict[str, Any] = json.loads(out)
        return report


def test_slow_readers_cost_bounded_memory_and_lose_nothing(
    postgres_url: str, start_server: Callable[..., Server]
) -> None:
    server = start_server(
        postgres_url,
        MAX_REQUEST_BYTES=128 * MIB,
        SUBSCRIBER_BUFFER_BYTES=BUFFER_BYTES,
        LIVE_BYTES=LIVE_BYTES,
        PAGE_BYTES=PAGE_BYTES,
        REPLAY_BYTES=REPLAY_BYTES,
        # This test is about memory and liveness: the batch's statement may take long on a
        # busy machine (what limits allow within the timeouts is tests/test_timeouts.py's).
        STATEMENT_TIMEOUT_SECONDS=120,
        REPLY_TIMEOUT_SECONDS=121,
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
    prober = Prober(server.port)  # from here on the readers drain: the worker must keep serving the others
    time.sleep(8)  # the hub fans out; every reader overflows and pages its replay, stuck writing
    peak = kib(pid, "VmHWM") * 1024
    drain_base = kib(pid, "VmRSS") * 1024
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM restarts from VmRSS: the drain's own peak
    hurry.set()
    for reader in readers:
        reader.join(120)
    drain_peak = kib(pid, "VmHWM") * 1024
    probed = prober.finish()
    print(f"drain: RSS {drain_base / MIB:.0f} MB, peak {drain_peak / MIB:.0f} MB")

    # Publishing holds the body a few times over (bytes, parsed, encoded, the SQL parameter);
    # all live buffers together at most LIVE_BYTES, and all replays together REPLAY_BYTES:
    # the worker's ceilings, not one per reader.
    bound = base + 5 * len(body) + LIVE_BYTES + REPLAY_BYTES + 64 * MIB
    print(f"worker RSS {base / MIB:.0f} MB before, peak {peak / MIB:.0f} MB; bound {bound / MIB:.0f} MB")
    print("slowest answers while the readers drained:", {k: f"{v * 1000:.0f} ms" for k, v in probed["worst"].items()})
    print("answers over 100 ms (what, seconds into the drain, ms):", probed["slow"])
    assert peak < bound
    # No reader's catch-up holds the worker: it answers others as if the readers were not
    # there. (An event published to another stream right after the batch still waits for the
    # hub to read past the batch, which it reads in order: that one is printed, not bound.)
    assert probed["worst"]["healthz"] < 0.1
    assert probed["worst"]["stream opens"] < 0.1
    for reader in readers:
        assert reader.error is None
        assert reader.ids == list(range(1, EVENTS + 1))
