"""The browser side, served from package data: the eventlog.js client and the /console page.

Each file is read once and served with an ETag and ``Cache-Control: no-cache``: browsers keep
a copy but ask before each use, so a deploy takes effect at the next page load and an unchanged
file costs a 304. ``/eventlog.mjs`` is ``eventlog.js`` with an export footer, so the module and
the classic script come from one source.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from flask import Blueprint, Response, request

blueprint = Blueprint("assets", __name__)

JAVASCRIPT = "text/javascript; charset=utf-8"  # RFC 9239
MODULE_FOOTER = b"\nexport const { subscribe, SSEParser } = globalThis.eventlog;\nexport default globalThis.eventlog;\n"


@dataclass(frozen=True)
class Asset:
    """A file's bytes, its content type and its ETag."""

    body: bytes
    content_type: str

    @property
    def etag(self) -> str:
        return hashlib.sha256(self.body).hexdigest()[:32]


@cache
def _asset(name: str, content_type: str, footer: bytes = b"") -> Asset:
    body = files(__package__).joinpath("static", name).read_bytes() + footer
    return Asset(body, content_type)


def _serve(asset: Asset) -> Response:
    response = Response(asset.body, content_type=asset.content_type)
    response.set_etag(asset.etag)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.make_conditional(request)  # a 304 for a matching If-None-Match
    return response


@blueprint.get("/eventlog.js")
def client_script() -> Response:
    """The browser client as a classic script (it sets ``globalThis.eventlog``)."""
    return _serve(_asset("eventlog.js", JAVASCRIPT))


@blueprint.get("/eventlog.mjs")
def client_module() -> Response:
    """The same client as an ES module, with named exports."""
    return _serve(_asset("eventlog.js", JAVASCRIPT, MODULE_FOOTER))


@blueprint.get("/console")
def console_page() -> Response:
    """The live console: watch streams, browse the log, publish."""
    return _serve(_asset("console.html", "text/html; charset=utf-8"))


@blueprint.get("/console.js")
def console_script() -> Response:
    """The console's script."""
    return _serve(_asset("console.js", JAVASCRIPT))


@blueprint.get("/console.css")
def console_style() -> Response:
    """The console's style sheet."""
    return _serve(_asset("console.css", "text/css; charset=utf-8"))
