"""``EventLog``: the Flask extension that wires settings, database, notifier and hub together.

Applications publish from their own code with it::

    events = EventLog(app)            # or EventLog() and later events.init_app(app)
    events.publish("orders", {"id": 7}, type="created")
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app
from sqlalchemy import Engine

from .config import Settings
from .database import make_engine
from .hub import Hub
from .notify import LocalNotifier, Notifier, RedisNotifier
from .sse import DEFAULT_TYPE
from .store import Appended, Publish, StoredEvent
from .validation import NewEvent, parse_events
from .writer import Writer

EXTENSION_KEY = "eventlog"


class EventLog:
    """The event log of one Flask app: publish (store, then announce) and subscribe."""

    settings: Settings
    engine: Engine
    notifier: Notifier
    hub: Hub
    writer: Writer

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        self.settings = Settings.from_mapping(app.config)
        self.engine = make_engine(self.settings.database_url)
        self.notifier = (
            RedisNotifier(self.settings.redis_url, self.settings.redis_channel)
            if self.settings.redis_url
            else LocalNotifier()
        )
        self.hub = Hub(
            self.engine,
            self.notifier,
            poll_seconds=self.settings.poll_seconds,
            fanout_seconds=self.settings.fanout_seconds,
            heartbeat_seconds=self.settings.heartbeat_seconds,
            buffer=self.settings.subscriber_buffer,
        )
        self.writer = Writer(self.engine, self.notifier.announce)
        app.config["MAX_CONTENT_LENGTH"] = self.settings.max_request_bytes
        app.extensions[EXTENSION_KEY] = self

    def publish(self, stream: str, data: Any, *, type: str = DEFAULT_TYPE) -> StoredEvent:
        """Validate, store and announce one event; raises InvalidRequest on bad input."""
        events, _ = parse_events(
            stream,
            {"type": type, "data": data},
            max_data_bytes=self.settings.max_data_bytes,
            max_batch=self.settings.max_batch,
        )
        return self.append(events).events[0]

    def append(self, events: list[NewEvent], *, idempotency_key: str | None = None) -> Appended:
        """Store already-validated events (committed on return), then announce them."""
        return self.writer.append(Publish(events, idempotency_key))

    def close(self) -> None:
        """Stop the hub and the notifier's threads and close database connections."""
        self.hub.stop()
        self.notifier.close()
        self.writer.close()
        self.engine.dispose()


def current_eventlog() -> EventLog:
    """The EventLog of the app handling the current request or CLI command."""
    extension: EventLog = current_app.extensions[EXTENSION_KEY]
    return extension
