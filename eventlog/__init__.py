"""eventlog: a replayable event log served as Server-Sent Events and a JSON audit API.

The public surface: the extension and the standalone app, the blueprint that mounts the HTTP
API in a host app, the event types, the errors, and the hook that keeps a host app's
autogenerate off eventlog's tables. Everything else is internal.
"""

from __future__ import annotations

from importlib.metadata import version

from .api import blueprint
from .app import create_app
from .errors import (
    ConfigError,
    EventlogError,
    Forbidden,
    IdempotencyConflict,
    InvalidRequest,
    PayloadTooLarge,
    QueryTooLong,
    Unauthorized,
    UnsupportedMediaType,
)
from .events import EventFilter, NewEvent, StoredEvent
from .extension import EventLog
from .migrate import include_name
from .store import Appended, Page

__version__ = version(__name__)
"""This package's version, as installed."""

__all__ = [
    "Appended",
    "ConfigError",
    "EventFilter",
    "EventLog",
    "EventlogError",
    "Forbidden",
    "IdempotencyConflict",
    "InvalidRequest",
    "NewEvent",
    "Page",
    "PayloadTooLarge",
    "QueryTooLong",
    "StoredEvent",
    "Unauthorized",
    "UnsupportedMediaType",
    "blueprint",
    "create_app",
    "include_name",
]
