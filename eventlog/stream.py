"""One subscriber's SSE stream: replay from SQL, then live events from the hub.

``event_stream`` is the single place where replay hands over to live delivery. It holds
the exactly-once, in-order guarantee for its subscriber, in three steps:

1. ``subscribe``: register with the hub first: every id after the hub's cursor at that
   moment (the subscription's ``position``) will be pushed into the subscriber's buffer;
2. ``replay``: send ``id > cursor`` from SQL, page by page, if the cursor is before that
   position (a live-only stream, or one resuming at or after it, asks SQL nothing);
3. ``live``: drain the buffer, skipping ids at or below the cursor (the replay sent them).

An overflowed buffer (a slow reader) goes back to step 2 from the same cursor. A stream
with ``expires_at`` (its token's expiry) ends when the hub marks its subscription expired,
between two writes, even when idle: its client must come back with a fresh token. The cursor
is the last id sent; only ``_Reader.send`` moves it. No database connection is held while
the stream waits or writes: each replay page borrows one briefly.

A stream given an ``Outlet`` (``eventlog serve``'s connection, ``server.py``) parks when live
and caught up: it yields ``PARK``, the server takes its socket and ends its greenlet, and a
stand-in (``_Standin``) writes what the hub pushes straight to the socket, moving the same
cursor. Anything the stand-in cannot finish resumes the stream where it parked, in a new
greenlet, with the same steps as before.

Retention may delete events a replay has not read yet, before it starts or while it runs.
Each replay page is read together with what was pruned of the stream's streams past the
cursor, in one statement (no transaction is held between statements while the worker is
busy elsewhere); anything new there becomes a ``reset`` event before the page, so a gap is
always announced, never silent.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from . import frames, metrics, sse
from .budget import ReplayBudget
from .events import RESET_TYPE, EventFilter
from .hub import Hub, Subscription
from .replicas import Replicas
from .sse import Frame
from .store import Page, Source, head, oldest, pages

log = logging.getLogger(__name__)

HEARTBEAT = sse.comment("heartbeat").encode()


class _Park(bytes):
    """The type of ``PARK``: bytes, so it passes any WSGI wrapper, but empty, so none writes it."""


PARK = _Park()
"""What a stream yields to park (compared by identity): the server takes over its socket."""


class Outlet(Protocol):
    """The connection a parked stream writes to (``server.py``)."""

    def parkable(self) -> bool:
        """Whether the stream may park now."""

    def write(self, data: bytes) -> bool:
        """Write ``data`` without waiting; whether all of it went. False: what is left
        waits for the stream to resume (or its client is gone, and it will end)."""

    def resume(self) -> None:
        """Run the parked stream again, where it parked."""

REPORT_SECONDS = 1.0
"""How often at most a live stream moves its count of events sent into the metrics, and
samples its delivery lag (also when it idles or ends). Under ``eventlog serve`` every metric
write is a locked write to a file shared by the workers: written per batch, they would cost a
large share of a delivery (bench/README.md, "Measurements behind design choices")."""


def event_stream(
    engine: Engine,
    hub: Hub,
    streams: Sequence[str],
    resume_after: int | None,
    *,
    retry_ms: int,
    reads: Replicas | None = None,
    envelope: bool = False,
    page_size: int = 1000,
    page_bytes: int = 8 * 1024 * 1024,
    client_gone: Callable[[], bool] | None = None,
    expires_at: float | None = None,
    on_end: Callable[[int, int], None] | None = None,
    budget: ReplayBudget | None = None,
    outlet: Outlet | None = None,
) -> Iterator[bytes]:
    """Yield SSE bytes for events of ``streams`` (names or patterns, ``events.matches``;
    all if empty) with id > ``resume_after``.

    Without a resume point the stream starts where the hub is: only new events. A resume
    point beyond the head gets a ``reset`` event, then continues from the head; so does one
    whose following events were pruned, which continues with what is kept. If the
    database fails, the stream ends (after ``retry:``, if nothing was sent yet): the client
    comes back and resumes, where an error status would make EventSource give up for good.

    ``envelope``: each frame's data is the whole stored event (the multi-stream endpoint).
    ``client_gone``, when the server can tell, says whether the client closed its end; it is
    asked at each heartbeat tick, and at once when its ``watch`` (if it has one) sees the
    socket close, so a closed idle stream ends then. Otherwise only a failed write ends it,
    and TCP accepts the first write after a close.
    ``expires_at`` (seconds since the epoch): the stream ends then, even while idle.
    ``on_end`` is called with the number of events sent when the stream ends, and the bytes
    written while parked (the access log; the others passed through the response).
    ``reads``: replays read from a replica that has reached the hub's cursor (else the
    primary); the head that decides a reset is always read from ``engine``, the primary.
    ``budget``: the worker's bound on all its replays together (none: this stream's alone).
    ``outlet``: the stream parks while it waits (``PARK``), and writes to it meanwhile.
    """
    subscription: Subscription | None = None
    reader: _Reader | None = None
    unwatch: Callable[[], None] | None = None
    started = False
    try:
        subscription = hub.subscribe(streams, envelope=envelope, expires_at=expires_at)
        watch = getattr(client_gone, "watch", None)
        if watch is not None:
            unwatch = watch(subscription.wake)

        def replay_source() -> Engine | Source:
            # Everything after the hub's cursor reaches the buffer: a replay must see every
            # event up to it, or it would end short of the buffer's first event.
            return engine if reads is None else reads.at_least(hub.cursor)

        reader = _Reader(
            engine, replay_source, subscription, tuple(subscription.streams), page_size, page_bytes,
            client_gone, budget or ReplayBudget(2 * page_bytes), outlet,
        )
        reset = reader.start(resume_after)
        # The first bytes go out at once, so headers flush; by now the subscriber is
        # registered and positioned, so nothing published from here on can be missed.
        started = True
        yield sse.retry(retry_ms).encode()
        if reset is not None:
            yield reset
        yield from reader.follow()
    except SQLAlchemyError as error:
        log.warning("ending a stream: database unavailable (%s)", type(error).__name__)
        if not started:
            yield sse.retry(retry_ms).encode()
    finally:
        if unwatch is not None:
            unwatch()
        if subscription is not None:
            hub.unsubscribe(subscription)
        if reader is not None:
            reader.report()
        if on_end is not None:
            sent, parked_bytes = (0, 0) if reader is None else (reader.sent, reader.parked_bytes)
            on_end(sent, parked_bytes)


class _Reader:
    """The steps of one stream after it has subscribed, around its cursor."""

    def __init__(
        self,
        engine: Engine,
        replay_source: Callable[[], Engine | Source],
        subscription: Subscription,
        streams: tuple[str, ...],
        page_size: int,
        page_bytes: int,
        client_gone: Callable[[], bool] | None,
        budget: ReplayBudget,
        outlet: Outlet | None = None,
    ) -> None:
        self._engine = engine
        self._replay_source = replay_source
        self._budget = budget
        self._subscription = subscription
        self._streams = streams
        self._page_size = page_size
        self._page_bytes = page_bytes
        self._client_gone = client_gone
        self.cursor = subscription.position  # the last id sent (or skipped as sent)
        self.ended = False
        self._told: dict[str, int] = {}  # per stream, the pruned bound a reset reported
        self.sent = 0  # events written
        self.parked_bytes = 0  # of their bytes, those the stand-in wrote while parked
        self._unreported = 0  # of those, not yet in the metrics
        self._report_at = 0.0  # time.monotonic() of the next live batch's report: the first at once
        self._metrics = metrics.get()
        self._standin = None if outlet is None else _Standin(self, outlet)

    def start(self, resume_after: int | None) -> bytes | None:
        """Place the cursor at the resume point; a ``reset`` frame if it lies beyond the head.

        A resume point before the subscription's position is replayed, and the replay's first
        page says whether events after it were pruned (``replay``): one check, in the same
        statement as the events it is about.
        """
        position = self._subscription.position
        if resume_after is None or resume_after <= position:
            self.cursor = position if resume_after is None else resume_after
            return None
        # Every id after ``position`` will arrive in the buffer; only a resume point past it
        # needs the database, to tell an id that is about to commit from one that never was.
        with self._engine.connect() as conn:
            newest = head(conn)
            if resume_after <= newest:
                self.cursor = resume_after
                return None
            self.cursor = newest
            self._metrics.resets["beyond_head"].inc()
            return self._reset(conn, resume_after, newest, id=newest)

    def _reset(self, conn: Connection, requested: int, newest: int, *, id: int) -> bytes:
        """The ``reset`` frame: the resume point could not be served exactly."""
        body = {"requested": requested, "oldest": oldest(conn, self._streams), "head": newest}
        return sse.encode(json.dumps(body), id=id, event=RESET_TYPE).encode()

    def _pruned_reset(self, page: Page) -> bytes | None:
        """A ``reset`` frame if ``page`` (read after the cursor) found events past the cursor
        pruned that no earlier reset reported; the stream goes on with what is kept."""
        if all(bound <= self._told.get(s, 0) for s, bound in page.pruned.items()):
            return None
        self._told.update(page.pruned)
        self._metrics.resets["pruned"].inc()
        with self._engine.connect() as conn:
            return self._reset(conn, self.cursor, head(conn), id=self.cursor)

    def follow(self) -> Iterator[bytes]:
        """Replay what lies before the subscription's position, then live, until the end."""
        if self.cursor < self._subscription.position:
            yield from self.replay()
        while not self.ended:
            yield from self.live()  # returns when the buffer overflowed, or the client left
            if not self.ended:
                yield from self.replay()

    def replay(self) -> Iterator[bytes]:
        """Everything after the cursor that is in SQL, page by page, each after a ``reset``
        if events past the cursor were pruned meanwhile.

        Each page holds room in the worker's budget from before it is read until it is
        written, and is read and encoded in one of the worker's few turns (``budget.py``).
        """
        where = EventFilter(streams=self._streams, after=self.cursor)
        # The pager holds no connection between pages: nothing to close if this ends early.
        pager = pages(
            self._replay_source(), where, size=self._page_size, max_bytes=self._page_bytes,
            with_pruned=True,
        )
        while True:
            # A page's rows, then its frames: at most twice its bytes at any moment.
            with self._budget.reserve(2 * self._page_bytes) as held:
                with self._budget.turn():
                    page = next(pager, None)
                    if page is None:
                        return
                    batch = [
                        f for _, f in frames.encode(page.events, envelope=self._subscription.envelope)
                    ]
                held.resize(2 * sum(len(f.wire) for f in batch))
                if self._subscription.expired:
                    self.ended = True
                    return
                reset = self._pruned_reset(page)
                if reset is not None:
                    yield reset
                if page.events:
                    self._metrics.replayed.inc(len(batch))
                    yield from self.send(batch, last_id=page.events[-1].id, paced=True)
                    self.report()

    def live(self) -> Iterator[bytes]:
        """Live events from the buffer, and heartbeats, until an overflow or the client leaves."""
        while True:
            standin = self._standin
            if standin is not None and standin.outlet.parkable() and self._subscription.park(standin):
                yield PARK  # resumed when the stand-in cannot go on: the buffer has what is new
            pushed, overflowed = self._subscription.take()
            if self._subscription.expired:
                self.ended = True  # what it missed is replayed when it comes back with a token
                return
            if overflowed:
                self._metrics.overflows.inc()
                return  # dropped events: the caller replays them from SQL, then carries on
            if not pushed:  # the hub's tick: idle for a heartbeat interval
                if self.gone():
                    self.ended = True
                    return
                yield HEARTBEAT
                continue
            fresh = [f for f in pushed if f.id > self.cursor]
            if fresh:
                sample = self.sample(fresh)
                yield from self.send(fresh, last_id=fresh[-1].id)
                if sample:
                    self.sampled()

    def gone(self) -> bool:
        """At a heartbeat tick: report, and say whether the client has gone."""
        self.report()
        return self._client_gone is not None and self._client_gone()

    def sample(self, fresh: list[Frame]) -> bool:
        """Whether this live batch is the one to sample (the delivery lag, observed now)
        and report (``sampled``, once it is written): at most once a ``REPORT_SECONDS``."""
        if time.monotonic() < self._report_at:
            return False
        self._metrics.delivery_lag.observe(time.time() - fresh[0].time.timestamp())
        return True

    def sampled(self) -> None:
        self.report()
        self._report_at = time.monotonic() + REPORT_SECONDS

    def send(self, batch: list[Frame], *, last_id: int, paced: bool = False) -> Iterator[bytes]:
        """Write ``batch`` and move the cursor to ``last_id`` (skipped events included);
        ``paced``: let the worker's other connections in after each write."""
        if not paced:
            yield from frames.chunks(batch)
        else:
            for chunk in frames.chunks(batch):
                # In pieces of at most CHUNK_BYTES (a large frame too), and after each one the
                # worker's other greenlets run: a catch-up takes turns with everyone else.
                for start in range(0, len(chunk), frames.CHUNK_BYTES):
                    yield chunk if len(chunk) <= frames.CHUNK_BYTES else chunk[start : start + frames.CHUNK_BYTES]
                    time.sleep(0)
        self.sent_through(batch, last_id)

    def sent_through(self, batch: list[Frame], last_id: int) -> None:
        """``batch`` is written: the cursor moves to ``last_id``."""
        self.cursor = last_id
        self.sent += len(batch)
        self._unreported += len(batch)

    def report(self) -> None:
        """Move the events sent since the last report into the metrics."""
        if self._unreported:
            self._metrics.delivered.inc(self._unreported)
            self._unreported = 0


