"""The HTTP API as a Flask blueprint: parse the request, ask ``EventLog``, render the answer.

HTTP only: no SQL, no sockets. Mount it in any app that has an ``EventLog``::

    events = EventLog(app)
    app.register_blueprint(eventlog.blueprint, url_prefix="/eventlog")

It brings the browser files along (``assets.py``: ``/eventlog.js``, ``/console``, ...), under
the same prefix.

Its limits (``EVENTLOG_MAX_REQUEST_BYTES``), its access control (a token per request once a
key is configured, ``auth.py``), its CORS headers and its problem+json errors cover its own
routes only; the host app's other routes and error pages stay as they are.

Each view asks for the rights it needs (``_rights().require_publish(...)`` or
``require_subscribe(...)``) before it reads a body or the log, so a denied request stores
nothing and receives no event. ``/healthz``, ``/readyz`` and ``/openapi.json`` stay open.
"""

from __future__ import annotations

import json
import logging
import os
from importlib.resources import files
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, request
from flask.blueprints import BlueprintSetupState
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException, NotFound, SecurityError

from . import assets, metrics, sse
from .auth import Rights
from .body import decode_json
from .config import key_of
from .database import classify
from .errors import (
    DatabaseUnavailable,
    EventlogError,
    InvalidRequest,
    OutOfSpace,
    SchemaBehind,
    StatementTimeout,
    UnsupportedMediaType,
    problem,
)
from .events import EVERY_STREAM, StoredEvent, check_name, selection
from .extension import EXTENSION_KEY, current_eventlog
from .http_auth import URL_TOKEN, add_cors_headers, request_token, take_url_tokens
from .logs import ACCESS, Access
from .query import parse_audit_query
from .store import Page
from .validation import parse_events

log = logging.getLogger(__name__)
blueprint = Blueprint("eventlog", __name__)

JSON = "application/json"
PROBLEM_JSON = "application/problem+json"
EVENT_STREAM = "text/event-stream"
IDEMPOTENCY_KEY_MAX = 255
# Query parameters the live stream reads; anything else is an error, like in the audit query.
STREAM_PARAMETERS = frozenset({"stream", "last_event_id"})
CLIENT_GONE = "eventlog.client_gone"
"""WSGI environ key: a server that can tell whether a client has left puts a check here."""
OUTLET = "eventlog.outlet"
"""WSGI environ key: under ``eventlog serve``, the connection a live stream parks with
(``stream.Outlet``)."""
NOSNIFF = {"X-Content-Type-Options": "nosniff"}
OPEN = Rights(publish=(EVERY_STREAM,), subscribe=(EVERY_STREAM,), expires_at=None)
"""The rights of every request when no key is configured."""
LIVE_ENDPOINTS = frozenset({"eventlog.stream_events", "eventlog.all_events"})


@blueprint.record_once
def _require_extension(state: BlueprintSetupState) -> None:
    if EXTENSION_KEY not in state.app.extensions:
        raise RuntimeError("set up EventLog(app) before registering eventlog's blueprint")


@blueprint.before_request
def _limit_request_size() -> None:
    # Per request, so the host app's own MAX_CONTENT_LENGTH is left alone.
    request.max_content_length = current_eventlog().settings.max_request_bytes


@blueprint.before_request
def _keep_tokens_out_of_urls() -> None:
    # Before anything reads the query: from here on no log line, error or `next` link can
    # repeat a token given in the URL (eventlog serve took it out before the app already).
    tokens = take_url_tokens(request.environ)
    if not tokens:
        return
    # The request read its query string from the environ when it was built; args, url and
    # full_path all derive from this copy.
    request.query_string = request.environ["QUERY_STRING"].encode("latin-1")
    if not _is_live_request():
        raise InvalidRequest(
            f"{URL_TOKEN} in the URL is accepted on live streams only (Accept: text/event-stream);"
            " send 'Authorization: Bearer <token>'"
        )
    if len(tokens) > 1:
        raise InvalidRequest(f"give {URL_TOKEN} once")


@blueprint.after_request
def _browser_headers(response: Response) -> Response:
    response.headers.update(NOSNIFF)
    add_cors_headers(request, response, current_eventlog().settings.origins)
    return response


@blueprint.post("/streams/<stream>/events")
def publish(stream: str) -> Response:
    """Store one event (a JSON object) or an atomic batch (an array); 201 with the result."""
    check_name(stream, "stream name")
    _rights().require_publish(stream)
    if request.args:
        raise InvalidRequest(f"unknown query parameter(s) for a publish: {sorted(request.args)}")
    eventlog = current_eventlog()
    settings = eventlog.settings
    events, is_batch = parse_events(
        stream, _json_body(), max_data_bytes=settings.max_data_bytes, max_batch=settings.max_batch
    )
    appended = eventlog.append(events, idempotency_key=_idempotency_key())
    body = _events_json(appended.events) if is_batch else appended.events[0].to_json()
    response = Response(body, status=201, mimetype=JSON)
    if appended.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@blueprint.get("/streams/<stream>/events")
