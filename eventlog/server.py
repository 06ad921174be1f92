"""``eventlog serve``: gunicorn with gevent workers, so an idle SSE connection costs a
greenlet (a few kilobytes), not a thread."""

from __future__ import annotations

import resource
import socket
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from gevent.monkey import MonkeyPatchWarning
from gunicorn.app.base import BaseApplication

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


class Server(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
    """A gunicorn application that builds the eventlog app inside each worker."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # Imported here, in the worker, after gevent has patched the standard library.
        from .app import create_app

        return with_client_check(create_app().wsgi_app)


def serve(host: str, port: int, workers: int, connections: int) -> None:
    """Run the server in the foreground until it is told to stop."""
    _raise_open_file_limit(connections + 100)
    # The worker patches the standard library after the fork, once this process has imported
    # redis; the only module that kept unpatched ssl names is redis.asyncio, which is unused.
    warnings.filterwarnings("ignore", "Monkey-patching ssl", MonkeyPatchWarning)
    Server(
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
        }
    ).run()


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
