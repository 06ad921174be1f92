"""The hub: one per process, it turns doorbells into events for local subscribers.

On each ring, and every ``poll_seconds`` without one, the hub reads ``id > cursor`` from
SQL once (never once per client) and hands each subscriber the events of its streams.
The periodic read is what makes a lost notification (Redis down, a publisher that died
after commit) a delay instead of a loss.

Each subscriber has a buffer bounded in events and in bytes. When a push would overflow it,
the buffer is dropped and the subscriber is flagged; its stream then catches up from SQL from
its own cursor (see ``stream.py``). Frames are shared: a buffer holds references to the one
encoding of each event, so a slow reader costs at most its bound, never a copy per reader.
All buffers together hold at most the worker's ceiling, each shared frame counted once
(``live_budget.py``): past it the laggiest are dropped, and catch up from SQL the same way.
The hub's own reads are bounded in bytes too (``page_bytes``).

The hub survives anything one batch can throw at it: a failed read is retried at the next
ring or poll, an event that cannot be framed is skipped (``frames.py``), and any other error
is logged and the page handed to every subscriber's own catch-up from SQL; the thread never
ends and never retries one page forever.

The fan-out adapts to load. After each delivery round (the pushes, and the writes of the
readers they woke) the hub waits as long as that round took before the next one, but never
begins a round more than ``fanout_seconds`` after the previous one began: what arrives
meanwhile goes to each subscriber in one write. Every write to a
socket costs about the same whatever it carries, so a busy hub divides its CPU by the events
per write and spends at most about half its time delivering, while an idle one (a cheap round,
or a quiet spell longer than the last round) sends each event at once.

Events this process's writer committed come to its hub as they are (``offer``), before their
doorbell: when they follow the cursor, the hub fans them out without reading them back, and
reads SQL only when a doorbell announces more than it was handed (another process's events,
or an application transaction's), on a doorbell that does not know, and on every poll.

Without subscribers the hub reads no events: a doorbell moves its cursor to the id it announces
(committed, so a later subscriber's replay finds those events in SQL), and a poll to the head.

Heartbeats come from the hub too: every ``heartbeat_seconds`` one tick wakes the subscribers
that received nothing since the tick before. A stream then waits on its buffer without a
timeout; a timer per wait cost more CPU than the fan-out itself.

A subscription may have a deadline (its token's expiry): the same beat thread sleeps until
the next heartbeat or the earliest deadline, whichever comes first, and wakes an expired
subscriber so its stream ends. Streams without a deadline still cost no timer at all.

A reader with nothing to write may park its subscription (``Subscription.park``): until
something needs it, the hub hands pushes and ticks to a ``Parked`` stand-in that writes them
to the client at once, so an idle live stream keeps no greenlet, no stack and no request of
its own (``eventlog serve``, ``server.py``). Whatever the stand-in cannot finish at once (a
push too large for one write, a full socket, an overflow, an expiry, a client gone) resumes
the reader, which goes on exactly where it parked.
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from typing import Protocol

import gevent
from gevent import monkey
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from . import frames, metrics
from .events import EventFilter, StoredEvent, is_prefix, selection
from .live_budget import LIVE_BYTES, LiveBudget
from .notify import Notifier
from .sse import Frame
from .store import head, pages

log = logging.getLogger(__name__)

# Each push wakes a subscriber's writer, or writes to a parked one. Under gevent all of it runs
# in the process's one thread, so a fan-out to thousands would queue all other work (a publish,
# the database reply the next read waits for) behind all their writes. A pause after each
# slice lets that work in between (``_let_others_in``).
PUSH_SLICE = 100
SLICE_PAUSE_SECONDS = 0.0002


class Parked(Protocol):
    """What stands in for a parked reader (``Subscription.park``) while it waits.

    Each call is made with the worker's buffer lock held, and must not block: a ``False``
    hands the rest to the reader, which ``resume`` then wakes, once per park.
    """

    def deliver(self, frames: list[Frame]) -> bool:
        """Send ``frames`` (in id order, at most a chunk's bytes); whether it finished.
        False: they are taken all the same (partly written, or the client is gone)."""

    def beat(self) -> bool:
        """The heartbeat tick of an idle subscriber; whether it finished."""

    def resume(self) -> None:
        """Wake the reader: the subscription is no longer parked."""


DIRECT_BYTES = frames.CHUNK_BYTES
"""The largest push a parked reader's stand-in writes itself; a larger one goes through the
buffer, and the reader writes it in paced chunks as it would any other."""


class Subscription:
    """A local subscriber's bounded buffer of live events, filled by the hub.

    Bounded on its own (``limit`` events, ``limit_bytes``) and, with every other buffer of
    the worker, by ``budget`` (``live_budget.py``), which may drop it to make room.
    """

    def __init__(
        self,
        streams: frozenset[str],
        *,
        envelope: bool,
        limit: int,
        limit_bytes: int,
        budget: LiveBudget,
    ) -> None:
        self.streams = streams  # names and prefix patterns, none covering another; empty: all
        self.envelope = envelope  # frames carry the whole stored event (multi-stream)
        self.position = 0  # the hub's cursor when this registered: later ids all arrive here
        self.expired = False  # its deadline passed: the stream must end
        self._limit = limit
        self._limit_bytes = limit_bytes
        self._budget = budget
        self._frames: list[Frame] = []
        self._bytes = 0
        self._taken: list[Frame] = []  # handed to the reader by the last take(): being written
        self._overflowed = False
        self._closed = False
        self._heard = False  # whether anything was pushed since the hub's last tick
        self._lock = budget.lock  # one for the worker's buffers: a push may drop another's
        self._ready = threading.Event()
        self._parked: Parked | None = None  # stands in for the reader while it waits

    @property
    def pending(self) -> int:
        """How many events wait in the buffer."""
        return len(self._frames)

    def push(self, frames: list[Frame]) -> None:
        """Add events (in id order); past the limit, drop everything and flag an overflow.

        Past the worker's ceiling, the laggiest buffers are dropped (maybe this one)."""
        with self._lock:
            if self._overflowed or self._closed:
                return  # the reader will re-read all of it from SQL anyway, or is gone
            size = sum(len(f.wire) for f in frames)
            if (
                len(self._frames) + len(frames) > self._limit
                or self._bytes + size > self._limit_bytes
            ):
                self._drop()
            elif self._parked is not None and frames and size <= DIRECT_BYTES:
                # The buffer is empty while parked: nothing can come before these.
                self._heard = True
                if not self._parked.deliver(frames):
                    self._resume()
                return
            elif frames:
                if not self._frames:
                    self._budget.waiting(self)
                self._frames.extend(frames)
                self._bytes += size
                self._budget.hold(frames)
                self._budget.fit()
            self._heard = True
            self._ready.set()
            self._resume()

    def park(self, parked: Parked) -> bool:
        """Let ``parked`` stand in for the reader until something needs the reader itself,
        then call its ``resume``; False, and nothing changes, if something already does
        (the reader's next ``take`` returns at once)."""
        with self._lock:
            if self._ready.is_set() or self._closed:
                return False
            self._parked = parked
            return True

    def _resume(self) -> None:
        """Hand back to the reader, if parked; the caller holds the lock."""
        parked, self._parked = self._parked, None
        if parked is not None:
            parked.resume()

    def drop(self) -> None:
        """Drop the buffer and flag an overflow: the reader catches up from SQL."""
        with self._lock:
            self.evict()

    def evict(self) -> None:
        """``drop``, with the budget's lock held (the budget makes room with it)."""
        self._drop()
        self._ready.set()
        self._resume()

    def _drop(self) -> None:
        self._budget.release(self._frames)
        self._budget.settled(self)
        self._frames, self._bytes = [], 0
        self._overflowed = True

    def close(self) -> None:
        """The subscriber is gone: give back what its buffer held; pushes are ignored now."""
        with self._lock:
            self._budget.release(self._frames)
            self._budget.release(self._taken)
            self._budget.settled(self)
            self._frames, self._bytes, self._taken = [], 0, []
            self._closed = True
            self._parked = None

    def tick(self) -> None:
        """The hub's heartbeat tick: wake the reader if nothing was pushed since the last one."""
        with self._lock:
            if not self._heard:
                if self._parked is None:
                    self._ready.set()  # take() returns no events: the stream sends a heartbeat
                elif not self._parked.beat():
                    self._ready.set()  # the reader's own tick: the client gone, or a heartbeat
                    self._resume()
            self._heard = False

    def wake(self) -> None:
        """Wake the reader with nothing: it looks whether its client is still there."""
        with self._lock:
            self._ready.set()
            self._resume()

    def expire(self) -> None:
        """The deadline passed: wake the reader, which sees ``expired`` and ends."""
        with self._lock:
            self.expired = True
            self._ready.set()
            self._resume()

    def take(self) -> tuple[list[Frame], bool]:
        """Wait for events, or a heartbeat tick; return them and whether any were dropped.

        No events and no drop means the tick: the subscriber has been idle for a heartbeat.
        After a ``True`` the buffer starts afresh, so everything from then on arrives here again.
        The frames returned stay counted in the worker's budget until the next call: the
        reader writes them meanwhile, and holds them until it asks for more.
        """
        self._ready.wait()
        with self._lock:
            self._budget.release(self._taken)
            frames, overflowed = self._frames, self._overflowed
            self._budget.settled(self)
            self._taken = frames
            self._frames, self._bytes, self._overflowed = [], 0, False
            self._ready.clear()
        return frames, overflowed


class Hub:
    """Reads new events from SQL on each doorbell and fans them out to local subscribers."""

    def __init__(
        self,
        engine: Engine,
        notifier: Notifier,
        *,
        poll_seconds: float = 1.0,
        fanout_seconds: float = 0.0,
        heartbeat_seconds: float = 15.0,
        buffer: int = 1000,
        buffer_bytes: int = 8 * 1024 * 1024,
        page_size: int = 1000,
        page_bytes: int = 8 * 1024 * 1024,
        live: LiveBudget | None = None,
    ) -> None:
        self._engine = engine
        self._notifier = notifier
        self._poll_seconds = poll_seconds
        self._fanout_seconds = fanout_seconds
        self._calm_at = 0.0  # time.monotonic() before which the next fan-out waits (busy)
        self._announced = 0  # the highest id a doorbell announced
        self._heartbeat_seconds = heartbeat_seconds
        self._buffer = buffer
        self._buffer_bytes = buffer_bytes
        self._live = live or LiveBudget(LIVE_BYTES)
        self._page_size = page_size
        self._page_bytes = page_bytes
        self._lock = threading.Lock()
        # Subscribers by each name and prefix pattern they read (a pattern keeps its '*').
        self._by_stream: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._prefix_lengths: Counter[int] = Counter()  # of the patterns there, without '*'
        self._everything: set[Subscription] = set()
        # How many of the stream-filtered subscribers want each frame format, so a fan-out
        # encodes only the formats someone reads.
        self._formats: dict[bool, int] = {False: 0, True: 0}
        # Subscriptions with a deadline (time.monotonic()), and a heap of them, earliest first;
        # an unsubscribed one leaves its entry behind until it is popped or the heap is rebuilt.
        self._deadlines: dict[Subscription, float] = {}
        self._deadline_heap: list[tuple[float, int, Subscription]] = []
        self._beat_wake = threading.Event()
        self._cursor = 0
        # Events this process committed, handed over by its writer (``offer``), not yet fanned
        # out; and whether a doorbell said "unknown", which only a read from SQL answers.
        self._offered: list[list[StoredEvent]] = []
        self._offered_count = 0
        self._offered_bytes = 0
        self._unknown = False
        self._rung = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._metrics = metrics.get()

    @property
    def cursor(self) -> int:
        """The last id fanned out."""
        return self._cursor

    def subscriptions(self) -> set[Subscription]:
        """The local subscribers, right now."""
        with self._lock:
            return self._subscribed()

    def _subscribed(self) -> set[Subscription]:
        """Every subscriber, filtered or not; the caller holds the lock."""
        return self._everything.union(*self._by_stream.values())

    def subscribe(
        self,
        streams: Iterable[str] = (),
        *,
        envelope: bool = False,
        expires_at: float | None = None,
    ) -> Subscription:
        """Register a subscriber: every event committed after this call reaches its buffer.

        ``streams``: names and patterns (``events.matches``); none, or ``*``: every stream.
        ``envelope``: its frames carry the whole stored event, not only its data.
        ``expires_at`` (seconds since the epoch): from then on the subscription is
        ``expired`` and its reader is woken, within a few milliseconds.
        """
        self.start()
        subscription = Subscription(
            frozenset(selection(streams)),
            envelope=envelope,
            limit=self._buffer,
            limit_bytes=self._buffer_bytes,
            budget=self._live,
        )
        with self._lock:
            subscription.position = self._cursor
            if subscription.streams:
                self._formats[subscription.envelope] += 1
                for stream in subscription.streams:
                    self._by_stream[stream].add(subscription)
                    if is_prefix(stream):
                        self._prefix_lengths[len(stream) - 1] += 1
            else:
                self._everything.add(subscription)
            if expires_at is not None:
                deadline = time.monotonic() + (expires_at - time.time())
                self._deadlines[subscription] = deadline
                heapq.heappush(self._deadline_heap, (deadline, id(subscription), subscription))
        if expires_at is not None:
            self._beat_wake.set()  # it may be earlier than what the beat thread sleeps until
        self._metrics.live_subscribers.inc()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Remove a subscriber (again is harmless)."""
        with self._lock:
            found = subscription in self._everything
            self._everything.discard(subscription)
            if self._deadlines.pop(subscription, None) is not None and (
                len(self._deadline_heap) > 2 * len(self._deadlines) + 100
            ):  # drop the entries of ended subscriptions, so the heap stays in bounds
                self._deadline_heap = [(d, id(s), s) for s, d in self._deadlines.items()]
                heapq.heapify(self._deadline_heap)
            filtered = False
            for stream in subscription.streams:
                subscribers = self._by_stream.get(stream)
                if subscribers is not None and subscription in subscribers:
                    filtered = True
                    subscribers.remove(subscription)
                    if not subscribers:
                        del self._by_stream[stream]
                    if is_prefix(stream):
                        self._prefix_lengths[len(stream) - 1] -= 1
                        if not self._prefix_lengths[len(stream) - 1]:
                            del self._prefix_lengths[len(stream) - 1]
            if filtered:
                self._formats[subscription.envelope] -= 1
        subscription.close()  # after it left the hub's sets: no push holds frames for it again
        if found or filtered:
            self._metrics.live_subscribers.dec()

    def ring(self, last_id: int | None) -> None:
        """A doorbell: ids up to ``last_id`` (None: unknown) may be waiting in SQL."""
        if last_id is None or last_id > self._cursor:
            if last_id is None:
                self._unknown = True
            elif last_id > self._announced:
                self._announced = last_id
            self._rung.set()

    def offer(self, events: list[StoredEvent]) -> None:
        """Events this process has just committed (consecutive ids), before their doorbell.

        When they follow the hub's cursor, the hub fans them out as they are, without
        reading them back from SQL; otherwise (another process's or an application
        transaction's events come between) it reads SQL as for any doorbell. Kept only
        while someone subscribes, and up to a page (``page_size`` events, ``page_bytes`` of
        data, as a read from SQL would bring): beyond that, SQL serves, a page at a time.
        """
        with self._lock:
            if not (self._everything or self._by_stream):
                return  # a publish with nobody to read it pays nothing more here
            size = sum(len(e.data_json) for e in events)
            if (
                self._offered_count + len(events) > self._page_size
                or self._offered_bytes + size > self._page_bytes
            ):
                return
            self._offered.append(events)
            self._offered_count += len(events)
            self._offered_bytes += size

    def start(self) -> None:
        """Start the hub's threads (greenlets under gevent) on first use; idempotent."""
        with self._lock:
            if self._threads:
                return
            with self._engine.connect() as conn:
                self._cursor = head(conn)
            self._threads = [
                threading.Thread(target=self._run, name="eventlog-hub", daemon=True),
                threading.Thread(target=self._beat, name="eventlog-heartbeat", daemon=True),
                threading.Thread(
                    target=self._notifier.listen,
                    args=(self.ring, self._stop),
                    name="eventlog-doorbell",
                    daemon=True,
                ),
            ]
            for thread in self._threads:
                thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._rung.set()
        self._beat_wake.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            # False: the poll timeout woke us, so whatever the read finds, nobody announced.
            rung = self._rung.wait(self._poll_seconds)
            pause = self._calm_at - time.monotonic()
            if pause > 0:
                self._stop.wait(pause)  # rings meanwhile are served by the read that follows
            rung = rung or self._rung.is_set()
            self._rung.clear()
            try:
                found = self._catch_up(rung)
                if found and not rung:
                    self._metrics.polled.inc(found)
            except SQLAlchemyError as error:
                log.warning("hub could not read new events (%s); retrying", type(error).__name__)

    def _beat(self) -> None:
        next_beat = time.monotonic() + self._heartbeat_seconds
        while not self._stop.is_set():
            self._beat_wake.clear()  # before looking, so a deadline added meanwhile wakes us
            now = time.monotonic()
            if now >= next_beat:
                for subscription in self.subscriptions():
                    subscription.tick()
                next_beat = now + self._heartbeat_seconds
            wake_at = min(next_beat, self._expire_due(now))
            self._beat_wake.wait(max(0.0, wake_at - time.monotonic()))

    def _expire_due(self, now: float) -> float:
        """Expire the subscriptions whose deadline has passed; return the next deadline."""
        due: list[Subscription] = []
        with self._lock:
            heap = self._deadline_heap
            while heap and heap[0][0] <= now:
                _, _, subscription = heapq.heappop(heap)
                if self._deadlines.pop(subscription, None) is not None:
                    due.append(subscription)
            following = heap[0][0] if heap else math.inf
        for subscription in due:
            subscription.expire()
        return following

    def _catch_up(self, rung: bool) -> int:
        """Read everything after the cursor, page by page, and fan it out; how many ids it
        moved past. ``rung``: a doorbell woke the hub, not its poll."""
        start = self._cursor
        if self._skip_unread(rung):
            self._take_offered()  # behind the cursor now
            return self._cursor - start
        began = time.monotonic()
        # Seconds spent pushing, and letting the woken readers write.
        delivering = self._deliver_offered()
        # Read SQL unless the offered events were all a doorbell announced: a poll, a
        # doorbell past them (another process, an application's transaction) or an unknown
        # one may have more to find.
        if not rung or self._unknown or self._announced > self._cursor:
            self._unknown = False  # before the read: a later "unknown" gets a read of its own
            where = EventFilter(after=self._cursor)
            for page in pages(self._engine, where, size=self._page_size, max_bytes=self._page_bytes):
                delivering += self._deliver(page.events)
                if self._stop.is_set():
                    break
        # The next round begins no sooner than the deliveries of this one took again, and
        # never waits to begin more than fanout_seconds after this one began.
        self._calm_at = began + min(2 * delivering, self._fanout_seconds)
        return self._cursor - start

    def _take_offered(self) -> list[list[StoredEvent]]:
        with self._lock:
            offered, self._offered = self._offered, []
            self._offered_count = self._offered_bytes = 0
        return offered

    def _deliver_offered(self) -> float:
        """Fan out the offered runs, each cut to what lies past the cursor, while they follow
        it without a gap (SQL has what comes between); the seconds it took."""
        took = 0.0
        # Again after each delivery: the publishers it let run may have offered more.
        while offered := self._take_offered():
            for run in offered:
                fresh = [e for e in run if e.id > self._cursor]
                if not fresh:
                    continue  # read from SQL already, by an earlier round
                if fresh[0].id != self._cursor + 1:
                    return took
                took += self._deliver(fresh)
        return took

    def _deliver(self, events: list[StoredEvent]) -> float:
        """Fan ``events`` out and let the woken readers write; the seconds it took."""
        pushing = time.monotonic()
        try:
            self._fan_out(events)
        except Exception:  # a bug must not stop delivery, nor retry the same page forever
            log.exception("hub failed to fan out events %d-%d", events[0].id, events[-1].id)
            self._skip(events[-1].id)
        # Under gevent the readers woken above write in the order they were woken, and
        # this sleep resumes after them: the round's cost includes their writes.
        time.sleep(0)
        return time.monotonic() - pushing

    def resync(self) -> None:
        """Send every subscriber back to SQL from its own cursor, as after an overflow (a
        failover lost events it may have seen: ``timelines.py``)."""
        self._skip(self._cursor)

    def _skip_unread(self, rung: bool) -> bool:
        """Without subscribers, move the cursor to the announced id without reading the events
        (on a poll, to the head, so what came without a doorbell is still found and counted);
        whether there was nobody to read for."""
        with self._lock:
            if self._everything or self._by_stream:
                return False
            # Under the lock that registration takes: a subscriber positioned after this
            # replays these committed events from SQL; one before it is not possible.
            newest = self._announced
            if not rung:
                with self._engine.connect() as conn:
                    newest = max(newest, head(conn))
            self._cursor = max(self._cursor, newest)
            return True

    def _skip(self, last_id: int) -> None:
        """Move past a page that could not be fanned out: every subscriber catches up on it
        from SQL on its own, as after an overflow, so nobody misses it."""
        with self._lock:
            self._cursor = max(self._cursor, last_id)
            everyone = self._subscribed()
        for subscription in everyone:
            subscription.drop()

    def _wanting(self, stream: str) -> Iterator[Subscription]:
        """The stream-filtered subscribers that read ``stream``, each once; the caller holds
        the lock.

        Those that name it, then those with a pattern that matches it (``events.matches``),
        found under each prefix of the name that some pattern has: as many lookups as
        there are distinct pattern lengths, however many subscribers. A subscription's
        patterns never overlap (``events.selection``), so none is found twice.
        """
        yield from self._by_stream.get(stream, ())
        for length in self._prefix_lengths:
            if length < len(stream):
                yield from self._by_stream.get(stream[:length] + "*", ())

    def _fan_out(self, events: list[StoredEvent]) -> None:
        # Each event is encoded once per format here, however many subscribers it goes to.
        encoded: dict[bool, list[tuple[StoredEvent, Frame]]] = {}
        every: dict[bool, list[Frame]] = {}  # all frames of a format, shared by its readers

        def framed(envelope: bool) -> list[tuple[StoredEvent, Frame]]:
            if envelope not in encoded:
                encoded[envelope] = frames.encode(events, envelope=envelope)
            return encoded[envelope]

        def all_frames(envelope: bool) -> list[Frame]:
            if envelope not in every:
                every[envelope] = [f for _, f in framed(envelope)]
            return every[envelope]

        # Who gets what is settled under the lock, with the cursor's move: a subscriber
        # registers either before (and is pushed this batch) or after (its position is past
        # the batch, which is in SQL for its replay).
        with self._lock:
            if events[-1].id - self._cursor != len(events):
                # Ids have no gaps, so these were pruned before this read (a tiny
                # EVENTLOG_RETAIN_EVENTS): every subscriber catches up from SQL, which
                # tells it whether its streams lost events it had not read.
                for subscription in self._subscribed():
                    subscription.drop()
            # One list per format for every all-stream subscriber (never appended to below:
            # those are not in _by_stream), not a copy per subscriber under the lock.
            targets: dict[Subscription, list[Frame]] = {
                s: all_frames(s.envelope) for s in self._everything
            }
            for envelope in (e for e, count in self._formats.items() if count):
                for event, encoding in framed(envelope):
                    for subscription in self._wanting(event.stream):
                        if subscription.envelope is envelope:
                            targets.setdefault(subscription, []).append(encoding)
            self._cursor = events[-1].id
        for pushed, (subscription, matching) in enumerate(targets.items(), 1):
            if matching:
                subscription.push(matching)
            if pushed % PUSH_SLICE == 0:
                _let_others_in()


def _let_others_in() -> None:
    """Between two slices of a fan-out, let the process's other work run.

    Under gevent: until the loop is idle, so every socket that is ready (and every greenlet
    woken so far) runs first, and the fan-out resumes at once when none is. A timer would not
    do: the loop waits at least a millisecond for it when nothing else is ready, a tenth of a
    second in all for a fan-out to 10,000 parked streams; and sleep(0) may resume before the
    loop polls sockets at all. Between threads, a short sleep does.
    """
    if monkey.is_module_patched("time"):
        gevent.idle()
    else:
        time.sleep(SLICE_PAUSE_SECONDS)
