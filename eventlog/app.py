"""The application factory of the standalone server."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from flask import Flask
from werkzeug.exceptions import HTTPException

from . import api
from .config import from_environment
from .extension import EventLog

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the standalone app: ``EVENTLOG_*`` environment variables, then ``test_config``
    (keys as in the environment, e.g. ``{"EVENTLOG_DATABASE_URL": ...}``).

    The database schema is not touched here; ``eventlog serve`` migrates before it starts
    workers, and ``eventlog db upgrade`` does it as a deploy step.
    """
    app = Flask("eventlog", static_folder=None)  # eventlog/static is served by the blueprint
    app.config.update(from_environment())
    if test_config is not None:
        app.config.update(test_config)
    events = EventLog(app)
    # Here the whole app is eventlog's: a Host it does not answer to (a DNS rebinding name
    # reaching a loopback server, say) is a 400 on every route.
    app.config["TRUSTED_HOSTS"] = events.settings.trusted_hosts()
    app.wsgi_app = _host_in_lower_case(app.wsgi_app)  # type: ignore[method-assign,assignment]
    app.register_blueprint(api.blueprint)
    # Here the whole app is eventlog's: routing errors (404, 405) are problem+json too.
    app.register_error_handler(HTTPException, api.handle_error)
    return app


def _host_in_lower_case(wsgi_app: WSGIApplication) -> WSGIApplication:
    """Host names compare case-insensitively (RFC 3986 §3.2.2); Werkzeug's host check does
    not, so the header is lowered before it (the allowed names are lower case already)."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if "HTTP_HOST" in environ:
            environ["HTTP_HOST"] = environ["HTTP_HOST"].lower()
        return wsgi_app(environ, start_response)

    return app
