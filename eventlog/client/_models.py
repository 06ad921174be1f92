"""What a subscription yields: events, and resets where the log could not continue exactly."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .. import body as strict_json
from ..errors import EventlogError, InvalidRequest
from ..events import StoredEvent, encode_data
from ._errors import local


@dataclass(frozen=True, slots=True)
class Event:
    """A stored event: ``data`` is its JSON value parsed, ``time`` an aware UTC datetime."""

    id: int
    stream: str
    type: str
    data: Any
    time: datetime

    @classmethod
    def from_object(cls, value: Any) -> Event:
        """The event in a decoded JSON object of the audit API's shape (checked: InvalidRequest
        if it is not one)."""
        try:
            stored = StoredEvent.from_object(value)
        except EventlogError as error:
            raise local(error) from None
        return cls(stored.id, stored.stream, stored.type, value["data"], stored.time)

    @classmethod
    def from_json(cls, text: str) -> Event:
        """The event in ``text``, the audit API's JSON shape (checked)."""
        try:
            value = strict_json.loads(text)
        except (ValueError, RecursionError) as error:
            raise local(InvalidRequest(f"not a stored event: {error}")) from None
        return cls.from_object(value)

    def to_json(self) -> str:
        """The event in the audit API's JSON shape, as the server writes it."""
        stored = StoredEvent(self.id, self.stream, self.type, encode_data(self.data), self.time)
        return stored.to_json()


@dataclass(frozen=True, slots=True)
class Reset:
    """The server could not continue exactly after ``requested``: it was beyond the ``head``
    (the log was replaced or restored), or events after it were pruned (``oldest`` is the
    first one kept, None if none is). The stream goes on after ``id``."""

    id: int
    requested: int
    oldest: int | None
    head: int
