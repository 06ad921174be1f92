"""One worker's replays, bounded together: in bytes held, and in how many use the CPU at once.

Each reader's replay is bounded on its own (a page of ``EVENTLOG_PAGE_BYTES``); this bounds
them all. A page reserves room in the worker's ``ReplayBudget`` before it is read and gives
it back once its frames are written, so the bytes of all pages in flight (their rows and their
frames) stay under the ceiling however many readers fall behind at once; a replay that finds
the budget spent waits its turn, in order of arrival, while the rest of the worker carries on.
Reading and encoding a page is the part that holds the worker's one thread, so only ``turns``
replays do it at a time: every other connection of the worker waits behind at most that many
pages' CPU, never behind one from each lagging reader.

Under ``eventlog serve`` the locks are gevent's (the standard library is patched), so a replay
that waits parks only its own greenlet.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

TURNS = 2
"""Replays that read and encode a page at the same time, per worker."""


class Reservation:
    """Bytes a page holds of the budget, until its ``with`` block ends."""

    def __init__(self, budget: ReplayBudget, size: int) -> None:
        self._budget = budget
        self.size = size

    def resize(self, size: int) -> None:
        """Hold ``size`` bytes from now on (a page read smaller than it could have been)."""
        self._budget._change(self.size, size)
        self.size = size


class ReplayBudget:
    """A ceiling on the bytes of replay pages in flight in one worker, and turns for their CPU."""

    def __init__(self, max_bytes: int, *, turns: int = TURNS) -> None:
        self.max_bytes = max_bytes
        self._held = 0
        self._queue: list[object] = []  # waiters, in order of arrival
        self._changed = threading.Condition()
        self._turns = threading.BoundedSemaphore(turns)

    @property
    def held(self) -> int:
        """Bytes reserved right now."""
        return self._held

    @contextmanager
    def reserve(self, size: int) -> Iterator[Reservation]:
        """Wait until ``size`` bytes fit under the ceiling (at once if nothing else is held:
        a page larger than the whole ceiling still goes, alone), and hold them meanwhile."""
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            try:
                self._changed.wait_for(
                    lambda: self._queue[0] is ticket
                    and (self._held == 0 or self._held + size <= self.max_bytes)
                )
            finally:
                self._queue.remove(ticket)
                self._changed.notify_all()  # the next in line may fit too
            self._held += size
        reservation = Reservation(self, size)
        try:
            yield reservation
        finally:
            self._change(reservation.size, 0)

    @contextmanager
    def turn(self) -> Iterator[None]:
        """One of the few turns to use the CPU on a page (read it, encode it)."""
        with self._turns:
            yield

    def _change(self, before: int, after: int) -> None:
        with self._changed:
            self._held += after - before
            if after < before:
                self._changed.notify_all()
