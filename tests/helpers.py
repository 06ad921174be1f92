"""Small clients the tests share: publish over HTTP and read an SSE stream."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from eventlog.sse import Decoder, Message


def publish(base_url: str, stream: str, data: Any, *, type: str | None = None) -> dict[str, Any]:
    """POST one event and return the stored event."""
    body: dict[str, Any] = {"data": data}
    if type is not None:
        body["type"] = type
    response = httpx.post(f"{base_url}/streams/{stream}/events", json=body, timeout=10)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def sse_messages(response: httpx.Response, on_first_bytes: threading.Event | None = None) -> Iterator[Message]:
    """The SSE messages of a streaming response, decoded as a browser would.

    ``on_first_bytes`` is set when the first bytes arrive: the server sends them only after
    it has registered the subscriber, so from then on no event can be missed.
    """
    decoder = Decoder()
    for chunk in response.iter_raw():
        if on_first_bytes is not None:
            on_first_bytes.set()
        yield from decoder.feed(chunk)


class Listener:
    """Reads an SSE URL in a background thread, collecting messages until closed."""

    def __init__(self, url: str, *, last_event_id: int | None = None) -> None:
        self.url = url
        self.messages: list[Message] = []
        self.connected = threading.Event()
        self._headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            self._headers["Last-Event-ID"] = str(last_event_id)
        self._client = httpx.Client(timeout=httpx.Timeout(10, read=60))
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def ids(self) -> list[int]:
        return [int(m.id) for m in list(self.messages) if m.event != "reset"]

    def _run(self) -> None:
        try:
            with self._client.stream("GET", self.url, headers=self._headers) as response:
                decoder = Decoder()
                for chunk in response.iter_raw():
                    self.connected.set()
                    if self._closing.is_set():
                        break  # at the next bytes (a heartbeat at the latest): hang up
                    self.messages.extend(decoder.feed(chunk))
        except (httpx.HTTPError, RuntimeError):
            pass  # closed by the test
        finally:
            self.connected.set()

    def close(self) -> None:
        self._closing.set()
        self._client.close()
        self._thread.join(timeout=5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], object], timeout: float = 15.0, interval: float = 0.05) -> None:
    """Retry ``check`` until it returns truthy without raising; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def subscribers_by_worker(base: str, workers: int) -> dict[int, int]:
    """Each worker's ``/healthz`` subscriber count, by pid, asked on fresh connections."""
    shares: dict[int, int] = {}
    for _ in range(64):
        with httpx.Client(timeout=5) as client:  # a new connection, so any worker may answer
            health = client.get(f"{base}/healthz").json()
        shares[health["pid"]] = health["subscribers"]
        if len(shares) == workers:
            break
    return shares
