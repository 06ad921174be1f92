"""Checks on what callers send, done before any transaction starts (bad input stores nothing)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest, PayloadTooLarge
from .sse import DEFAULT_TYPE  # what EventSource's onmessage receives

NAME = re.compile(r"[A-Za-z0-9._:-]{1,200}")
EVENT_KEYS = frozenset({"type", "data"})


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event accepted for publishing; ``data`` is already one-line JSON text."""

    stream: str
    type: str
    data: str


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it is a valid stream or type name, else raise InvalidRequest."""
    if not NAME.fullmatch(value):
        raise InvalidRequest(
            f"{what} {value[:50]!r} is invalid: use 1-200 characters of A-Z a-z 0-9 . _ : -"
        )
    return value


def parse_events(
    stream: str, body: Any, *, max_data_bytes: int, max_batch: int
) -> tuple[list[NewEvent], bool]:
    """Turn a decoded publish body into events; the flag says whether it was a batch.

    A JSON object is one event, an array is an all-or-nothing batch.
    """
    check_name(stream, "stream name")
    if isinstance(body, dict):
        return [_parse_event(stream, body, max_data_bytes, None)], False
    if not isinstance(body, list):
        raise InvalidRequest("the body must be a JSON object (one event) or an array (a batch)")
    if not body:
        raise InvalidRequest("the batch is empty")
    if len(body) > max_batch:
        raise PayloadTooLarge(
            f"the batch has {len(body)} events; at most {max_batch} are allowed",
            max_batch=max_batch,
        )
    return [_parse_event(stream, item, max_data_bytes, i) for i, item in enumerate(body)], True


def _parse_event(stream: str, item: Any, max_data_bytes: int, index: int | None) -> NewEvent:
    where = "" if index is None else f"batch item {index}: "
    if not isinstance(item, dict):
        raise InvalidRequest(f"{where}an event must be a JSON object", index=index)
    unknown = item.keys() - EVENT_KEYS
    if unknown:
        raise InvalidRequest(f"{where}unknown field(s) {sorted(unknown)}; use 'type' and 'data'")
    if "data" not in item:
        raise InvalidRequest(f"{where}the event has no 'data' field", index=index)
    kind = item.get("type", DEFAULT_TYPE)
    if not isinstance(kind, str):
        raise InvalidRequest(f"{where}'type' must be a string", index=index)
    check_name(kind, f"{where}event type")
    # ensure_ascii=False keeps the text compact; JSON escapes CR and LF inside strings,
    # so the result is always a single SSE data line.
    data = json.dumps(item["data"], ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        size = len(data.encode())
    except UnicodeEncodeError:
        raise InvalidRequest(f"{where}'data' contains an unpaired surrogate", index=index) from None
    if size > max_data_bytes:
        raise PayloadTooLarge(
            f"{where}'data' is {size} bytes as JSON; at most {max_data_bytes} are allowed",
            index=index,
            max_data_bytes=max_data_bytes,
        )
    return NewEvent(stream, kind, data)
