"""``eventlog serve``: gunicorn with gevent workers, so an SSE connection costs a greenlet
(a few kilobytes) while it writes, and none while it is parked; never a thread.

What gunicorn does below Flask is bounded and answered here:
- a request head must arrive within ``keepalive`` seconds (of connecting, or of the previous
  response); a stalled one is closed without an answer, as the client may never have begun;
- a request body must arrive within ``EVENTLOG_REQUEST_TIMEOUT_SECONDS`` of its head: then
  the client gets a 408, and the connection closes; a malformed chunked body is a 400;
- gunicorn's own refusals (a request line or header too long, a malformed request line or
  Content-Length) are problem+json like every other error, not gunicorn's HTML page.

A live stream with nothing to write parks (``stream.PARK``): its connection leaves gunicorn,
whose greenlet for it ends, and its socket stays with the stream's ``_Outlet``, which the
hub writes to; a greenlet runs the stream again only when it must (``hub.Parked``). Parked
connections count against ``worker_connections`` as the others do (``_Lot``).
"""

from __future__ import annotations

import _socket
import contextlib
import functools
import gc
import json
import logging
import os
import resource
import shutil
import socket
import ssl
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gevent
import gevent.socket
from gevent.monkey import MonkeyPatchWarning
from gunicorn import glogging, util
from gunicorn.app.base import BaseApplication
from gunicorn.http.errors import ParseException
from gunicorn.workers.ggevent import GeventWorker
from werkzeug.exceptions import BadRequest, RequestTimeout

from .config import ANY_HOST, is_loopback, key_of
from .errors import problem
from .logs import logging_config, with_access_log
from .metrics import MULTIPROCESS_DIR
from .stream import PARK

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
KEEPALIVE_SECONDS = 5
"""How long a connection may idle between requests, and the time a request head has."""
LIMIT_REQUEST_LINE = 8190
"""Longest request line (method, URL, version) in bytes: gunicorn's maximum. A GET /events
naming twenty 200-character streams needs about 4,300."""
LIMIT_REQUEST_FIELDS = 100
LIMIT_REQUEST_FIELD_SIZE = 8190
"""Most header fields, and the longest one in bytes (a long cookie or token still fits)."""


