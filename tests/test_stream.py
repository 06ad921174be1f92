"""The replay→live handover of one subscriber, driven in-process (no HTTP in the way)."""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from helpers import wait_until
from sqlalchemy import event

from eventlog import EventLog, metrics
from eventlog.hub import PUSH_SLICE, Hub, Subscription
from eventlog.notify import LocalNotifier
from eventlog.sse import Decoder, Message
from eventlog.store import head
from eventlog.stream import PARK, event_stream


def read_until(stream: Iterator[bytes], last_id: int, timeout: float = 20) -> list[Message]:
    """Decode the stream until the event with ``last_id`` arrives."""
    decoder = Decoder()
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages += decoder.feed(next(stream))
        if any(m.id == str(last_id) for m in messages):
            return messages
    raise AssertionError(f"event {last_id} did not arrive; got up to {messages[-1:]}")


def publish_many(eventlog: EventLog, count: int, rng: random.Random, streams: list[str]) -> None:
    published = 0
    while published < count:
        size = min(rng.choice([1, 1, 2, 7]), count - published)
        events = [{"data": published + i} for i in range(size)]
        eventlog.publish_batch(rng.choice(streams), events)
        published += size
        if rng.random() < 0.3:
            time.sleep(rng.random() / 200)


def test_handover_has_no_gap_and_no_duplicate(eventlog: EventLog) -> None:
    """Invariant 3, over many randomized runs: events are published while the subscriber
    replays (in small pages, so replay and publishing overlap); the subscriber gets every id
    after its resume point exactly once, in order. Subscribing only after the replay, the
    naive order, loses the events committed in between."""
    rng = random.Random(20261124)
    for run in range(20):
        publish_many(eventlog, rng.randint(0, 20), rng, ["a"])
        with eventlog.engine.connect() as conn:
            before = head(conn)
        resume, count = rng.randint(0, before), rng.randint(1, 60)
        publisher = threading.Thread(target=publish_many, args=(eventlog, count, random.Random(run), ["a"]))
        stream = event_stream(
            eventlog.engine, eventlog.hub, [], resume, retry_ms=100, page_size=rng.choice([1, 2, 5, 100]),
        )
        publisher.start()
        assert next(stream).startswith(b"retry: 100")  # subscribed; the replay is next
        messages = read_until(stream, before + count)
        publisher.join()
        stream.close()
        assert [int(m.id) for m in messages] == list(range(resume + 1, before + count + 1)), f"run {run}"


class SlowDeliveryHub(Hub):
    """A real hub whose every delivery round takes ``delivery`` seconds, as a round of writes
    to thousands of readers does: the next round coalesces what arrived meanwhile."""

    delivery = 0.4

    def _fan_out(self, events: list[Any]) -> None:
        super()._fan_out(events)
        time.sleep(self.delivery)


# Every way the hub may fan out must keep the same contract; each strategy is a hub built on
# the eventlog's engine and notifier.
STRATEGIES: dict[str, Callable[[EventLog], Hub]] = {
    "default": lambda e: Hub(e.engine, e.notifier, poll_seconds=0.05, heartbeat_seconds=0.2),
    "each-event-alone": lambda e: Hub(
        e.engine, e.notifier, poll_seconds=0.05, heartbeat_seconds=0.2, fanout_seconds=0
    ),
    "busy-coalescing": lambda e: SlowDeliveryHub(
        e.engine, e.notifier, poll_seconds=0.05, heartbeat_seconds=0.2, fanout_seconds=0.05
    ),
    "one-event-pages": lambda e: Hub(
        e.engine, e.notifier, poll_seconds=0.05, heartbeat_seconds=0.2, page_size=1
    ),
    # The default hub, every stream parking while idle (``MemoryOutlet``).
    "parked": lambda e: Hub(e.engine, e.notifier, poll_seconds=0.05, heartbeat_seconds=0.2),
}