def stream_events(stream: str) -> Response:
    """Events of one stream: live SSE with replay, or a JSON page of the audit query."""
    check_name(stream, "stream name")
    rights = _rights()
    rights.require_subscribe([stream])
    if _wants_event_stream():
        return _live(
            [stream], rights, extra=set(request.args) - {"last_event_id"}, envelope=False
        )
    if "stream" in request.args:
        raise InvalidRequest("the stream is named in the path; use GET /events to query several")
    return _audit_page([("stream", stream), *request.args.items(multi=True)])


@blueprint.get("/events")
def all_events() -> Response:
    """Events of the given streams and stream patterns (all streams if none): live SSE, or
    a JSON audit page.

    Live frames here carry the whole stored event as data, so each names its stream."""
    # Names and patterns (user.42.*); ``*`` among them, like none at all, reads every stream.
    streams = list(selection(request.args.getlist("stream")))
    rights = _rights()
    rights.require_subscribe(streams)
    if _wants_event_stream():
        return _live(streams, rights, extra=set(request.args) - STREAM_PARAMETERS, envelope=True)
    return _audit_page(list(request.args.items(multi=True)))


@blueprint.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers. Also reports which worker process answered and its
    live subscribers; without access control, also how many events wait in their buffers
    (with it, that count would tell a stranger how busy other people's streams are)."""
    eventlog = current_eventlog()
    subscriptions = eventlog.hub.subscriptions()
    body: dict[str, Any] = {"status": "ok", "pid": os.getpid(), "subscribers": len(subscriptions)}
    if eventlog.auth is None:
        body["buffered_events"] = sum(s.pending for s in subscriptions)
    return _json(body)


@blueprint.get("/readyz")
def readyz() -> Response:
    """Readiness: 503 only when the database does not answer. Redis down is "degraded":
    publishing works, and every process still finds new events by polling. So is a read
    replica left out (down, lagging, not a standby): its reads go to the primary."""
    eventlog = current_eventlog()
    checks = eventlog.readiness()
    replicas = {
        name: {"state": r.state, "lag_seconds": r.lag_seconds}
        for name, r in eventlog.replica_states().items()
    }
    shown: dict[str, Any] = {**checks, "replicas": replicas} if replicas else dict(checks)
    if checks["database"] != "ok":
        return _json({"status": "unavailable", **shown}, 503)
    healthy = all(state == "ok" for state in checks.values()) and all(
        r["state"] == "ok" for r in replicas.values()
    )
    return _json({"status": "ready" if healthy else "degraded", **shown})


@blueprint.get("/metrics")
def metrics_text() -> Response:
    """Prometheus metrics, summed over the server's workers; 404 with EVENTLOG_METRICS=off.

    With access control on, they need a token that may subscribe to every stream (``*``):
    the counts describe the traffic of every stream, as reading all of them would."""
    if current_eventlog().settings.metrics == "off":
        raise NotFound("metrics are turned off (EVENTLOG_METRICS=off)")
    _rights().require_subscribe([])
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)


@blueprint.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI description of this API."""
    return Response(files(__package__).joinpath("openapi.json").read_bytes(), mimetype=JSON)


def handle_error(error: Exception) -> Response:
    """The one mapping from exceptions to RFC 9457 problem details."""
    # nosniff here too: the standalone app sends its routing errors (404, 405) through here.
    headers: dict[str, str] = dict(NOSNIFF)
    error = _database_failure(error)
    if isinstance(error, EventlogError):
        body = error.problem()
        headers.update(error.headers())
    elif isinstance(error, SecurityError):  # the Host check of the standalone app
        body = problem(
            400, "Host not allowed",
            f"this server does not answer to that Host name; list it in {key_of('allowed_hosts')}",
            slug="host-not-allowed",
        )
    elif isinstance(error, HTTPException):
        body = problem(error.code or 500, error.name, error.description or error.name)
        # Keep what the client needs to act on, such as Allow on a 405.
        headers.update((k, v) for k, v in error.get_headers() if k != "Content-Type")
    else:
        # Details stay in the log: they may hold configuration the caller must not see.
        if isinstance(error, SQLAlchemyError):
            log.error("database error (%s)", type(error).__name__)  # never its parameters
        else:
            log.exception("unhandled error")
        body = problem(500, "Internal server error", "the server failed; see its log")
    response = Response(json.dumps(body), status=body["status"], mimetype=PROBLEM_JSON)
    response.headers.update(headers)
    return response


blueprint.register_error_handler(Exception, handle_error)
# The browser files come with the API: one registration gives a host app everything.
blueprint.register_blueprint(assets.blueprint)


def _database_failure(error: Exception) -> Exception:
    """``error`` as eventlog's own error when it is the database's (the engine's module
    tells what it means), else ``error`` itself."""
    failure = classify(current_eventlog().engine, error)
    if failure is SchemaBehind:
        log.error("the database's schema is behind this version (%s): run eventlog db upgrade", type(error).__name__)
        return SchemaBehind(
            "the database's schema is behind this version of eventlog; run `eventlog db upgrade`"
        )
    if failure is OutOfSpace:
        log.error("the database is out of space (%s): nothing was stored", type(error).__name__)
        return OutOfSpace("the database is out of space; nothing was stored")
    if failure is StatementTimeout:
        cap = current_eventlog().settings.statement_timeout_seconds
        log.warning("a statement ran past the statement timeout (%g s)", cap)
        return StatementTimeout(
            f"the database stopped the request at its statement timeout ({cap:g} s) and"
            " stored nothing; it is overloaded: retry later, or send smaller batches"
        )
    if failure is not None:  # unreachable, or a wait (a lock, a connection) ran out
        # The type only: SQLAlchemy's message carries the statement's parameters (event data).
        log.warning("database unavailable (%s)", type(error).__name__)
        return DatabaseUnavailable("the database is unavailable; retry shortly")
    return error


def _rights() -> Rights:
    """What the request's token allows (everything when no key is configured)."""
    eventlog = current_eventlog()
    if eventlog.auth is None:
        return OPEN
    return eventlog.auth.verify(request_token(request, eventlog.settings.jwt_cookie))