class Server(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
    """A gunicorn application that builds the eventlog app inside each worker."""

    def __init__(self, access_log: bool, options: dict[str, Any]) -> None:
        self.access_log = access_log  # eventlog's own (logs.py), not gunicorn's
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        # What gunicorn's own command line would read: GUNICORN_CMD_ARGS, for every setting
        # eventlog does not decide itself (those above win).
        parser = self.cfg.parser()
        from_env = parser.parse_args(self.cfg.get_cmd_args_from_env())
        for key, value in vars(from_env).items():
            if value is not None and key != "args" and key not in self.options:
                self.cfg.set(key.lower(), value)

    def load(self) -> Any:
        # Imported here, in the worker, after gevent has patched the standard library.
        from .app import create_app

        app = create_app()
        timeout = app.extensions["eventlog"].settings.request_timeout_seconds
        logged = with_access_log(app.wsgi_app) if self.access_log else app.wsgi_app
        # Everything built so far (the imported libraries, the app) lives as long as the
        # worker: out of the collector's sight, its full passes over the objects of
        # thousands of streams stop pausing their delivery as long (bench/README.md).
        gc.freeze()
        return with_connection(logged, request_timeout=timeout)


class Worker(GeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker, with its own error answers as problem+json, each response's
    head sent with its first body bytes, and live streams that park (``_Outlet``)."""

    _lot: _Lot | None = None

    def lot(self) -> _Lot:
        """The worker's parked streams; made in the worker, once gevent has patched threading."""
        if self._lot is None:
            self._lot = _Lot(self.worker_connections)
        return self._lot

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.lot().close()

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        lot = self.lot()
        lot.enter()  # gunicorn's pool counts its handlers; the lot counts parked streams too
        try:
            super().handle(listener, client, addr)
        finally:
            lot.leave()

    def handle_request(self, listener_name: Any, req: Any, sock: socket.socket, addr: Any) -> Any:
        joined = _HeadWithBody(sock, self.lot())
        try:
            return super().handle_request(listener_name, req, joined, addr)
        except _Parked:
            # The stream has the socket now: gunicorn's handler ends here, and the socket it
            # closes is detached already (``_Outlet.park``).
            raise StopIteration from None
        finally:
            joined.flush()

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        # gunicorn decides the status and logs; only the page it would write is replaced.
        page = _Written()
        super().handle_error(req, page, addr, exc)
        status, reason = page.status()
        detail = str(exc) if 400 <= status < 500 else "the server failed; see its log"
        body = json.dumps(problem(status, reason, detail or reason))
        head = (
            f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
            f"Content-Type: {PROBLEM_JSON}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        try:
            util.write_nonblock(client, (head + body).encode())
        except OSError:
            self.log.debug("Failed to send error message.")


class _HeadWithBody:
    """A client socket that holds a response's head (gunicorn's first ``sendall``) until
    the body's first bytes, and sends them together.

    gunicorn writes the head and the body in two sends: two system calls, and for a small
    answer (a publish's 201) two TCP segments, where one does. Any other use of the socket
    (a sendfile, a read, a close) sends what is held first, so nothing goes out of order.
    Each write is one ``send`` when the socket's buffer has room for it.
    """

    __slots__ = ("_sock", "_held", "_head", "lot")

    def __init__(self, sock: socket.socket, lot: _Lot) -> None:
        self._sock: socket.socket | _socket.socket = sock
        self._held: bytes | None = b""  # b"": nothing sent yet; None: the head went out
        self._head = b""  # the response's head, for ``take`` (looked at only if a stream parks)
        self.lot = lot

    @property
    def head_sent(self) -> bool:
        return self._held is None

    @property
    def takeable(self) -> bool:
        """Whether ``take`` may hand the connection over: a TLS one (gunicorn's ``certfile``)
        is written through its SSL layer, which a plain socket would bypass."""
        return not isinstance(self._sock, ssl.SSLSocket)

    def sendall(self, data: bytes) -> None:
        if self._held == b"":
            self._held = self._head = bytes(data)
            return
        if self._held:
            data, self._held = self._held + data, None
        # One send takes what a socket buffer has room for, which is every frame of a live
        # stream but the rare large one. gevent's sendall asked the kernel for the buffer's
        # size first, on every write: a system call more per delivery (5 % of a fan-out's
        # CPU, bench/README.md).
        sent = self._sock.send(data)
        if sent < len(data):
            self._sock.sendall(memoryview(data)[sent:])

    def flush(self) -> None:
        """Send what is held, if anything."""
        if self._held:
            held, self._held = self._held, None
            with contextlib.suppress(OSError):  # the client left: nothing to tell it
                self._sock.sendall(held)

    def __getattr__(self, name: str) -> Any:
        self.flush()
        return getattr(self._sock, name)

    def take(self) -> tuple[_socket.socket, bool]:
        """The connection, from now on the caller's, and whether the response's body goes in
        chunks: gunicorn's socket object lets go of it (its close, later, closes nothing),
        and every use through this one goes to the returned socket, which never waits
        (``_ClosedByPeer`` asks it)."""
        gunicorns = self._sock
        assert isinstance(gunicorns, socket.socket)
        taken = _socket.socket(fileno=gunicorns.detach())
        taken.setblocking(False)
        self._sock = taken
        chunked, self._head = b"\r\nTransfer-Encoding: chunked\r\n" in self._head, b""
        return taken, chunked


class _Parked(BaseException):
    """Raised through gunicorn's handler when its stream parks (not an ``Exception``: gunicorn
    would answer it as an error)."""


class _Lot:
    """A worker's parked streams, and its count of connections: handled by gunicorn's
    greenlets, or parked. A new connection waits while there are ``limit``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._open = 0
        self._freed = threading.Condition()
        self.parked: set[_Outlet] = set()  # parked now (not running)
        self.running: set[gevent.Greenlet] = set()  # streams resumed from parking, running now

    def enter(self) -> None:
        with self._freed:
            while self._open >= self._limit:
                self._freed.wait()
            self._open += 1

    def leave(self) -> None:
        with self._freed:
            self._open -= 1
            self._freed.notify()

    def took(self) -> None:
        """A parked stream keeps its connection past its handler's ``leave``."""
        with self._freed:
            self._open += 1

    def close(self) -> None:
        """End every stream that has parked (the worker is stopping): their clients come back.

        Those running again are stopped where they wait, as gunicorn stops its handlers."""
        gevent.killall(list(self.running), timeout=1)
        for outlet in list(self.parked):
            outlet.end()


class _Outlet:
    """A live stream's connection, which it keeps when it parks (``stream.Outlet``).

    Made for each GET (``with_connection``). A live stream's response goes to gunicorn
    through it (``respond``): the ``PARK`` the stream yields takes the socket from gunicorn,
    and ``resume`` runs the stream again, in a greenlet of its own, until it parks again or
    ends.
    """

    __slots__ = ("_joined", "_body", "_close", "_sock", "_chunked", "_rest", "_broken")

    def __init__(self, joined: _HeadWithBody) -> None:
        self._joined = joined
        self._body: Iterator[bytes] | None = None  # the response, once it is known
        self._close: Callable[[], object] | None = None
        self._sock: _socket.socket | None = None  # the connection, once parked
        self._chunked = False  # whether its body goes in chunks (known once parked)
        self._rest: bytes | memoryview = b""  # written in part: the resumed stream's first
        self._broken = False  # a write failed: the client is gone

    def respond(self, body: Iterable[bytes]) -> Iterable[bytes]:
        """``body``, as gunicorn is to write it: this outlet iterates it."""
        self._body = iter(body)
        self._close = getattr(body, "close", None)
        return self

    def __iter__(self) -> _Outlet:
        return self

    def __next__(self) -> bytes:
        assert self._body is not None
        data = next(self._body)
        if data is PARK:
            self.park()
            raise _Parked
        return data

    def close(self) -> None:
        """gunicorn ends the response: unless parked, the stream ends with it."""
        if self._sock is None and self._close is not None:
            self._close()

    def parkable(self) -> bool:
        # Everything before the PARK is written once gunicorn asks for more: the head too.
        return self._body is not None and self._joined.head_sent and self._joined.takeable

    def park(self) -> None:
        """The stream parks for the first time: the connection leaves gunicorn."""
        self._sock, self._chunked = self._joined.take()
        self._joined.lot.took()
        self._joined.lot.parked.add(self)

    def write(self, data: bytes) -> bool:
        assert self._sock is not None
        data = self._framed(data)
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._broken = True
            return False
        if sent < len(data):
            self._rest = memoryview(data)[sent:]
            return False
        return True

    def resume(self) -> None:
        lot = self._joined.lot
        lot.parked.discard(self)
        running = gevent.spawn(self._run)
        lot.running.add(running)
        running.link(lot.running.discard)

    def _run(self) -> None:
        assert self._body is not None
        parked = False
        try:
            if not self._broken:
                if self._rest:
                    rest, self._rest = self._rest, b""
                    self._send(rest)
                for data in self._body:
                    if data is PARK:  # the stand-in is back in place: this greenlet ends
                        self._joined.lot.parked.add(self)
                        parked = True
                        return
                    if data:
                        self._send(self._framed(data))
                if self._chunked:
                    self._send(b"0\r\n\r\n")
        except OSError:
            pass  # the client has gone
        except Exception:
            log.exception("a live stream failed")
        finally:
            if not parked:  # ended, failed, or stopped with the worker (GreenletExit)
                self.end()

    def end(self) -> None:
        """Close the stream (its own ``finally`` blocks run, the access log's line too) and
        its connection; once."""
        self._joined.lot.parked.discard(self)
        close, self._close = self._close, None
        if close is not None:
            close()
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
            self._joined.lot.leave()

    def _framed(self, data: bytes) -> bytes:
        return b"%X\r\n%s\r\n" % (len(data), data) if self._chunked else data

    def _send(self, data: bytes | memoryview) -> None:
        """Write all of ``data``, letting the worker's other greenlets run while it waits."""
        assert self._sock is not None
        view = memoryview(data)
        while view:
            try:
                view = view[self._sock.send(view) :]
            except BlockingIOError:
                gevent.socket.wait_write(self._sock.fileno())


class Logger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger without gunicorn's access log: eventlog writes its own (logs.py).

    With ``logconfig_dict`` set, gunicorn builds every request's access line and then drops
    it (its ``gunicorn.access`` logger has no handler), at a cost that showed in every
    publish's profile (bench/README.md).
    """

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None


class _Written:
    """Stands in for the client socket while gunicorn writes its HTML error page."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0

    def sendall(self, data: bytes) -> None:
        self.data += data

    def status(self) -> tuple[int, str]:
        """The status code and reason of what was written (500 if nothing was)."""
        _, code, reason = self.data.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        return (int(code), reason) if code.isdigit() else (500, "Internal Server Error")


def serve(
    host: str, port: int, workers: int, connections: int, *, log_level: str = "info",
    access_log: bool = False, log_format: str = "text", notes: Sequence[str] = (), database: str = "",
) -> None:
    """Run the server in the foreground until it is told to stop; ``access_log`` writes a
    line per request to stderr; ``notes`` are logged as warnings once it listens, and
    ``database`` (its revision) on the line that says so (in the log's format, like every
    other line)."""
    # Each worker's connections, and as many more waiting for one of them (``_Lot``).
    _raise_open_file_limit(2 * connections + 100)
    # The default allowed hosts are the loopback names, right for a loopback bind; bound
    # elsewhere, the server cannot know the names it is reached by. The workers inherit this.
    if key_of("allowed_hosts") not in os.environ and not is_loopback(host):
        os.environ[key_of("allowed_hosts")] = ANY_HOST
    # The worker patches the standard library after the fork, once this process has imported
    # redis; the only module that kept unpatched ssl names is redis.asyncio, which is unused.
    warnings.filterwarnings("ignore", "Monkey-patching ssl", MonkeyPatchWarning)
    owned = _metrics_directory()
    master = os.getpid()
    try:
        _server(host, port, workers, connections, log_level, log_format, notes, database, access_log).run()
    finally:
        # A worker leaves through here too (gunicorn ends it with SystemExit): only the master
        # may remove the directory every worker still writes to.
        if owned is not None and os.getpid() == master:
            shutil.rmtree(owned, ignore_errors=True)


def _metrics_directory() -> str | None:
    """Point PROMETHEUS_MULTIPROC_DIR at an empty directory for the workers' metrics; the
    path of a temporary one this server made (and removes), None for the user's own.

    Set before anything imports prometheus_client, which reads it once, at import.
    """
    given = os.environ.get(MULTIPROCESS_DIR)
    if given:
        # Values a previous run left would be added to this run's.
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        return None
    owned = tempfile.mkdtemp(prefix="eventlog-metrics-")
    os.environ[MULTIPROCESS_DIR] = owned
    return owned


def _worker_exited(server: Any, worker: Any) -> None:
    """gunicorn's child_exit hook: a dead worker's live gauges leave the sums."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def _ready(server: Any, notes: Sequence[str], database: str) -> None:
    """gunicorn's when_ready hook: the address really listened on, once it is."""
    workers = server.cfg.workers
    log.info(
        "eventlog listening on %s (%d worker%s)%s", _addresses(server), workers,
        "" if workers == 1 else "s", f", {database}" if database else "",
    )
    for note in notes:
        log.warning("%s", note)


def _addresses(server: Any) -> str:
    """The addresses ``server`` (gunicorn's arbiter) listens on."""
    # With SO_REUSEPORT the workers bind sockets of their own, and the master holds none.
    return ", ".join([str(listener) for listener in server.LISTENERS] or [_url(a) for a in server.cfg.address])


def _url(address: tuple[str, int] | str) -> str:
    if isinstance(address, str):
        return f"unix:{address}"
    host, port = address
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _server(
    host: str, port: int, workers: int, connections: int, log_level: str, log_format: str,
    notes: Sequence[str], database: str, access_log: bool,
) -> Server:
    return Server(
        access_log,
        {
            "bind": f"{host}:{port}",
            "workers": workers,
            "worker_class": f"{__name__}.Worker",
            "logger_class": f"{__name__}.Logger",
            "worker_connections": connections,
            # SSE connections never finish by themselves: don't wait long for them on shutdown.
            "graceful_timeout": 5,
            "keepalive": KEEPALIVE_SECONDS,
            "limit_request_line": LIMIT_REQUEST_LINE,
            "limit_request_fields": LIMIT_REQUEST_FIELDS,
            "limit_request_field_size": LIMIT_REQUEST_FIELD_SIZE,
            # Several servers may run on one host; gunicorn's control socket path would clash.
            "control_socket_disable": True,
            # Each worker listens on a socket of its own and the kernel spreads connections
            # evenly among them. On one shared socket, whichever worker woke first took the
            # connection, and the split was lopsided (ARCHITECTURE.md, "Serving").
            "reuse_port": workers > 1,
            "loglevel": log_level,
            "logconfig_dict": logging_config(log_format, log_level, _url((host, port))),
            "child_exit": _worker_exited,
            "when_ready": functools.partial(_ready, notes=notes, database=database),
        }
    )


def with_connection(app: WSGIApplication, *, request_timeout: float) -> WSGIApplication:
    """Wrap ``app`` for gunicorn's connections: each request's environ holds a check of
    whether its client has gone (under ``api.CLIENT_GONE``), from the socket gunicorn hands
    over as ``gunicorn.socket``, and the outlet a live stream parks with (``api.OUTLET``);
    its body must arrive within ``request_timeout``; and it no longer holds a token given in
    its URL (gunicorn's access log reads the environ).

    The outermost wrapper: a parked stream's response is resumed from here, through every
    wrapper inside (the access log's count of its bytes)."""
    from .api import CLIENT_GONE, OUTLET
    from .http_auth import take_url_tokens

    def wrapped(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        take_url_tokens(environ)
        client = environ.get("gunicorn.socket")
        if client is None:
            return app(environ, start_response)
        environ[CLIENT_GONE] = _ClosedByPeer(client)
        deadline = time.monotonic() + request_timeout
        environ["wsgi.input"] = _TimedBody(environ["wsgi.input"], deadline, request_timeout)
        # Only a GET may be a live stream; and an HTTP/2 one shares its connection.
        if environ["REQUEST_METHOD"] != "GET" or not isinstance(client, _HeadWithBody):
            return app(environ, start_response)
        outlet = environ[OUTLET] = _Outlet(client)
        body = app(environ, start_response)
        # A live stream takes the outlet from the environ; other responses go to gunicorn as
        # they are.
        return body if OUTLET in environ else outlet.respond(body)

    return wrapped


class _TimedBody:
    """A request body (gunicorn's) whose reads fail once ``deadline`` has passed.

    A read that runs out of time raises TimeoutError inside gunicorn's reader, which then
    marks the body failed, so the connection closes after the 408 instead of being reused.
    The deadline covers the whole body: a client trickling a byte at a time meets it too.
    """

    def __init__(self, body: Any, deadline: float, timeout: float) -> None:
        self._body = body
        self._deadline = deadline
        self._timeout = timeout

    def read(self, size: int | None = -1) -> bytes:
        data: bytes = self._call(self._body.read, size)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        line: bytes = self._call(self._body.readline, size)
        return line

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = self._call(self._body.readlines, hint)
        return lines

    def __iter__(self) -> _TimedBody:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def _call(self, read: Callable[[int | None], Any], size: int | None) -> Any:
        remaining = self._deadline - time.monotonic()
        try:
            with gevent.Timeout(max(remaining, 0.001), TimeoutError()):
                return read(size)
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {self._timeout:g} s"
            ) from None
        except ParseException as error:  # a malformed chunked body
            raise BadRequest(f"the request body is malformed: {error}") from None


class _ClosedByPeer:
    """Whether the client has closed its end of ``client``, asked without waiting; and a
    watch that says so as soon as it happens.

    An SSE client sends nothing after its request, so a socket that reads as ended (or reset)
    belongs to a client that is gone; anything else, data included, counts as still there.
    """

    def __init__(self, client: _HeadWithBody | socket.socket) -> None:
        self._client = client  # through _HeadWithBody: the socket a parked stream took too

    def __call__(self) -> bool:
        client = self._client
        timeout = client.gettimeout()
        client.settimeout(0)  # a gevent socket would otherwise hold this greenlet until data
        try:
            peeked: bytes = client.recv(1, socket.MSG_PEEK)
            return peeked == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            client.settimeout(timeout)

    def watch(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` once the client closes (the socket turns readable at its end), so a
        closed stream leaves at once, not at the next heartbeat; returns the cancel."""
        watcher = gevent.get_hub().loop.io(self._client.fileno(), 1)  # 1: readable

        def readable() -> None:
            watcher.stop()  # once: data from a client that stays would keep it firing
            if self():
                wake()

        watcher.start(readable)
        return watcher.close  # type: ignore[no-any-return]


def check_port_free(host: str, port: int) -> None:
    """Raise OSError if something already listens on ``host:port``.

    Workers that bind with SO_REUSEPORT would not be refused by another server doing the same,
    and the two would silently split the connections; this bind, without it, is refused.
    """
    with socket.create_server((host, port)):
        pass


def _raise_open_file_limit(wanted: int) -> None:
    """Each connection is a file descriptor; the usual soft limit of 1,024 is far too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
