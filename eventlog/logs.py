"""Logs of ``eventlog serve``: the access log, and one format for every line of the server.

The access log (logger ``eventlog.access``) has one line per request, written when the
response ends; a live stream's line comes when the stream closes, with its duration and the
events it sent. URLs are logged as the path and the *names* of the query parameters, never
their values: a query may carry a token (``?access_token=``) or other secrets.

An app that embeds eventlog keeps its own logging: eventlog only writes to its loggers
(``eventlog.*``); ``logging_config`` is for the server's processes alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("eventlog.access")

ACCESS = "eventlog.access"
"""WSGI environ key of the request's ``Access`` record, while the access log is on."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Access:
    """What the access log learns from the app itself: how many events a live stream sent,
    and the bytes it wrote while parked, which never passed through the response."""

    __slots__ = ("events", "parked_bytes")

    def __init__(self) -> None:
        self.events: int | None = None
        self.parked_bytes = 0

    def stream_ended(self, sent: int, parked_bytes: int) -> None:
        self.events = sent
        self.parked_bytes = parked_bytes


def with_access_log(app: WSGIApplication) -> WSGIApplication:
    """Wrap ``app`` so every response, once it has ended, gets a line in the access log."""

    def logged(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        started = time.monotonic()
        access = environ[ACCESS] = Access()
        status = ["-"]

        def start(
            code: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> Any:
            status[0] = code.split(" ", 1)[0]
            return start_response(code, headers, exc_info)

        return _counted(app(environ, start), environ, started, access, status)

    return logged


def _counted(
    body: Iterable[bytes],
    environ: WSGIEnvironment,
    started: float,
    access: Access,
    status: list[str],
) -> Iterator[bytes]:
    sent = 0
    try:
        for chunk in body:
            sent += len(chunk)
            yield chunk
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()  # ends a live stream, which reports its events to ``access``
        _log_request(environ, status[0], sent + access.parked_bytes, time.monotonic() - started, access.events)


def _log_request(
    environ: WSGIEnvironment, status: str, sent: int, seconds: float, events: int | None
) -> None:
    method = environ.get("REQUEST_METHOD", "-")
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    query = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    names = list(dict.fromkeys(name for name, _ in query))  # each once, in order; no values
    shown = f"{path}?{'&'.join(names)}" if names else path
    client = environ.get("REMOTE_ADDR", "-")
    stream = "" if events is None else f", stream sent {events} events"
    fields: dict[str, Any] = {
        "client": client,
        "method": method,
        "path": path,
        "query": names,
        "status": int(status) if status.isdigit() else None,
        "bytes": sent,
        "duration_seconds": round(seconds, 6),
    }
    if events is not None:
        fields["events"] = events
    log.info(
        "%s %s %s %s %d bytes in %.3f s%s", client, method, shown, status, sent, seconds, stream,
        extra=fields,
    )


class ListeningAddress(logging.Filter):
    """Fills in the address of gunicorn's "Listening at:" line, which names the sockets its
    master holds: none when the workers bind their own (SO_REUSEPORT, several workers)."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Listening at: %s (%s)" and isinstance(record.args, tuple) and not record.args[0]:
            record.args = (self.address, *record.args[1:])
        return True


def logging_config(format: str, level: str = "info", address: str = "") -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of the server's processes: every line (eventlog's,
    gunicorn's) from ``level`` up on stderr with time and level, as text or one JSON object
    per line; ``address`` is what the server listens on."""
    formatter: dict[str, Any] = (
        {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "time",
        }
        if format == "json"
        else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"eventlog": formatter},
        "filters": {"listening": {"()": ListeningAddress, "address": address}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "eventlog", "stream": "ext://sys.stderr"}
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            # gunicorn's own lines go through the same handler; its access log stays off
            # (``eventlog.access`` is the one that knows what to leave out).
            "gunicorn.error": {"handlers": [], "propagate": True, "filters": ["listening"]},  # its level: --log-level
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
        },
    }
