"""One worker's live buffers, bounded together in bytes, each shared frame counted once.

Each subscriber's buffer is bounded on its own (``EVENTLOG_SUBSCRIBER_BUFFER`` and
``EVENTLOG_SUBSCRIBER_BUFFER_BYTES``); this bounds them all (``EVENTLOG_LIVE_BYTES``). The hub
encodes each event once and every buffer it goes to holds a reference to that one frame, so
the worker holds a frame's bytes once however many buffers refer to it: the budget counts the
references to each frame, and the frame's bytes while there is at least one. A frame stays
counted from its push until its reader asks for more (the ``take`` after the one that handed
it over): the frames a stuck reader is still writing are held too, and count.

When a push takes the worker past the ceiling, buffers are dropped, the laggiest first (the
one that has waited longest with frames pending), until what is held fits again; that may be
the pushed buffer itself. Each dropped reader overflows and catches up from SQL from its own
cursor through the replay budget (``budget.py``), as after any overflow: nothing is lost or
doubled. Only a push adds bytes, and each push is fitted, so what is counted never stays past
the ceiling; a frame larger than the whole ceiling is never buffered (its readers replay it).

What is not counted: the hub's page being fanned out (``EVENTLOG_PAGE_BYTES``, one at a time),
and each buffer's list of references (8 bytes a frame, at most ``EVENTLOG_SUBSCRIBER_BUFFER``).

One lock guards the counts and every buffer they bound, so that a buffer and the counts move
together and a push may drop another reader's buffer. It is held only for list and dict work,
never across a wait or a write.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Protocol

from .sse import Frame

LIVE_BYTES = 128 * 1024 * 1024
"""The default ceiling (``EVENTLOG_LIVE_BYTES``)."""


class Holder(Protocol):
    """A buffer the budget may drop to make room."""

    def evict(self) -> None:
        """Drop every pending frame and flag an overflow; the caller holds the budget's lock."""


class LiveBudget:
    """A ceiling on the bytes of the distinct frames that one worker's live buffers hold."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        self._held = 0
        # Per frame, how many buffers (and readers still writing it) refer to it. Keyed by
        # id(): a Frame compares by value, and hashing it would hash its bytes. The id is the
        # frame's alone while it is counted, since whoever counts it keeps a reference.
        self._references: dict[int, int] = {}
        # The buffers with frames pending, in the order they began to wait: laggiest first.
        self._waiting: dict[Holder, None] = {}

    @property
    def held(self) -> int:
        """Bytes of the distinct frames counted right now."""
        return self._held

    def hold(self, frames: Iterable[Frame]) -> None:
        """Count a reference to each of ``frames``; the caller holds the lock."""
        references = self._references
        counted = references.get
        added = 0
        for frame in frames:  # per frame and reader, on every delivery: kept to a few lookups
            key = id(frame)
            count = counted(key, 0)
            if not count:
                added += len(frame.wire)
            references[key] = count + 1
        self._held += added

    def release(self, frames: Iterable[Frame]) -> None:
        """Forget one reference to each of ``frames``, which ``hold`` counted; the caller
        holds the lock."""
        references = self._references
        freed = 0
        for frame in frames:
            key = id(frame)
            count = references[key]
            if count > 1:
                references[key] = count - 1
            else:
                del references[key]
                freed += len(frame.wire)
        self._held -= freed

    def waiting(self, holder: Holder) -> None:
        """``holder``'s buffer has frames pending from now on (if it had none); the caller
        holds the lock."""
        self._waiting.setdefault(holder, None)

    def settled(self, holder: Holder) -> None:
        """``holder``'s buffer has no frames pending (taken or dropped); the caller holds
        the lock."""
        self._waiting.pop(holder, None)

    def fit(self) -> None:
        """Drop buffers, the laggiest first, until what is held is within the ceiling; the
        caller holds the lock. Each ``evict`` calls ``settled``, so this always ends."""
        while self._held > self.max_bytes and self._waiting:
            next(iter(self._waiting)).evict()
