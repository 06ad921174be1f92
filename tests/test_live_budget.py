"""The worker's ceiling on live buffers: a frame shared by many buffers counts once, a push past
the ceiling drops the laggiest buffers, and a reader dropped to make room still gets every
event exactly once, from SQL."""

from __future__ import annotations

import time

import pytest
from helpers import wait_until
from test_stream import read_until

from eventlog import ConfigError, EventLog
from eventlog.config import Settings
from eventlog.hub import Hub, Subscription
from eventlog.live_budget import LiveBudget
from eventlog.notify import LocalNotifier
from eventlog.sse import Frame, frame
from eventlog.stream import event_stream

MIB = 1024 * 1024


def big(id: int) -> Frame:
    return frame(id, "message", "x" * MIB, time.time())


def subscribed(budget: LiveBudget) -> Subscription:
    return Subscription(frozenset(), envelope=False, limit=1000, limit_bytes=8 * MIB, budget=budget)


def test_a_frame_in_many_buffers_counts_once() -> None:
    """20 buffers of the same 1 MiB frame hold 1 MiB of a 4 MiB ceiling, not 20 MiB."""
    budget = LiveBudget(4 * MIB)
    shared = big(1)
    readers = [subscribed(budget) for _ in range(20)]
    for reader in readers:
        reader.push([shared])
    assert budget.held == len(shared.wire)
    for reader in readers:
        assert reader.take() == ([shared], False)
    assert budget.held == len(shared.wire)  # still being written
    for reader in readers:
        reader.close()
    assert budget.held == 0


def test_past_the_ceiling_the_laggiest_buffer_is_dropped() -> None:
    budget = LiveBudget(3 * MIB + MIB // 2)
    a, b, c = (subscribed(budget) for _ in range(3))
    f1, f2, f3, f4 = (big(i) for i in range(1, 5))
    a.push([f1])
    b.push([f2])
    c.push([f3])
    assert budget.held == 3 * len(f1.wire)
    c.push([f4])  # 4 MiB: a has waited longest
    assert budget.held == 3 * len(f1.wire)
    assert a.take() == ([], True)
    assert b.take() == ([f2], False)
    assert c.take() == ([f3, f4], False)


def test_frames_being_written_count_until_the_reader_asks_for_more() -> None:
    """A reader that took a frame may still be writing it: a push that would pass the ceiling
    beside it is dropped (the taken frame cannot be), not let through."""
    budget = LiveBudget(MIB + MIB // 2)
    a, b = subscribed(budget), subscribed(budget)
    f1, f2, small = big(1), big(2), frame(3, "message", "1", time.time())
    a.push([f1])
    assert a.take() == ([f1], False)
    b.push([f2])
    assert budget.held == len(f1.wire)
    assert b.take() == ([], True)
    a.push([small])
    assert a.take() == ([small], False)  # asking for more: f1 is written
    assert budget.held == len(small.wire)
    b.push([f2])
    assert b.take() == ([f2], False)


def test_a_reader_dropped_for_room_gets_every_event_once(eventlog: EventLog) -> None:
    """Four stalled readers of four streams would hold 400 KB together, each well within its
    own buffer; the 256 KB ceiling drops the laggiest, and each still reads exactly its own
    events, in order, once it reads again."""
    budget = LiveBudget(256 * 1024)
    hub = Hub(eventlog.engine, LocalNotifier(), poll_seconds=0.05, heartbeat_seconds=0.2, live=budget)
    names = ["s1", "s2", "s3", "s4"]
    streams = [event_stream(eventlog.engine, hub, [name], None, retry_ms=100) for name in names]
    for stream in streams:
        next(stream)  # subscribed; then it stalls, as on a blocked socket write
    ids: dict[str, list[int]] = {name: [] for name in names}
    for _ in range(5):
        for name in names:
            [stored] = eventlog.publish_batch(name, [{"data": "x" * 20_000}])
            ids[name].append(stored.id)
    wait_until(lambda: hub.cursor == 20)
    assert budget.held <= budget.max_bytes
    assert min(s.pending for s in hub.subscriptions()) == 0  # at least one was dropped
    got = {name: [int(m.id) for m in read_until(stream, ids[name][-1]) if m.id] for name, stream in zip(names, streams)}
    for stream in streams:
        stream.close()
    hub.stop()
    assert got == ids
    assert budget.held == 0


def test_a_ceiling_below_one_buffer_is_refused() -> None:
    """Limits that contradict each other stop the process at start, naming both."""
    with pytest.raises(ConfigError, match="EVENTLOG_LIVE_BYTES .* EVENTLOG_SUBSCRIBER_BUFFER_BYTES"):
        Settings.from_config({"EVENTLOG_LIVE_BYTES": MIB, "EVENTLOG_SUBSCRIBER_BUFFER_BYTES": 2 * MIB})
    assert Settings.from_config({"EVENTLOG_LIVE_BYTES": MIB, "EVENTLOG_SUBSCRIBER_BUFFER_BYTES": MIB}).live_bytes == MIB
