"""The client reads a stream exactly as ``sse.Decoder`` and Chromium's EventSource do: the
same bytes, written in awkward pieces (a CR LF split between two reads, a character split
between its bytes), give the same events to all three."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest
from browser_harness import WAIT_MS, browser  # noqa: F401 (a fixture)
from client_support import DRIVERS

from eventlog.sse import Decoder

if TYPE_CHECKING:
    from playwright.sync_api import Browser

TEXT = "a\u2028b\u0085c\x0cd\u2029e\x1cf\x1dg\x1eh\x0bi"  # what str.splitlines would break on
TIME = "2026-12-06T00:00:00.000000Z"


def envelope(id: int, type: str, data: Any) -> str:
    return json.dumps({"id": id, "stream": "s", "type": type, "data": data, "time": TIME}, ensure_ascii=False)


FIRST, SECOND = envelope(1, "paid", TEXT).split('"data"')
# Each piece is one write; the writes are apart in time, so the reader gets them apart.
PIECES = [
    b"retry: 50\r\n: a comment, no event\n:\r\n",
    f"id: 1\r\nevent: paid\r\ndata: {FIRST}\r\ndata: \"data\"{SECOND}\r".encode(),
    b"\n",  # the LF of the CR LF above, in a read of its own
    b"\r\n",
    f"id: 2\revent: created\rdata: {envelope(2, 'created', [1, 2])}\r\r".encode(),
    b": heartbeat\n",
    f"id: 3\nevent: paid\ndata:{envelope(3, 'paid', {'u': TEXT})}\n".encode()[:-40],
    f"id: 3\nevent: paid\ndata:{envelope(3, 'paid', {'u': TEXT})}\n".encode()[-40:],
    b"unknown: field\n\n",
    f"id: 4\ndata: {envelope(4, 'message', 'plain')}\n\n".encode(),
]
ALL = b"".join(PIECES)
# Split the second character of U+2028 in the third event: 3 bytes, 2 writes.
CUT = ALL.index("\u2028".encode(), ALL.index(b"id: 3")) + 1
WRITES = [*PIECES[:6], ALL[sum(map(len, PIECES[:6])):CUT], ALL[CUT:]]
AGAIN = f"id: 5\ndata: {envelope(5, 'message', 'again')}\n\n".encode()
PAGE = b"<!doctype html><meta charset=utf-8><title>sse</title>"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/":
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        # A reader that comes back gets the same events again (this server ignores the resume
        # point), then a fifth one.
        again = [AGAIN] if self.headers.get("Last-Event-ID") else []
        for piece in [*WRITES, *again]:
            self.wfile.write(piece)
            self.wfile.flush()
            time.sleep(0.03)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True  # a reader that stays connected does not hold the shutdown
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def decoded() -> list[tuple[str, str, dict[str, Any]]]:
    """What ``sse.Decoder`` makes of the writes: each event's type, id and data."""
    decoder = Decoder()
    return [(m.event, m.id, json.loads(m.data)) for piece in WRITES for m in decoder.feed(piece)]


def test_the_decoder_reads_every_frame() -> None:
    assert [(kind, id, data["data"]) for kind, id, data in decoded()] == [
        ("paid", "1", TEXT), ("created", "2", [1, 2]), ("paid", "3", {"u": TEXT}), ("message", "4", "plain"),
    ]


@pytest.mark.parametrize("kind", sorted(DRIVERS))
def test_the_client_reads_as_the_decoder_does(origin: str, kind: str) -> None:
    """The same events, each once, though the stream ends and is sent again from the start."""
    client = DRIVERS[kind](origin)
    try:
        events = client.subscribe()  # no resume point on the first request
        got = [next(events) for _ in range(5)]
    finally:
        client.close()
    assert [(e.type, str(e.id), json.loads(e.to_json())) for e in got[:4]] == decoded()
    assert (got[4].id, got[4].data) == (5, "again")


@pytest.mark.browser
def test_chromium_reads_as_the_decoder_does(origin: str, browser: Browser) -> None:  # noqa: F811
    page = browser.new_page()
    try:
        page.goto(origin)
        page.evaluate(
            """() => {
                window.got = [];
                const source = new EventSource('/stream');
                for (const type of ['message', 'paid', 'created']) {
                    source.addEventListener(type, (e) => {
                        if (window.got.length < 4) window.got.push({type: e.type, id: e.lastEventId, data: e.data});
                        if (window.got.length === 4) source.close();
                    });
                }
            }"""
        )
        page.wait_for_function("() => window.got.length === 4", timeout=WAIT_MS)
        got = page.evaluate("() => window.got")
    finally:
        page.close()
    assert [(g["type"], g["id"], json.loads(g["data"])) for g in got] == decoded()
