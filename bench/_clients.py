"""Load-client building blocks, used inside the bench's client processes.

- ``Publisher``: keep-alive HTTP/1.1 POSTs over a raw socket.
- ``SseConnection``: an asyncio protocol speaking raw HTTP/1.1 to an SSE endpoint: it sends
  the GET, parses the status line and headers, undoes chunked transfer coding and cuts the
  body into SSE frames. Cheap enough that a few processes hold ten thousand connections.
- ``FrameParser``: a fast SSE frame splitter for the LF-only streams the servers write
  (``eventlog.sse.Decoder`` is the exact, browser-like reader; the reconnect bench uses it).
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from collections.abc import Sequence
from typing import Any

# --- publishing -----------------------------------------------------------------------------

class Publisher:
    """POSTs over one keep-alive HTTP/1.1 connection on a raw socket; reconnects after an error.

    Hand-rolled instead of ``http.client``: in the publish bench a client process spent 251 us
    of CPU per request with ``http.client`` and 97 us with this, and on a 2-core machine the
    load clients' CPU is CPU the server under test lacks. It reads exactly what the servers
    send: a status line, headers, a Content-Length body.
    """

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._buffer = b""

    def connect(self) -> None:
        """Open the connection now (``post`` opens it on demand otherwise)."""
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """Status and body; status 0 for a connection-level failure."""
        try:
            if self.sock is None:
                self.connect()
            assert self.sock is not None
            self.sock.sendall(
                b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.port, len(body), body)
            )
            status, length, close = self._read_head()
            data = self._read_exactly(length)
            if close:
                self.close()
            return status, data
        except (OSError, ValueError):
            self.close()
            return 0, b""

    def _read_head(self) -> tuple[int, int, bool]:
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            self._fill()
        head, self._buffer = self._buffer[:end], self._buffer[end + 4:]
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        if b"content-length" not in fields:
            raise ValueError("response without Content-Length")
        return status, int(fields[b"content-length"]), fields.get(b"connection", b"").lower() == b"close"

    def _read_exactly(self, length: int) -> bytes:
        while len(self._buffer) < length:
            self._fill()
        data, self._buffer = self._buffer[:length], self._buffer[length:]
        return data

    def _fill(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self._buffer += chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._buffer = b""


Ok = int | frozenset[int]
"""The status (or statuses) a server answers a successful publish with: eventlog 201, Flask-SSE
200, Nchan 201 when the message reached a subscriber and 202 when it was only stored."""


def accepted(status: int, ok: Ok) -> bool:
    """Whether ``status`` is one a successful publish of this server answers with."""
    return status == ok if isinstance(ok, int) else status in ok


def event_order(event_id: str | bytes) -> tuple[int, ...] | None:
    """An SSE event id as something ordered: eventlog's ``17`` as (17,), Nchan's
    ``<seconds>:<n>`` as (seconds, n); None for an id of neither shape (or none)."""
    text = event_id.decode() if isinstance(event_id, bytes) else event_id
    parts = text.split(":")
    return tuple(int(p) for p in parts) if text and len(parts) <= 2 and all(p.isdigit() for p in parts) else None


def event_body(type_: str, data: Any) -> bytes:
    return json.dumps({"type": type_, "data": data}, separators=(",", ":")).encode()


# --- reading SSE over raw HTTP/1.1 ---------------------------------------------------------------

def sse_request(path: str, port: int, last_event_id: str | None = None) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Accept: text/event-stream",
        "Cache-Control: no-cache",
    ]
    if last_event_id:
        lines.append(f"Last-Event-ID: {last_event_id}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class ChunkedDecoder:
    """Incremental decoding of ``Transfer-Encoding: chunked``."""

    def __init__(self) -> None:
        self._buf = b""
        self._remaining = 0  # bytes left in the current chunk's data
        self._need_crlf = False  # the CRLF after a chunk's data
        self.done = False

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""  # the trailer after the last chunk
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        pos, end = 0, len(buf)
        for _ in range(len(buf) + 1):  # each round consumes bytes or stops
            if self._remaining:
                take = min(self._remaining, end - pos)
                out.append(buf[pos:pos + take])
                pos += take
                self._remaining -= take
                if self._remaining:
                    break
                self._need_crlf = True
            if self._need_crlf:
                if end - pos < 2:
                    break
                pos += 2
                self._need_crlf = False
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                break
            size = int(buf[pos:nl].split(b";", 1)[0], 16)
            pos = nl + 2
            if size == 0:
                self.done = True
                pos = end
                break
            self._remaining = size
        self._buf = buf[pos:]
        return b"".join(out)


class FrameParser:
    """SSE frames from LF-terminated lines: a list of (last id, event type, data) per feed.

    Frames without data (comments, ``retry:``) are not returned, as in EventSource.
    """

    def __init__(self) -> None:
        self._buf = b""
        self.last_id: bytes = b""

    def feed(self, data: bytes) -> list[tuple[bytes, bytes, bytes]]:
        buf = self._buf + data if self._buf else data
        if b"\n\n" not in buf:
            self._buf = buf
            return []
        frames = buf.split(b"\n\n")
        self._buf = frames.pop()
        out = []
        for frame in frames:
            body: bytes | None = None
            event = b"message"
            for line in frame.split(b"\n"):
                if line.startswith(b"data:"):
                    value = line[6:] if line[5:6] == b" " else line[5:]
                    body = value if body is None else body + b"\n" + value
                elif line.startswith(b"id:"):
                    self.last_id = line[4:] if line[3:4] == b" " else line[3:]
                elif line.startswith(b"event:"):
                    event = line[7:] if line[6:7] == b" " else line[6:]
            if body is not None:
                out.append((self.last_id, event, body))
        return out


class SseConnection(asyncio.Protocol):
    """One SSE subscriber over raw HTTP/1.1. Subclass and override the ``on_*`` hooks."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.status: int | None = None
        self.first_bytes_at: float | None = None
        self.closed = False
        self.error: str | None = None
        self.attempts = 1
        self._head = b""
        self._chunked: ChunkedDecoder | None = None
        self.parser = FrameParser()

    # hooks
    def on_first_bytes(self) -> None: ...
    def on_frames(self, frames: list[tuple[bytes, bytes, bytes]], now: float) -> None: ...
    def on_body(self, data: bytes, now: float) -> None:
        frames = self.parser.feed(data)
        if frames:
            self.on_frames(frames, now)
    def on_close(self) -> None: ...

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self.status is None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > 65536:
                    self.fail("response head too long")
                return
            head, data = self._head[:end].decode("latin-1"), self._head[end + 4:]
            self._head = b""
            status_line, *header_lines = head.split("\r\n")
            try:
                self.status = int(status_line.split()[1])
            except (IndexError, ValueError):
                self.fail(f"bad status line {status_line[:60]!r}")
                return
            if self.status != 200:
                self.fail(f"HTTP {self.status}")
                return
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._chunked = ChunkedDecoder()
        if self._chunked is not None:
            data = self._chunked.feed(data)
        if data:
            if self.first_bytes_at is None:
                self.first_bytes_at = now
                self.on_first_bytes()
            self.on_body(data, now)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            if self.error is None:
                self.error = f"closed: {exc!r}" if exc else "closed by server"
            self.on_close()

    def fail(self, reason: str) -> None:
        self.error = reason
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once, as a flaky network would."""
        self.error = "aborted by client"
        if self.transport is not None:
            self.transport.abort()


async def connect(protocol: SseConnection, port: int, timeout: float = 10.0) -> bool:
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.create_connection(lambda: protocol, "127.0.0.1", port), timeout)
        return True
    except (TimeoutError, OSError) as error:
        protocol.error = f"connect: {type(error).__name__}: {error}"
        protocol.closed = True
        return False


async def open_many(
    factory: Any, count: int, port: int, rate: float, concurrency: int = 200, timeout: float = 10.0,
    retries: int = 0, retry_delay: float = 1.0,
) -> list[SseConnection]:
    """Open ``count`` connections at about ``rate`` per second, ``concurrency`` at a time.

    A connection that cannot be made (refused, timed out) is tried again up to ``retries``
    times, ``retry_delay`` apart, as EventSource does; ``attempts`` on each says how often.
    """
    gate = asyncio.Semaphore(concurrency)
    start = time.monotonic()
    protocols: list[SseConnection] = []

    async def one(i: int) -> None:
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        for attempt in range(retries + 1):
            async with gate:
                protocol = factory(i)
                protocol.attempts = attempt + 1
                if await connect(protocol, port, timeout):
                    break
            if attempt < retries:
                await asyncio.sleep(retry_delay)
        protocols.append(protocol)

    await asyncio.gather(*(one(i) for i in range(count)))
    return protocols


async def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return bool(predicate())


# --- statistics ---------------------------------------------------------------------------------

def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


# --- paced publishing (a process of its own) ----------------------------------------------------

def paced_publisher(port: int, path: str, type_: str, total: int, rate: float, threads: int,
                    ok_status: Ok, start_at: float, results: Any, tag: str = "published") -> None:
    """Publish events ``seq`` 0..total-1 at ``rate`` per second from ``threads`` keep-alive
    connections, each event's data ``{"seq": n, "t": <time.monotonic() when sent>}``.

    Reports ``(tag, 0, {"sent", "errors", "first", "last", "late_max", "request_p50",
    "request_p99"})`` on ``results``: the request times are the part of publish-to-delivery
    latency spent before the server has stored the event.
    """
    import threading

    errors = [0]
    late = [0.0]
    durations: list[float] = []
    lock = threading.Lock()

    def run(offset: int) -> None:
        publisher = Publisher(port)
        for seq in range(offset, total, threads):
            due = start_at + seq / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            now = time.monotonic()
            status, _ = publisher.post(path, event_body(type_, {"seq": seq, "t": now}))
            with lock:
                durations.append(time.monotonic() - now)
                late[0] = max(late[0], now - due)
                if not accepted(status, ok_status):
                    errors[0] += 1
        publisher.close()

    delay = start_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    first = time.monotonic()
    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    budget = total / rate + 120
    for worker in workers:
        worker.join(timeout=max(0.1, first + budget - time.monotonic()))
    durations.sort()
    results.put((tag, 0, {"sent": total - errors[0], "errors": errors[0], "first": first,
                       "last": time.monotonic(), "late_max": late[0],
                       "request_p50": percentile(durations, 50), "request_p99": percentile(durations, 99)}))
