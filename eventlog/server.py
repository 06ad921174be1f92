"""``eventlog serve``: gunicorn with gevent workers, so an idle SSE connection costs a
greenlet (a few kilobytes), not a thread."""

from __future__ import annotations

import functools
import logging
import os
import resource
import shutil
import socket
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gevent.monkey import MonkeyPatchWarning
from gunicorn.app.base import BaseApplication

from .logs import logging_config, with_access_log
from .metrics import MULTIPROCESS_DIR

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)


class Server(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
    """A gunicorn application that builds the eventlog app inside each worker."""

    def __init__(self, options: dict[str, Any]) -> None:
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

        return with_access_log(with_client_check(create_app().wsgi_app))


def serve(
    host: str, port: int, workers: int, connections: int, log_format: str, notes: Sequence[str] = ()
) -> None:
    """Run the server in the foreground until it is told to stop; ``notes`` are logged as
    warnings once it listens (in the log's format, like every other line)."""
    _raise_open_file_limit(connections + 100)
    # The worker patches the standard library after the fork, once this process has imported
    # redis; the only module that kept unpatched ssl names is redis.asyncio, which is unused.
    warnings.filterwarnings("ignore", "Monkey-patching ssl", MonkeyPatchWarning)
    owned = _metrics_directory()
    master = os.getpid()
    try:
        _server(host, port, workers, connections, log_format, notes).run()
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


def _ready(server: Any, notes: Sequence[str]) -> None:
    """gunicorn's when_ready hook: the address really listened on, once it is."""
    # With SO_REUSEPORT the workers bind sockets of their own, and the master holds none.
    addresses = ", ".join(
        [str(listener) for listener in server.LISTENERS] or [_url(a) for a in server.cfg.address]
    )
    workers = server.cfg.workers
    log.info("eventlog listening on %s (%d worker%s)", addresses, workers, "" if workers == 1 else "s")
    for note in notes:
        log.warning("%s", note)


def _url(address: tuple[str, int] | str) -> str:
    if isinstance(address, str):
        return f"unix:{address}"
    host, port = address
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _server(
    host: str, port: int, workers: int, connections: int, log_format: str, notes: Sequence[str]
) -> Server:
    return Server(
        {
            "bind": f"{host}:{port}",
            "workers": workers,
            "worker_class": "gevent",
            "worker_connections": connections,
            # SSE connections never finish by themselves: don't wait long for them on shutdown.
            "graceful_timeout": 5,
            "keepalive": 5,
            # Several servers may run on one host; gunicorn's control socket path would clash.
            "control_socket_disable": True,
            # Each worker listens on a socket of its own and the kernel spreads connections
            # evenly among them. On one shared socket, whichever worker woke first took the
            # connection, and the split was lopsided (ARCHITECTURE.md, "Serving").
            "reuse_port": workers > 1,
            "logconfig_dict": logging_config(log_format),
            "child_exit": _worker_exited,
            "when_ready": functools.partial(_ready, notes=notes),
        }
    )


def with_client_check(app: WSGIApplication) -> WSGIApplication:
    """Wrap ``app`` so each request's environ holds a check of whether its client has gone
    (under ``api.CLIENT_GONE``), from the socket gunicorn hands over as ``gunicorn.socket``."""
    from .api import CLIENT_GONE

    def wrapped(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        client = environ.get("gunicorn.socket")
        if client is not None:
            environ[CLIENT_GONE] = _closed_by_peer(client)
        return app(environ, start_response)

    return wrapped


def _closed_by_peer(client: socket.socket) -> Callable[[], bool]:
    """Whether the client has closed its end of ``client``, asked without waiting.

    An SSE client sends nothing after its request, so a socket that reads as ended (or reset)
    belongs to a client that is gone; anything else, data included, counts as still there.
    """

    def gone() -> bool:
        timeout = client.gettimeout()
        client.settimeout(0)  # a gevent socket would otherwise park this greenlet until data
        try:
            return client.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            client.settimeout(timeout)

    return gone


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
