"""The application factory of the standalone server."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask
from werkzeug.exceptions import HTTPException

from . import api
from .config import from_environment
from .extension import EventLog


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
    app.register_blueprint(api.blueprint)
    # Here the whole app is eventlog's: routing errors (404, 405) are problem+json too.
    app.register_error_handler(HTTPException, api.handle_error)
    return app