class MemoryOutlet:
    """A parked stream's outlet in memory (``stream.Outlet``): what the stand-in writes and
    what the stream yields once resumed go to one queue, in order, and every third write is
    taken only in part, as a full socket would. One resumed run at a time, as under gevent,
    where a stream has parked before the greenlet that resumes it can run."""

    def __init__(self) -> None:
        self.written: queue.Queue[bytes | None] = queue.Queue()
        self._stream: Iterator[bytes] | None = None
        self._rest = b""
        self._writes = 0
        self._running = threading.Lock()
        self._closing = False

    def parkable(self) -> bool:
        return True

    def write(self, data: bytes) -> bool:
        self._writes += 1
        if self._writes % 3:
            self.written.put(data)
            return True
        self.written.put(data[: len(data) // 2])
        self._rest = data[len(data) // 2 :]
        return False

    def resume(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        assert self._stream is not None
        with self._running:
            if self._rest:
                self.written.put(self._rest)
                self._rest = b""
            for data in self._stream:
                if data is PARK or self._closing:
                    return
                self.written.put(data)
            self.written.put(None)

    def drive(self, stream: Iterator[bytes]) -> Iterator[bytes]:
        """The bytes ``stream`` sends, parked or not."""
        self._stream = stream
        self.resume()
        try:
            while (data := self.written.get(timeout=20)) is not None:
                yield data
        finally:
            self._closing = True  # a running stream stops at its next write (a heartbeat)
            with self._running:
                stream.close()


def open_stream(strategy: str, *args: Any, **kwargs: Any) -> Iterator[bytes]:
    """``event_stream(*args, **kwargs)``, parking with a ``MemoryOutlet`` for "parked"."""
    if strategy != "parked":
        return event_stream(*args, **kwargs)
    outlet = MemoryOutlet()
    return outlet.drive(event_stream(*args, **kwargs, outlet=outlet))


class Racing:
    """Wraps a hub so that an event is committed and fanned out just before each subscriber
    registers: the moment where a naive handover (replay, then subscribe) loses it."""

    def __init__(self, eventlog: EventLog, hub: Hub) -> None:
        self.eventlog, self.hub = eventlog, hub

    def subscribe(
        self, streams: Iterable[str] = (), *, envelope: bool = False, expires_at: float | None = None
    ) -> Subscription:
        self.hub.start()
        racing = self.eventlog.publish("a", "racing")
        wait_until(lambda: self.hub.cursor >= racing.id)
        return self.hub.subscribe(streams, envelope=envelope, expires_at=expires_at)

    def unsubscribe(self, subscription: Subscription) -> None:
        self.hub.unsubscribe(subscription)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_fan_out_contract(eventlog: EventLog, strategy: str) -> None:
    """What every fan-out strategy must keep: an event committed while a subscriber registers
    is not lost; concurrent publishers' events reach each subscriber exactly once, in id
    order, and only those of its streams; a subscriber registered later gets only what follows."""
    for i in range(3):
        eventlog.publish("a", i)
    hub = STRATEGIES[strategy](eventlog)
    stream = open_stream(strategy, eventlog.engine, Racing(eventlog, hub), [], 1, retry_ms=100, page_size=1)
    messages = read_until(stream, 4)
    stream.close()
    assert [(m.id, m.data) for m in messages] == [("2", "1"), ("3", "2"), ("4", '"racing"')]

    only_a = open_stream(strategy, eventlog.engine, hub, ["a"], None, retry_ms=100)
    everything = open_stream(strategy, eventlog.engine, hub, [], None, retry_ms=100, envelope=True)
    next(only_a), next(everything)
    publishers = [
        threading.Thread(target=publish_many, args=(eventlog, 60, random.Random(n), ["a", "b"]))
        for n in range(3)
    ]
    for publisher in publishers:
        publisher.start()
    for publisher in publishers:
        publisher.join()
    with eventlog.engine.connect() as conn:
        last = head(conn)
        from eventlog import EventFilter
        from eventlog.store import read_page

        wanted = [e.id for e in read_page(conn, EventFilter(streams=("a",), after=4), limit=1000).events]
    assert [int(m.id) for m in read_until(everything, last)] == list(range(5, last + 1))
    late = open_stream(strategy, eventlog.engine, hub, ["a"], None, retry_ms=100)
    next(late)
    newest = eventlog.publish("a", "late").id
    assert [int(m.id) for m in read_until(only_a, newest)] == [*wanted, newest]
    assert [int(m.id) for m in read_until(late, newest)] == [newest]
    for stream in (only_a, everything, late):
        stream.close()
    hub.stop()


@pytest.mark.settings(EVENTLOG_POLL_SECONDS=30)
def test_own_commits_reach_the_hub_without_a_read_and_interleave_exactly_once(
    eventlog: EventLog,
) -> None:
    """Events this process's writer committed are fanned out as committed, without reading
    them back (the hub's own SQL reads are counted); events committed in an application's
    transaction come between them and are read from SQL. Every subscriber still gets each
    event once, in id order, and only its streams. A hub that took every offer as it came
    delivers the in-between events twice or out of order (checked by removing the gap test
    in ``Hub._following``)."""
    hub_reads: list[str] = []

    @event.listens_for(eventlog.engine, "before_cursor_execute")
    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if threading.current_thread().name == "eventlog-hub" and "FROM eventlog_events" in statement:
            hub_reads.append(statement)

    overflows = metrics.get().overflows
    overflowed = overflows._value.get()
    only_a = event_stream(eventlog.engine, eventlog.hub, ["a"], None, retry_ms=100)
    everything = event_stream(eventlog.engine, eventlog.hub, [], None, retry_ms=100, envelope=True)
    next(only_a), next(everything)
    wait_until(lambda: len(eventlog.hub.subscriptions()) == 2)
    first = eventlog.publish("a", "own").id
    for n in range(20):
        eventlog.publish("b" if n % 3 else "a", n)
        time.sleep(0.002)
    last = eventlog.publish("a", "own, last").id
    assert [int(m.id) for m in read_until(everything, last)] == list(range(first, last + 1))
    assert hub_reads == [], "the writer's own commits were read back from SQL"

    # Writer publishes and application transactions, from threads at once: the offered runs
    # have gaps that only SQL fills.
    def in_transactions(count: int) -> None:
        for n in range(count):
            with eventlog.engine.begin() as conn:
                eventlog.publish("a", {"tx": n}, session=conn)

    workers = [
        threading.Thread(target=publish_many, args=(eventlog, 40, random.Random(7), ["a", "b"])),
        threading.Thread(target=in_transactions, args=(15,)),
        threading.Thread(target=publish_many, args=(eventlog, 40, random.Random(8), ["a", "b"])),
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    newest = eventlog.publish("a", "newest").id
    with eventlog.engine.connect() as conn:
        from eventlog import EventFilter
        from eventlog.store import read_page

        wanted = [e.id for e in read_page(conn, EventFilter(streams=("a",), after=first - 1), limit=1000).events]
    assert [int(m.id) for m in read_until(everything, newest)] == list(range(last + 1, newest + 1))
    assert [int(m.id) for m in read_until(only_a, newest)] == wanted
    assert hub_reads, "the application's transactions were not read from SQL"
    # Nobody was sent back to SQL to repair what the hub pushed (the hub's safety net for a
    # gap, which hides a naive hand-over's duplicates and holes behind a catch-up).
    assert overflows._value.get() == overflowed
    only_a.close()
    everything.close()


@pytest.mark.settings(EVENTLOG_POLL_SECONDS=30, EVENTLOG_PAGE_BYTES=1000)
def test_own_commits_larger_than_a_page_are_read_from_sql_a_page_at_a_time(
    eventlog: EventLog,
) -> None:
    """A commit of more data than a page holds is not handed over whole: the hub reads it
    from SQL in pages of ``EVENTLOG_PAGE_BYTES``, as any other, and still delivers it once."""
    hub_pages: list[str] = []

    @event.listens_for(eventlog.engine, "before_cursor_execute")
    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if threading.current_thread().name == "eventlog-hub" and "FROM eventlog_events" in statement:
            hub_pages.append(statement)

    stream = event_stream(eventlog.engine, eventlog.hub, ["big"], None, retry_ms=100)
    next(stream)
    wait_until(lambda: len(eventlog.hub.subscriptions()) == 1)
    stored = eventlog.publish_batch("big", [{"data": "x" * 400} for _ in range(6)])
    assert [int(m.id) for m in read_until(stream, stored[-1].id)] == [e.id for e in stored]
    # Each page stops at the event that takes it past 1,000 bytes: three of about 400 each.
    assert len(hub_pages) == 2, "2,400 bytes of data came to the hub in one piece"
    stream.close()


def test_hub_without_subscribers_moves_on_without_reading(eventlog: EventLog) -> None:
    """With nobody subscribed, a doorbell moves the hub's cursor to the id it announces,
    without reading those events; a subscriber that comes later still gets each exactly once."""
    hub = Hub(eventlog.engine, eventlog.notifier, poll_seconds=5, heartbeat_seconds=0.2)
    hub.start()
    reads: list[int] = []
    original = hub._fan_out
    hub._fan_out = lambda events: (reads.append(len(events)), original(events))  # type: ignore[method-assign]
    ids = [eventlog.publish("a", i).id for i in range(3)]
    wait_until(lambda: hub.cursor == ids[-1])
    assert reads == []
    resumed = event_stream(eventlog.engine, hub, [], ids[0], retry_ms=100)
    live = event_stream(eventlog.engine, hub, [], None, retry_ms=100)
    next(resumed), next(live)
    ids.append(eventlog.publish("a", 3).id)
    assert [int(m.id) for m in read_until(resumed, ids[-1])] == ids[1:]
    assert [int(m.id) for m in read_until(live, ids[-1])] == ids[-1:]
    resumed.close()
    live.close()
    hub.stop()


def test_stream_filter_delivers_only_its_streams_in_order(eventlog: EventLog) -> None:
    rng = random.Random(7)
    stream = event_stream(eventlog.engine, eventlog.hub, ["a", "c"], 0, retry_ms=100, page_size=3)
    next(stream)
    publish_many(eventlog, 200, rng, ["a", "b", "c"])
    with eventlog.engine.connect() as conn:
        from eventlog import EventFilter
        from eventlog.store import read_page

        wanted = [e.id for e in read_page(conn, EventFilter(streams=("a", "c")), limit=1000).events]
    messages = read_until(stream, wanted[-1])
    stream.close()
    assert [int(m.id) for m in messages] == wanted


def test_slow_reader_has_a_bounded_buffer_and_still_gets_everything(eventlog: EventLog) -> None:
    """Invariant 5: a subscriber that stops reading holds at most ``buffer`` events in
    memory; when it reads again it catches up from SQL, missing nothing."""
    hub = Hub(eventlog.engine, LocalNotifier(), poll_seconds=0.05, heartbeat_seconds=0.2, buffer=10)
    stream = event_stream(eventlog.engine, hub, [], 0, retry_ms=100)
    next(stream)  # subscribed, then the reader stalls (as on a blocked socket write)
    rng = random.Random(3)
    publish_many(eventlog, 500, rng, ["a"])
    wait_until(lambda: hub.cursor == 500)
    [subscription] = hub.subscriptions()
    assert subscription.pending <= 10
    messages = read_until(stream, 500)
    assert [int(m.id) for m in messages] == list(range(1, 501))
    stream.close()
    assert hub.subscriptions() == set()
    hub.stop()


def test_resume_point_beyond_head_gets_a_reset_event_then_live(eventlog: EventLog) -> None:
    eventlog.publish("a", 1)
    stream = event_stream(eventlog.engine, eventlog.hub, [], 99, retry_ms=100)
    next(stream)
    reset = read_until(stream, 1)
    assert reset == [Message('{"requested": 99, "oldest": 1, "head": 1}', "reset", "1")]
    eventlog.publish("a", 2)
    assert [m.data for m in read_until(stream, 2)] == ["2"]
    stream.close()


def test_without_resume_point_only_new_events_arrive(eventlog: EventLog) -> None:
    eventlog.publish("a", "old")
    stream = event_stream(eventlog.engine, eventlog.hub, [], None, retry_ms=100)
    next(stream)
    eventlog.publish("a", "new")
    assert [m.data for m in read_until(stream, 2)] == ['"new"']
    stream.close()


def test_idle_stream_sends_a_heartbeat_every_interval(eventlog: EventLog) -> None:
    hub = Hub(eventlog.engine, LocalNotifier(), heartbeat_seconds=0.1)
    stream = event_stream(eventlog.engine, hub, [], None, retry_ms=100)
    next(stream)
    started = time.monotonic()
    assert [next(stream) for _ in range(3)] == [b": heartbeat\n"] * 3
    # The first tick comes within an interval of subscribing, then one every interval.
    assert 0.15 <= time.monotonic() - started < 2
    stream.close()
    assert hub.subscriptions() == set()
    hub.stop()


def test_stream_that_receives_events_gets_no_heartbeat(eventlog: EventLog) -> None:
    hub = Hub(eventlog.engine, eventlog.notifier, poll_seconds=0.05, heartbeat_seconds=0.3)
    stream = event_stream(eventlog.engine, hub, [], None, retry_ms=100)
    next(stream)
    chunks = []
    for i in range(10):
        eventlog.publish("a", i)
        chunks.append(next(stream))
        time.sleep(0.05)  # a sixth of an interval: each tick finds an event since the last
    stream.close()
    hub.stop()
    assert b": heartbeat" not in b"".join(chunks)
    assert [m.data for m in Decoder().feed(b"".join(chunks))] == [str(i) for i in range(10)]


@pytest.mark.parametrize("payload", ["line\u2028sep", "next\u0085line", "form\x0cfeed", "cr\rlf\n", "😀"])
def test_payload_with_line_separators_arrives_intact(eventlog: EventLog, payload: str) -> None:
    stream = event_stream(eventlog.engine, eventlog.hub, [], 0, retry_ms=100)
    next(stream)
    stored = eventlog.publish("a", {"text": payload})
    [message] = read_until(stream, stored.id)
    import json

    assert json.loads(message.data) == {"text": payload}
    stream.close()


def pushes_of(subscription: Subscription, pushes: list[tuple[float, list[int]]]) -> threading.Thread:
    """A reader that records when each take returned, and its ids, until a bare tick."""

    def read() -> None:
        while not pushes or pushes[-1][1] != [-1]:
            frames, _ = subscription.take()
            pushes.append((time.monotonic(), [f.id for f in frames] or [-1]))

    reader = threading.Thread(target=read)
    reader.start()
    return reader


@pytest.mark.parametrize("delivery", [0.0, 0.4])
def test_hub_coalesces_only_while_busy(eventlog: EventLog, delivery: float) -> None:
    """After a delivery round the hub waits as long as the round took (beginning the next no
    later than ``fanout_seconds`` after this one began), and the events of that wait reach a
    subscriber in one push; an idle hub, whose rounds cost nothing, pushes each at once."""
    hub = SlowDeliveryHub(eventlog.engine, eventlog.notifier, poll_seconds=5, fanout_seconds=1.0)
    hub.delivery = delivery
    subscription = hub.subscribe()
    pushes: list[tuple[float, list[int]]] = []
    reader = pushes_of(subscription, pushes)
    first = eventlog.publish("a", 0).id
    wait_until(lambda: len(pushes) == 1)
    ids = []
    for i in range(1, 6):
        ids.append(eventlog.publish("a", i).id)
        wait_until(lambda: delivery or pushes[-1][1] == ids[-1:])  # idle: each alone, at once
    wait_until(lambda: [i for _, taken in pushes for i in taken] == [first, *ids])
    time.sleep(2 * delivery + 0.1)  # quiet for longer than the last round
    published = time.monotonic()
    last = eventlog.publish("a", 6).id
    wait_until(lambda: pushes[-1][1] == [last])
    subscription.tick()  # ends the reader: a tick with nothing pushed since reads as []
    subscription.tick()
    reader.join(timeout=5)
    hub.unsubscribe(subscription)
    hub.stop()
    taken = [ids_ for _, ids_ in pushes]
    if delivery:
        assert taken == [[first], ids, [last], [-1]]  # the five waited for the busy round
        assert pushes[1][0] - pushes[0][0] >= delivery
    else:
        assert taken == [[first], *([i] for i in ids), [last], [-1]]
    assert pushes[2 if delivery else 6][0] - published < 0.3


def take_until(subscription: Subscription, last_id: int, timeout: float = 10) -> list[int]:
    """The ids pushed to ``subscription`` up to ``last_id`` (the hub's ticks bound each wait)."""
    received: list[int] = []
    deadline = time.monotonic() + timeout
    while received[-1:] != [last_id] and time.monotonic() < deadline:
        received.extend(f.id for f in subscription.take()[0])
    return received


def test_fan_out_in_slices_reaches_every_subscriber(eventlog: EventLog) -> None:
    """The hub pauses between slices of subscribers; every one of them still gets each batch,
    in order, and one registered after a batch gets only what follows it."""
    hub = Hub(eventlog.engine, eventlog.notifier, poll_seconds=0.05, heartbeat_seconds=0.1)
    subscriptions = [hub.subscribe(["a"] if n % 2 else ()) for n in range(2 * PUSH_SLICE + 50)]
    ids = [eventlog.publish("a", i).id for i in range(3)]
    wait_until(lambda: hub.cursor == ids[-1])
    late = hub.subscribe()
    ids.append(eventlog.publish("a", 3).id)
    for subscription in subscriptions:
        assert take_until(subscription, ids[-1]) == ids
    assert take_until(late, ids[-1]) == ids[-1:]
    hub.stop()


def test_stream_ends_at_a_tick_once_the_client_is_gone(eventlog: EventLog) -> None:
    hub = Hub(eventlog.engine, LocalNotifier(), heartbeat_seconds=0.1)
    gone = threading.Event()
    stream = event_stream(eventlog.engine, hub, [], None, retry_ms=100, client_gone=gone.is_set)
    next(stream)
    assert next(stream) == b": heartbeat\n"  # still there: the tick sends a heartbeat
    gone.set()
    assert list(stream) == []  # the next tick ends the stream instead
    assert hub.subscriptions() == set()
    hub.stop()


class BrokenOnceHub(Hub):
    """A real hub whose first fan-out fails, as a bug in it would."""

    failed = False

    def _fan_out(self, events: list[Any]) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("a bug in the fan-out")
        super()._fan_out(events)


def test_a_failed_fan_out_hands_its_page_to_every_subscriber_catch_up(eventlog: EventLog) -> None:
    """The hub moves past a page it could not fan out (instead of retrying it forever), and
    each subscriber reads that page from SQL itself: nobody misses an event."""
    hub = BrokenOnceHub(eventlog.engine, eventlog.notifier, poll_seconds=0.05, heartbeat_seconds=0.2)
    stream = event_stream(eventlog.engine, hub, ["a"], None, retry_ms=100)
    next(stream)
    first = eventlog.publish("a", 1)
    second = eventlog.publish("a", 2)
    messages = read_until(stream, second.id)
    stream.close()
    hub.stop()
    assert hub.failed
    assert [int(m.id) for m in messages] == [first.id, second.id]
