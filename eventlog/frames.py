"""Stored events as SSE frames: each event encoded once, however many readers it goes to.

A frame's ``data`` is the event's data alone on a single stream's endpoint, and the whole
stored event (``{"id", "stream", "type", "data", "time"}``, the audit API's shape) on the
multi-stream endpoint, where a reader must tell from the frame which stream it came from.

An event that cannot be framed (a row written straight into the table with a type that
would break the frame, say) is logged by id and skipped: one bad row never stops a stream
or the hub, and every reader's cursor still moves past it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from . import sse
from .events import StoredEvent, is_name
from .sse import Frame

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
"""Small frames are joined into writes of up to this size; a larger frame goes alone."""


def encode(events: Iterable[StoredEvent], *, envelope: bool) -> list[tuple[StoredEvent, Frame]]:
    """Each event that can be sent, with its frame."""
    encoded = []
    for event in events:
        if not (is_name(event.stream) and is_name(event.type)):
            log.error("event %d has a stream or type name that SSE cannot carry; skipped", event.id)
            continue
        data = event.to_json() if envelope else event.data_json
        encoded.append((event, sse.frame(event.id, event.type, data, event.time)))
    return encoded


def chunks(frames: Iterable[Frame]) -> Iterator[bytes]:
    """The frames' bytes as few writes as possible, none much over ``CHUNK_BYTES``.

    One write per batch keeps a busy stream cheap; the cap keeps a batch of large events
    from being copied into one huge buffer per reader.
    """
    pending: list[bytes] = []
    size = 0
    for frame in frames:
        if pending and size + len(frame.wire) > CHUNK_BYTES:
            yield _joined(pending)
            pending, size = [], 0
        pending.append(frame.wire)
        size += len(frame.wire)
    if pending:
        yield _joined(pending)


def _joined(parts: list[bytes]) -> bytes:
    return parts[0] if len(parts) == 1 else b"".join(parts)  # no copy of a lone frame