def _is_live_request() -> bool:
    return request.method == "GET" and request.endpoint in LIVE_ENDPOINTS and _wants_event_stream()


def _live(streams: list[str], rights: Rights, *, extra: set[str], envelope: bool) -> Response:
    if extra:
        raise InvalidRequest(f"unknown query parameter(s) for a live stream: {sorted(extra)}")
    # The header is what a reconnecting EventSource sends; it wins over the URL's value,
    # which only a page reload uses.
    raw = request.headers.get("Last-Event-ID", request.args.get("last_event_id"))
    try:
        resume_after = sse.parse_last_event_id(raw)
    except ValueError as error:
        raise InvalidRequest(f"bad resume point: {error}") from None
    access: Access | None = request.environ.get(ACCESS)
    body = current_eventlog().stream(
        streams,
        resume_after,
        envelope=envelope,
        client_gone=request.environ.get(CLIENT_GONE),
        expires_at=rights.expires_at,
        on_end=None if access is None else access.stream_ended,
        # Taken: the server then hands this response to it (``server.with_connection``).
        outlet=request.environ.pop(OUTLET, None),
    )
    # Without a charset parameter: some SSE clients compare the type exactly, and the
    # format is UTF-8 by definition.
    response = Response(body, content_type=EVENT_STREAM)
    # The stream yields bytes: handed to the server as it is, with no wrappers of werkzeug's
    # around it, each of which an idle stream would carry as long as it lives.
    response.direct_passthrough = True
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response


def _audit_page(params: list[tuple[str, str]]) -> Response:
    if "Last-Event-ID" in request.headers or "last_event_id" in request.args:
        # Ignoring it would answer from the start of the log as if it had been honoured.
        raise InvalidRequest(
            "a resume point (Last-Event-ID, last_event_id) is for live streams (Accept:"
            " text/event-stream); an audit page continues with 'after'"
        )
    audit = parse_audit_query(params)
    page: Page = current_eventlog().page(
        audit.where, limit=audit.limit, newest_first=audit.newest_first
    )
    next_url = None
    if page.more and page.events:
        # Keyset pagination: the next page continues past the last id of this one. The link
        # is relative (path and query): it never repeats a Host header the client sent.
        bound = "before" if audit.newest_first else "after"
        # access_token never reaches request.args (see _keep_tokens_out_of_urls); the filter
        # says so where the link is built.
        kept = [(k, v) for k, v in request.args.items(multi=True) if k not in (bound, URL_TOKEN)]
        next_url = f"{request.script_root}{request.path}?{urlencode([*kept, (bound, str(page.events[-1].id))])}"
    events = ",".join(e.to_json() for e in page.events)
    # The highest id retention deleted in this page's range, over its streams: tells a
    # range where nothing happened from one whose events were pruned.
    pruned = json.dumps(page.pruned_through)
    return Response(
        f'{{"events":[{events}],"next":{json.dumps(next_url)},"pruned_through":{pruned}}}', mimetype=JSON
    )


def _events_json(events: list[StoredEvent]) -> str:
    return f'{{"events":[{",".join(e.to_json() for e in events)}]}}'


def _json_body() -> Any:
    mimetype = request.mimetype
    if mimetype != JSON and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(
            f"send the event as JSON with Content-Type: {JSON} (got {mimetype or 'none'!r})"
        )
    charset = request.mimetype_params.get("charset", "utf-8")
    if charset.lower() != "utf-8":
        raise UnsupportedMediaType(f"JSON is sent as UTF-8 (RFC 8259), not {charset[:40]!r}")
    return decode_json(request.get_data(cache=False), content_length=request.content_length)


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
