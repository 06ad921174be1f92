"""Parked live streams under ``eventlog serve`` (``server._Outlet``, ``hub.Parked``).

A caught-up live stream gives its greenlet up, and the hub writes its events straight to its
socket. These tests hold it to what the stream's own writes promised: every event once, in
order, in a well-formed chunked body, also when the socket fills mid-write; and a parked
stream still counts as one of the worker's connections.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import h11
import httpx
from conftest import EVENTLOG_BIN, Server, server_env, sqlite_database
from helpers import free_port, publish, wait_until

from eventlog.sse import Decoder

STREAM_REQUEST = b"GET /streams/orders/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"


class ChunkedReader:
    """An SSE response read off a raw socket by h11, which refuses a malformed chunk."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.http = h11.Connection(h11.CLIENT)
        # h11 reads a response only after a request: this one is its state only, never sent.
        self.http.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        self.http.send(h11.EndOfMessage())
        self.decoder = Decoder()
        self.ids: list[int] = []
        self.data: list[str] = []
        self.body_bytes = 0
        self.ended = False

    def read(self) -> None:
        """Take what one recv brings."""
        received = self.sock.recv(65536)
        self.http.receive_data(received)
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Response):
                assert event.status_code == 200
                assert (b"transfer-encoding", b"chunked") in list(event.headers)
            elif isinstance(event, h11.Data):
                self.body_bytes += len(event.data)
                for message in self.decoder.feed(bytes(event.data)):
                    self.ids.append(int(message.id))
                    self.data.append(message.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                self.ended = True
                return


def open_stream(server: Server, *, receive_buffer: int | None = None) -> tuple[socket.socket, ChunkedReader]:
    """A live stream of ``orders``, subscribed (its first bytes arrived) when this returns."""
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # before connecting
    sock.settimeout(30)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(STREAM_REQUEST)
    reader = ChunkedReader(sock)
    while reader.http.their_state is not h11.SEND_BODY or not reader.decoder.retry:
        reader.read()
    return sock, reader


def publish_batches(server: Server, batches: int, size: int, data_bytes: int) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for batch in range(batches):
            body = [{"data": f"{batch}:{n}:" + "x" * data_bytes} for n in range(size)]
            assert client.post("/streams/orders/events", json=body).status_code == 201


def test_a_reader_whose_socket_fills_gets_every_event_once_in_order(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """The client stops reading while 12 MB are published in batches of 30 kB: the hub's
    direct writes to the parked stream fill its socket part way through a chunk, the stream
    resumes to write the rest, parks again, overflows its buffer, replays from SQL. Read in
    the end, the body is well-formed chunks with every event once, in order."""
    server = start_server(sqlite_database(tmp_path))
    sock, reader = open_stream(server, receive_buffer=4096)
    with sock:
        batches, size, data_bytes = 400, 10, 3000
        publish_batches(server, batches, size, data_bytes)
        total = batches * size
        while len(reader.ids) < total:
            reader.read()
            assert not reader.ended
        assert reader.ids == list(range(1, total + 1))
        assert [json.loads(d) for d in reader.data] == [
            f"{b}:{n}:" + "x" * data_bytes for b in range(batches) for n in range(size)
        ]


def test_a_parked_stream_goes_on_after_each_burst_and_heartbeat(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """Parked, woken by a heartbeat, parked again, written to directly: many times over, a
    stream still gets each event once, with heartbeats in between, and nothing else."""
    server = start_server(sqlite_database(tmp_path), HEARTBEAT_SECONDS=0.2)
    sock, reader = open_stream(server)
    with sock:
        received = 0
        for burst in range(10):
            publish_batches(server, 1, burst + 1, 10)
            received += burst + 1
            while len(reader.ids) < received:
                reader.read()
            time.sleep(0.3)  # a heartbeat at least, then parked again
        assert reader.ids == list(range(1, received + 1))


def test_parked_streams_count_against_the_workers_connections(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """With --connections 3 and three parked streams, a fourth connection waits, as it does
    behind three busy ones, and is answered once a stream closes."""
    server = start_server(sqlite_database(tmp_path), args=["--connections", "3"])
    streams = [open_stream(server)[0] for _ in range(3)]
    answered: list[int] = []
    fourth = threading.Thread(target=lambda: answered.append(httpx.get(f"{server.url}/healthz", timeout=30).status_code))
    fourth.start()
    try:
        time.sleep(1.5)
        assert answered == []  # waiting for a connection of its own
        streams.pop().close()
        fourth.join(10)
        assert answered == [200]
    finally:
        for sock in streams:
            sock.close()
    wait_until(lambda: "eventlog_live_subscribers 0.0" in httpx.get(f"{server.url}/metrics").text)


def test_the_access_log_counts_what_a_parked_stream_wrote(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """Its line gives the events and the body bytes the client received, though most of
    them went to the socket while the stream was parked, past the response's own count."""
    log = tmp_path / "server.log"
    server = start_server(sqlite_database(tmp_path), args=["--access-log"], log=log, HEARTBEAT_SECONDS=60)
    sock, reader = open_stream(server)
    with sock:
        for n in range(3):
            publish(server.url, "orders", {"n": n})
            while len(reader.ids) <= n:
                reader.read()
    wait_until(lambda: "stream sent" in log.read_text())
    line = next(line for line in log.read_text().splitlines() if "stream sent" in line)
    assert re.search(rf" 200 {reader.body_bytes} bytes in [\d.]+ s, stream sent 3 events$", line), line


def test_a_tls_stream_stays_encrypted(tmp_path: Path) -> None:
    """Over TLS (gunicorn's certfile, through GUNICORN_CMD_ARGS) a stream does not park: a
    parked stream's plain socket would write past the TLS layer. It gets its events as ever."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    port = free_port()
    env = {**server_env(sqlite_database(tmp_path)), "GUNICORN_CMD_ARGS": f"--certfile {cert} --keyfile {key}"}
    process = subprocess.Popen([str(EVENTLOG_BIN), "serve", "--port", str(port)], env=env, start_new_session=True)
    url = f"https://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, verify=False, timeout=httpx.Timeout(10, read=30)) as client:
            wait_until(lambda: client.get("/healthz", timeout=1).status_code == 200, timeout=30)
            with client.stream("GET", "/streams/orders/events", headers={"Accept": "text/event-stream"}) as response:
                decoder, ids = Decoder(), []
                chunks = response.iter_raw()
                next(chunks)  # subscribed: its first bytes arrived
                for n in range(3):
                    time.sleep(0.3)  # long enough to park, were it allowed to
                    assert client.post("/streams/orders/events", json={"data": n}).status_code == 201
                    while len(ids) <= n:
                        ids.extend(int(m.id) for m in decoder.feed(next(chunks)))
                assert ids == [1, 2, 3]
    finally:
        process.terminate()
        process.wait(10)


def test_a_stopping_worker_ends_every_stream_with_its_access_line(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """On SIGTERM the worker ends its streams, the parked one and the one running again to
    write into a full socket, each with its line in the access log: none is cut off silently."""
    log = tmp_path / "server.log"
    server = start_server(sqlite_database(tmp_path), args=["--access-log"], log=log)
    parked, _ = open_stream(server)
    writing, _ = open_stream(server, receive_buffer=4096)
    with parked, writing:
        publish_batches(server, 100, 10, 3000)  # 3 MB: more than the full socket takes
        time.sleep(0.5)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(30)
    lines = [line for line in log.read_text().splitlines() if "stream sent" in line]
    assert len(lines) == 2, lines
