"""The event types: what goes into the log, what comes out, and which events a reader wants
(``EventFilter``, whose streams may be patterns: ``matches`` is the one definition of what a
pattern selects, for SQL, the hub and rights alike).

A leaf module (it imports only the pure SSE format, the strict JSON parser and the errors). Each type checks its
invariants when it is built, whatever the entry point (HTTP, the CLI, an application's own
code), so nothing reaches the table that the hub could not send, and no filter reaches the
database that it could not run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from collections.abc import Iterable
from typing import Any

from . import body as strict_json
from .errors import InvalidRequest, PayloadTooLarge
from .sse import DEFAULT_TYPE

NAME = re.compile(r"[A-Za-z0-9._:-]{1,200}")
PATTERN = re.compile(r"\*|[A-Za-z0-9._:-]{1,200}\*?")
"""A stream pattern, as tokens grant and readers select: a name, a prefix ending in ``*``, or ``*``."""
EVERY_STREAM = "*"
RESET_TYPE = "reset"
"""The type of the server's own signal that a resume point could not be served exactly."""
MAX_ID = 2**63 - 1  # ids are signed 64-bit integers in the table
STORED_KEYS = frozenset({"id", "stream", "type", "data", "time"})


@functools.lru_cache(maxsize=4096)
def is_name(value: str) -> bool:
    """Whether ``value`` is a valid stream or type name (``NAME``).

    Cached: publishing, replay and fan-out check the same few names again and again, and
    the lookup costs a fraction of the match."""
    return NAME.fullmatch(value) is not None


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it is a valid stream or type name, else raise InvalidRequest."""
    if not isinstance(value, str) or not is_name(value):
        shown = value[:50] if isinstance(value, str) else value
        raise InvalidRequest(
            f"{what} {shown!r} is invalid: use 1-200 characters of A-Z a-z 0-9 . _ : -"
        )
    return value


def check_pattern(value: str) -> str:
    """Return ``value`` if it is a valid stream pattern (see :func:`matches`), else raise
    InvalidRequest."""
    if not isinstance(value, str) or not PATTERN.fullmatch(value):
        shown = value[:50] if isinstance(value, str) else value
        raise InvalidRequest(
            f"stream name or pattern {shown!r} is invalid: use 1-200 characters of A-Z a-z 0-9 . _ : -,"
            " optionally ending in '*' for a prefix (user.42.*), or '*' alone"
        )
    return value


def is_prefix(pattern: str) -> bool:
    """Whether a valid ``pattern`` is a prefix pattern (``user.42.*``), not a name or ``*``."""
    return len(pattern) > 1 and pattern.endswith("*")


def prefix_range(pattern: str) -> tuple[str, str]:
    """The streams a prefix pattern matches, as the open range ``(low, high)``: exactly the
    names that start with the prefix and are longer than it.

    Stream names are ASCII, and the character after the prefix's last one bounds every
    continuation of it, so the range holds nothing else. As SQL (``low < stream < high``)
    a btree index on ``stream`` serves it on every database with a binary collation,
    where ``LIKE 'prefix%'`` needs special operator classes and escaping of ``_``.
    """
    prefix = pattern[:-1]
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


def matches(pattern: str, stream: str) -> bool:
    """Whether one valid pattern selects ``stream``: ``*`` every stream; ``user.42.*`` the
    names that continue ``user.42.`` by one character or more (``user.42.x``, never
    ``user.42`` or ``user.420.x``); a name only itself.

    The ``*`` stands for any continuation, separators included: ``user.42*`` matches
    ``user.420`` and ``user.42.x``, as a token's right does. SQL selects the same streams
    (``store.stream_condition``), from the same :func:`prefix_range`.

    Given a pattern for ``stream``, it says whether ``pattern`` covers it (matches every
    stream it matches): ``user.42.orders.*`` and ``user.42.*`` itself continue the prefix
    ``user.42.``, ``user.*`` and ``*`` do not. Rights are checked so (``auth.py``).
    """
    if pattern == EVERY_STREAM:
        return True
    if is_prefix(pattern):
        low, high = prefix_range(pattern)
        return low < stream < high
    return stream == pattern


def selection(patterns: Iterable[str]) -> tuple[str, ...]:
    """The streams ``patterns`` select, checked and simplified: ``()`` if one is ``*`` (every
    stream), else each pattern once, without those another one covers.

    So no stream is matched by two patterns of one selection: a reader that looks a stream
    up under each matching pattern finds its subscriber once.
    """
    checked = list(dict.fromkeys(check_pattern(p) for p in patterns))
    if EVERY_STREAM in checked:
        return ()
    # Only a prefix covers another pattern: names alone cost no comparisons.
    prefixes = [p for p in checked if is_prefix(p)]
    return tuple(p for p in checked if not any(q != p and matches(q, p) for q in prefixes))


# Built once: json.dumps with options builds an encoder per call, a third of its cost.
_DATA_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode_data(value: Any, *, max_bytes: int | None = None, where: str = "") -> str:
    """``value`` as compact one-line JSON text, refusing what JSON cannot carry.

    ``ensure_ascii=False`` keeps the text compact; JSON escapes CR and LF inside strings,
    so the result is always a single SSE data line.
    """
    try:
        data = _DATA_ENCODER.encode(value)
        size = len(data.encode())
    except UnicodeEncodeError:
        raise InvalidRequest(f"{where}'data' contains an unpaired surrogate") from None
    except ValueError as error:  # NaN or infinity: not JSON
        raise InvalidRequest(f"{where}'data' is not JSON: {error}") from None
    except (TypeError, RecursionError):
        raise InvalidRequest(f"{where}'data' must be made of JSON values") from None
    if max_bytes is not None and size > max_bytes:
        raise PayloadTooLarge(
            f"{where}'data' is {size} bytes as JSON; at most {max_bytes} are allowed",
            max_data_bytes=max_bytes,
        )
    return data


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event accepted for publishing; ``data`` is its JSON text, exactly as it is sent out.

    Built directly, the text is checked to be JSON; :meth:`of` encodes a Python value instead.
    """

    stream: str
    type: str
    data: str

    def __post_init__(self) -> None:
        check_name(self.stream, "stream name")
        check_name(self.type, "event type")
        if self.type == RESET_TYPE:
            raise InvalidRequest(f"the event type {RESET_TYPE!r} is reserved for the server")
        if not isinstance(self.data, str):
            raise InvalidRequest("'data' must be JSON text; NewEvent.of() encodes a value")
        try:
            strict_json.loads(self.data)
        except (ValueError, RecursionError) as error:
            raise InvalidRequest(f"'data' is not JSON text: {error}") from None

    @classmethod
    def of(
        cls, stream: str, value: Any, *, type: str = DEFAULT_TYPE, max_data_bytes: int | None = None
    ) -> NewEvent:
        """The event with ``value`` encoded as its data (checked, but not parsed back)."""
        check_name(stream, "stream name")
        check_name(type, "event type")
        if type == RESET_TYPE:
            raise InvalidRequest(f"the event type {RESET_TYPE!r} is reserved for the server")
        event = object.__new__(cls)
        # The encoder's output is JSON by construction: skip __post_init__'s parse.
        object.__setattr__(event, "stream", stream)
        object.__setattr__(event, "type", type)
        object.__setattr__(event, "data", encode_data(value, max_bytes=max_data_bytes))
        return event


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the log holds it: ``data`` is its value, ``data_json`` its JSON text as
    stored and sent out (what the server's own paths use, never parsing it)."""

    id: int
    stream: str
    type: str
    data_json: str
    time: datetime

    @property
    def data(self) -> Any:
        """The event's data as a Python value (parsed from ``data_json`` at each call)."""
        return json.loads(self.data_json)

    def to_json(self) -> str:
        """The event as a JSON object, with ``data`` spliced in as stored (no re-encoding)."""
        # stream and type are checked against [A-Za-z0-9._:-] on the way in: nothing to escape.
        return (
            f'{{"id":{self.id},"stream":"{self.stream}","type":"{self.type}",'
            f'"data":{self.data_json},"time":"{rfc3339(self.time)}"}}'
        )

    @classmethod
    def from_json(cls, text: str) -> StoredEvent:
        """The event that :meth:`to_json` wrote as ``text``; InvalidRequest if it is not one."""
        try:
            value = strict_json.loads(text)
        except (ValueError, RecursionError) as error:
            raise InvalidRequest(f"not a stored event: {error}") from None
        return cls.from_object(value)

    @classmethod
    def from_object(cls, value: Any) -> StoredEvent:
        """The event in ``value``, a decoded JSON object of :meth:`to_json`'s shape."""
        if not isinstance(value, dict) or value.keys() != STORED_KEYS:
            raise InvalidRequest(f"a stored event is an object with exactly {sorted(STORED_KEYS)}")
        id, time = value["id"], value["time"]
        if type(id) is not int or not 0 < id <= MAX_ID or not isinstance(time, str):
            raise InvalidRequest("a stored event's 'id' is a positive id and its 'time' a string")
        try:
            moment = utc(datetime.fromisoformat(time))  # rfc3339()'s output, exactly
        except ValueError:
            raise InvalidRequest(f"a stored event's time is not RFC 3339: {time[:40]!r}") from None
        return cls(
            id,
            check_name(value["stream"], "stream name"),
            check_name(value["type"], "event type"),
            encode_data(value["data"]),
            moment,
        )


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a query or a subscription wants: every given condition must hold.

    ``after``/``before`` are exclusive ids; ``since`` is inclusive and ``until`` exclusive,
    both kept in UTC.
    """

    streams: tuple[str, ...] = ()  # stream patterns (see ``matches``); empty: every stream
    types: tuple[str, ...] = ()
    after: int | None = None
    before: int | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "streams", selection(self.streams))
        for kind in self.types:
            check_name(kind, "event type")
        for name in ("after", "before"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_ID:
                raise InvalidRequest(f"{name!r} must be an id between 0 and {MAX_ID}")
        for name in ("since", "until"):
            moment = getattr(self, name)
            if moment is None:
                continue
            if moment.tzinfo is None:
                raise InvalidRequest(f"{name!r} must be a time with a zone")
            try:
                object.__setattr__(self, name, moment.astimezone(UTC))
            except OverflowError:
                raise InvalidRequest(f"{name!r} is outside the years 1 to 9999 in UTC") from None

    def beyond(self, event_id: int, *, newest_first: bool = False) -> EventFilter:
        """The same filter for the events past ``event_id`` (the next keyset page)."""
        if newest_first:
            return dataclasses.replace(self, before=event_id)
        return dataclasses.replace(self, after=event_id)


@functools.lru_cache(maxsize=1024)
def rfc3339(moment: datetime) -> str:
    """``moment`` in UTC as RFC 3339 with microseconds and a ``Z``.

    Cached: the events of one publish share their time, and a batch's answer, the audit
    pages and the multi-stream frames each format it for every event."""
    return utc(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive time (SQLite hands those back) is taken as UTC."""
    zone = moment.tzinfo
    if zone is UTC:  # every row read from PostgreSQL (its sessions are in UTC): as it is
        return moment
    return moment.replace(tzinfo=UTC) if zone is None else moment.astimezone(UTC)