class _Standin:
    """Writes a parked stream's live events and heartbeats, as ``_Reader.live`` would, at
    once and without a greenlet (``hub.Parked``); the reader resumes for anything else."""

    __slots__ = ("_reader", "outlet")

    def __init__(self, reader: _Reader, outlet: Outlet) -> None:
        self._reader = reader
        self.outlet = outlet

    def deliver(self, pushed: list[Frame]) -> bool:
        reader = self._reader
        fresh = [f for f in pushed if f.id > reader.cursor]
        if not fresh:
            return True
        sample = reader.sample(fresh)
        # One chunk: the hub hands a parked subscriber at most DIRECT_BYTES at a time.
        data = b"".join(f.wire for f in fresh)
        done = self.outlet.write(data)
        reader.parked_bytes += len(data)
        # Written, or handed to the outlet to finish first when the stream resumes.
        reader.sent_through(fresh, fresh[-1].id)
        if sample:
            reader.sampled()
        return done

    def beat(self) -> bool:
        # The client gone, or a heartbeat that did not fit: the reader's own tick ends the
        # stream, or writes another heartbeat after the rest of this one.
        if self._reader.gone():
            return False
        self._reader.parked_bytes += len(HEARTBEAT)
        return self.outlet.write(HEARTBEAT)

    def resume(self) -> None:
        self.outlet.resume()
