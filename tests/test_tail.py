"""``eventlog tail`` and ``--url``: a subprocess that follows a server across its restart,
prints every event once, and exits 0 on Ctrl-C; publish, query and export through a server."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from client_support import TIMEOUT
from conftest import EVENTLOG_BIN, Server
from helpers import wait_until

from eventlog.client import Client

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def server(start_server: Callable[..., Server], postgres_url: str, redis_url: str, redis_channel: str) -> Server:
    return start_server(postgres_url, redis_url, REDIS_CHANNEL=redis_channel, RETRY_MS=100)


@pytest.fixture(autouse=True)
def no_tail_outlives_its_test() -> Iterator[None]:
    yield
    while Tail.running:
        tail = Tail.running.pop()
        if tail.process.poll() is None:  # a test that failed before its Ctrl-C
            tail.process.kill()
            tail.close()


class Tail:
    """``eventlog tail ...`` in a subprocess, its output lines collected as they come."""

    running: list[Tail] = []

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [str(EVENTLOG_BIN), "tail", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # Ctrl-C as at a terminal, even when the suite itself runs in the background
            # (where a shell starts it with SIGINT ignored, and its children inherit that).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        Tail.running.append(self)
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))

    def lines(self, count: int) -> list[str]:
        return [self._lines.get(timeout=TIMEOUT) for _ in range(count)]

    def interrupt(self) -> tuple[int, list[str], str]:
        """Ctrl-C: the exit status, the lines not yet taken, and stderr."""
        self.process.send_signal(signal.SIGINT)
        status, errors = self.close()
        rest = []
        while not self._lines.empty():
            rest.append(self._lines.get())
        return status, rest, errors

    def close(self) -> tuple[int, str]:
        """Wait for the process to end; its exit status and stderr."""
        status = self.process.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        assert self.process.stdout is not None and self.process.stderr is not None
        errors = self.process.stderr.read()
        self.process.stdout.close()
        self.process.stderr.close()
        return status, errors


def ids(lines: list[str]) -> list[int]:
    return [json.loads(line)["id"] for line in lines]


@pytest.fixture
def publisher(server: Server) -> Iterator[Client]:
    with Client(server.url) as client:
        yield client


def test_tail_follows_a_restart_and_exits_zero_on_ctrl_c(server: Server, publisher: Client) -> None:
    publisher.publish_batch("orders", [{"data": i} for i in range(3)])
    tail = Tail("orders", "--url", server.url, "--from-start")
    first = tail.lines(3)
    server.kill()
    time.sleep(0.5)
    server.start()
    publisher.publish_batch("orders", [{"data": i} for i in range(3, 6)])
    publisher.publish("other", "not followed")
    second = tail.lines(3)
    time.sleep(0.5)  # time for a duplicate to show, if there were one
    status, rest, errors = tail.interrupt()
    assert status == 0, errors
    assert rest == []
    assert ids(first + second) == [1, 2, 3, 4, 5, 6]
    assert [json.loads(line)["data"] for line in first + second] == list(range(6))


def test_tail_start_points_types_formats_and_position_file(
    server: Server, publisher: Client, tmp_path: Path
) -> None:
    publisher.publish_batch("orders", [{"data": i, "type": "paid" if i % 2 else "created"} for i in range(6)])
    position = tmp_path / "position"
    tail = Tail("orders", "--url", server.url, "--last", "2", "--type", "paid", "--position-file", str(position))
    assert [json.loads(line)["data"] for line in tail.lines(2)] == [3, 5]
    # Kept after the line is printed (at least once): wait for it before the Ctrl-C.
    wait_until(lambda: position.read_text().strip() == "6")
    assert tail.interrupt()[0] == 0
    publisher.publish("orders", 6, type="paid")
    tail = Tail("orders", "--url", server.url, "--from-start", "--position-file", str(position), "--format", "pretty")
    (line,) = tail.lines(1)
    assert " orders #7 paid 6" in line and "\x1b[" not in line  # no colours off a terminal
    assert tail.interrupt()[0] == 0


def test_publish_query_and_export_through_a_server(server: Server, tmp_path: Path) -> None:
    def run(*args: str) -> Any:
        env = {"EVENTLOG_URL": server.url, "EVENTLOG_DATABASE_URL": f"sqlite:///{tmp_path / 'absent.db'}"}
        return subprocess.run([str(EVENTLOG_BIN), *args], capture_output=True, text=True, env=env, timeout=TIMEOUT)

    published = run("publish", "orders", '{"n": 1}', "--type", "paid")
    assert published.returncode == 0, published.stderr
    assert json.loads(published.stdout)["data"] == {"n": 1}
    run("publish", "orders", "2")
    assert ids(run("query", "--stream", "orders", "--order", "desc").stdout.splitlines()) == [2, 1]
    assert ids(run("export", "--type", "paid", "--limit", "5").stdout.splitlines()) == [1]
    refused = run("publish", "bad name!", "1")
    assert refused.returncode == 1 and "stream name" in refused.stderr
    assert not (tmp_path / "absent.db").exists()  # no database was touched
