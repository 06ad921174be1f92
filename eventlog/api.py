"""The HTTP API: a thin layer that parses requests and renders what the log returns."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from importlib.resources import files
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, request
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from . import sse
from .errors import EventlogError, InvalidRequest, UnsupportedMediaType, problem
from .notify import RedisNotifier
from .query import parse_audit_query
from .service import current_eventlog
from .store import StoredEvent, query
from .stream import event_stream
from .validation import check_name, parse_events

log = logging.getLogger(__name__)
bp = Blueprint("eventlog", __name__)

JSON = "application/json"
EVENT_STREAM = "text/event-stream"
IDEMPOTENCY_KEY_MAX = 255
# Query parameters the live stream reads; anything else is an error, like in the audit query.
STREAM_PARAMETERS = frozenset({"stream", "last_event_id"})


@bp.post("/streams/<stream>/events")
def publish(stream: str) -> Response:
    """Store one event (a JSON object) or an atomic batch (an array); 201 with the result."""
    eventlog = current_eventlog()
    events, is_batch = parse_events(
        stream,
        _json_body(),
        max_data_bytes=eventlog.settings.max_data_bytes,
        max_batch=eventlog.settings.max_batch,
    )
    appended = eventlog.append(events, idempotency_key=_idempotency_key())
    body = (
        _events_json(appended.events)
        if is_batch
        else appended.events[0].to_json()
    )
    response = Response(body, status=201, mimetype=JSON)
    if appended.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("/streams/<stream>/events")
def stream_events(stream: str) -> Response:
    """Events of one stream: live SSE with replay, or a JSON page of the audit query."""
    check_name(stream, "stream name")
    if _wants_event_stream():
        return _live(streams=[stream], extra=set(request.args) - {"last_event_id"})
    if "stream" in request.args:
        raise InvalidRequest("the stream is named in the path; use GET /events to query several")
    return _audit_page([("stream", stream), *request.args.items(multi=True)])


@bp.get("/events")
def all_events() -> Response:
    """Events of the given streams (all streams if none): live SSE, or a JSON audit page."""
    if _wants_event_stream():
        streams = [check_name(s, "stream name") for s in request.args.getlist("stream")]
        return _live(streams=streams, extra=set(request.args) - STREAM_PARAMETERS)
    return _audit_page(list(request.args.items(multi=True)))


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers. Also reports which worker process answered, its live
    subscribers and how many events wait in their buffers."""
    subscriptions = current_eventlog().hub.subscriptions()
    return _json(
        {
            "status": "ok",
            "pid": os.getpid(),
            "subscribers": len(subscriptions),
            "buffered_events": sum(s.pending for s in subscriptions),
        }
    )


@bp.get("/readyz")
def readyz() -> Response:
    """Readiness: whether the database and (when configured) Redis answer; 503 if not."""
    eventlog = current_eventlog()
    checks: dict[str, str] = {}
    try:
        with eventlog.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except SQLAlchemyError:
        checks["database"] = "unreachable"
    if isinstance(eventlog.notifier, RedisNotifier):
        checks["redis"] = "ok" if eventlog.notifier.ping() else "unreachable"
    ready = all(state == "ok" for state in checks.values())
    return _json({"status": "ready" if ready else "unavailable", **checks}, 200 if ready else 503)


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI description of this API."""
    return Response(files(__package__).joinpath("openapi.json").read_bytes(), mimetype=JSON)


def handle_error(error: Exception) -> Response:
    """The one mapping from exceptions to RFC 9457 problem details."""
    if isinstance(error, EventlogError):
        body = error.problem()
    elif isinstance(error, HTTPException):
        body = problem(error.code or 500, error.name, error.description or error.name)
    else:
        # Details stay in the log: they may hold configuration the caller must not see.
        log.exception("unhandled error")
        body = problem(500, "Internal server error", "the server failed; see its log")
    response = Response(json.dumps(body), status=body["status"], mimetype="application/problem+json")
    if isinstance(error, HTTPException):
        # Keep what the client needs to act on, such as Allow on a 405.
        for name, value in error.get_headers():
            if name != "Content-Type":
                response.headers[name] = value
    return response


def _live(streams: list[str], extra: set[str]) -> Response:
    if extra:
        raise InvalidRequest(f"unknown query parameter(s) for a live stream: {sorted(extra)}")
    # The header is what a reconnecting EventSource sends; it wins over the URL's value,
    # which only a page reload uses.
    raw = request.headers.get("Last-Event-ID", request.args.get("last_event_id"))
    try:
        resume_after = sse.parse_last_event_id(raw)
    except ValueError as error:
        raise InvalidRequest(f"bad resume point: {error}") from None
    eventlog = current_eventlog()
    client = request.environ.get("gunicorn.socket")  # eventlog serve's; other servers: None
    body = event_stream(
        eventlog.engine,
        eventlog.hub,
        streams,
        resume_after,
        retry_ms=eventlog.settings.retry_ms,
        client_gone=None if client is None else _closed_by_peer(client),
    )
    response = Response(body, mimetype=EVENT_STREAM)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response


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


def _audit_page(params: list[tuple[str, str]]) -> Response:
    audit = parse_audit_query(params)
    with current_eventlog().engine.connect() as conn:
        rows = query(conn, audit.where, limit=audit.limit + 1, newest_first=audit.newest_first)
    page, more = rows[: audit.limit], len(rows) > audit.limit
    next_url = None
    if more:
        # Keyset pagination: the next page continues past the last id of this one.
        bound = "before" if audit.newest_first else "after"
        kept = [(k, v) for k, v in request.args.items(multi=True) if k != bound]
        next_url = f"{request.base_url}?{urlencode([*kept, (bound, str(page[-1].id))])}"
    return Response(
        f'{{"events":[{",".join(e.to_json() for e in page)}],"next":{json.dumps(next_url)}}}',
        mimetype=JSON,
    )


def _events_json(events: list[StoredEvent]) -> str:
    return f'{{"events":[{",".join(e.to_json() for e in events)}]}}'


def _json_body() -> Any:
    mimetype = request.mimetype
    if mimetype != JSON and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(
            f"send the event as JSON with Content-Type: {JSON} (got {mimetype or 'none'!r})"
        )
    try:
        return json.loads(request.get_data(cache=False), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidRequest(f"the body is not valid JSON: {error}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not (1 <= len(key) <= IDEMPOTENCY_KEY_MAX and key.isascii() and key.isprintable()):
        raise InvalidRequest(
            f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX} printable ASCII characters"
        )
    return key


def _wants_event_stream() -> bool:
    return request.accept_mimetypes.best_match([JSON, EVENT_STREAM]) == EVENT_STREAM


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype=JSON)
