"""Where a request carries its token, and the browser-facing headers (CORS) of the API.

HTTP only, no verification (``auth.py`` does that). A token comes, in this order of
precedence, from ``Authorization: Bearer``, from ``?access_token=`` (live streams only:
EventSource cannot set headers) or from a cookie (``EVENTLOG_JWT_COOKIE``).

A token in a URL would end up in access logs, error pages and ``next`` links, so
``take_url_tokens`` moves it out of the WSGI environ's query string and request URIs before
anything reads them: ``eventlog serve`` does it first thing for every request (its access log
is written from the same environ), the blueprint again for its own routes when embedded.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import unquote_plus

from flask import Request, Response

from .errors import Unauthorized

URL_TOKEN = "access_token"
URL_TOKENS = "eventlog.access_tokens"
"""WSGI environ key: the ``access_token`` values taken out of the request's URL."""
_URIS = ("RAW_URI", "REQUEST_URI")  # gunicorn's and Werkzeug's copies of the request target

CORS_METHODS = "GET, POST"
CORS_HEADERS = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID"
CORS_EXPOSED = "Idempotent-Replayed, Retry-After, WWW-Authenticate"
CORS_MAX_AGE = "600"


def take_url_tokens(environ: MutableMapping[str, Any]) -> tuple[str, ...]:
    """Remove every ``access_token`` from the request's URL; return their values.

    The rest of the query string is kept byte for byte. Idempotent: a second call returns
    what the first took.
    """
    taken: tuple[str, ...] | None = environ.get(URL_TOKENS)
    if taken is not None:
        return taken
    kept, tokens = [], []
    for piece in str(environ.get("QUERY_STRING", "")).split("&"):
        name, _, value = piece.partition("=")
        if unquote_plus(name) == URL_TOKEN:
            tokens.append(unquote_plus(value))
        elif piece:
            kept.append(piece)
    environ[URL_TOKENS] = taken = tuple(tokens)
    if taken:
        query = "&".join(kept)
        environ["QUERY_STRING"] = query
        for key in _URIS:
            if key in environ:
                path = str(environ[key]).partition("?")[0]
                environ[key] = f"{path}?{query}" if query else path
    return taken


def request_token(request: Request, cookie: str) -> str:
    """The request's token; Unauthorized (without an error code) when it sent none."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send the token as 'Authorization: Bearer <token>'")
        return token.strip()
    from_url = take_url_tokens(request.environ)
    if from_url:
        return from_url[0]
    from_cookie = request.cookies.get(cookie) if cookie else None
    if from_cookie:
        return from_cookie
    raise Unauthorized(
        "this server needs a token: send 'Authorization: Bearer <token>'", missing=True
    )


def add_cors_headers(request: Request, response: Response, origins: Iterable[str]) -> None:
    """Let the browser share ``response`` with the request's origin if it is listed.

    Only an exact listed origin is echoed, with credentials (cookies) allowed; any other
    origin gets no CORS header, so its browser refuses to hand over the answer.
    """
    allowed = frozenset(origins)
    if not allowed:
        return
    response.vary.add("Origin")  # a cache must not give one origin's answer to another
    origin = request.headers.get("Origin")
    if origin not in allowed:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Allow-Credentials"] = "true"
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
        response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
        response.headers["Access-Control-Max-Age"] = CORS_MAX_AGE
    else:
        response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSED
