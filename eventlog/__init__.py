"""eventlog: a replayable event log served as Server-Sent Events and a JSON audit API.

The public surface: the extension and the standalone app, the blueprint that mounts the HTTP
API in a host app, the event types, the errors, and the hook that keeps a host app's
autogenerate off eventlog's tables. Everything else is internal.

Names are imported when first used (PEP 562), so that ``eventlog.client`` loads neither
Flask nor SQLAlchemy nor redis: a program that only talks to a server needs none of them.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_MODULES = {
    "Appended": "store",
    "ConfigError": "errors",
    "EventFilter": "events",
    "EventLog": "extension",
    "EventlogError": "errors",
    "Forbidden": "errors",
    "IdempotencyConflict": "errors",
    "InvalidRequest": "errors",
    "NewEvent": "events",
    "Page": "store",
    "PayloadTooLarge": "errors",
    "QueryTooLong": "errors",
    "StoredEvent": "events",
    "Unauthorized": "errors",
    "UnsupportedMediaType": "errors",
    "blueprint": "api",
    "create_app": "app",
    "include_name": "migrate",
}

try:
    __version__ = version(__name__)
except PackageNotFoundError:  # the client's own distribution (client/) carries this package
    __version__ = version("eventlog-client")
"""This package's version, as installed."""

__all__ = sorted(_MODULES)


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # once: later lookups do not come back here
    return value
