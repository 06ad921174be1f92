"""The application factory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from . import api, assets
from .config import read_config
from .service import EventLog


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then ``EVENTLOG_*`` environment variables, then ``test_config``.

    The database schema is not touched here; ``eventlog serve`` migrates before it starts
    workers, and ``eventlog db upgrade`` does it as a deploy step.
    """
    app = Flask(__name__, static_folder=None)  # eventlog/static is served by assets.py
    app.config.update(read_config(test_config))
    EventLog(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(assets.bp)
    app.register_error_handler(Exception, api.handle_error)
    return app
