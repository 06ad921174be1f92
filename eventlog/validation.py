"""Publish bodies: what callers send, turned into events before any transaction starts.

Bad input stores nothing: every check here runs before the database is touched.
"""

from __future__ import annotations

from typing import Any

from .errors import EventlogError, InvalidRequest, PayloadTooLarge
from .events import NewEvent, check_name
from .sse import DEFAULT_TYPE  # what EventSource's onmessage receives

EVENT_KEYS = frozenset({"type", "data"})


def parse_events(
    stream: str, body: Any, *, max_data_bytes: int, max_batch: int
) -> tuple[list[NewEvent], bool]:
    """Turn a decoded publish body into events; the flag says whether it was a batch.

    A JSON object (``{"type"?, "data"}``) is one event, an array is an all-or-nothing batch.
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
    try:
        return NewEvent.of(stream, item["data"], type=kind, max_data_bytes=max_data_bytes)
    except EventlogError as error:
        error.extensions.setdefault("index", index)
        if where:
            error.detail = f"{where}{error.detail}"
            error.args = (error.detail,)
        raise
