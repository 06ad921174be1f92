"""eventlog: a replayable event log served as Server-Sent Events and a JSON audit API."""

from __future__ import annotations

from .app import create_app
from .errors import (
    EventlogError,
    IdempotencyConflict,
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from .service import EventLog, current_eventlog
from .store import Appended, EventFilter, StoredEvent, append, query
from .validation import NewEvent, parse_events

__all__ = [
    "Appended",
    "EventFilter",
    "EventLog",
    "EventlogError",
    "IdempotencyConflict",
    "InvalidRequest",
    "NewEvent",
    "PayloadTooLarge",
    "StoredEvent",
    "UnsupportedMediaType",
    "append",
    "create_app",
    "current_eventlog",
    "parse_events",
    "query",
]
