"""Prometheus metrics: every definition in one place, and their exposition for ``/metrics``.

    published_events_total{outcome}   events handed to publish: stored, idempotent_replay
                                      (returned from an earlier publish with the same key),
                                      refused (an idempotency conflict, or the database failed)
    publish_duration_seconds          one publish through the writer, from the call to its commit
    live_subscribers                  open live streams
    delivered_events_total            events written to subscribers, live or replayed (each
                                      stream adds its count at most once a second, and when
                                      it idles or ends)
    replayed_events_total             of those, the ones read from SQL (a resume point in the
                                      past, or a catch-up after a buffer overflow)
    delivery_lag_seconds              from an event's time to its stream's write: the oldest
                                      event of a live batch, sampled at most once a second
                                      per stream
    subscriber_overflows_total        buffers dropped for a slow reader (it catches up from SQL)
    resets_total{reason}              ``reset`` events sent: beyond_head, pruned
    pruned_events_total               events removed by retention
    notifier_connected                1 while the process hears notifications (Redis subscribed,
                                      or in-process); 0 while it only polls, or before its
                                      first stream started its hub
    polled_events_total               events the hub found on its periodic read, not by a ring:
                                      a silent Redis (or an announcement lost) shows here
    replica_lag_seconds{replica}      how far a read replica is behind the primary at the last
                                      check (the age of the oldest event it lacks); -1 unknown
    replica_in_use{replica}           1 while reads may go to the replica, 0 while it is left out
    replica_reads_total{source}       reads of replay and audit pages and exports by where
                                      they ran: a replica's name, or primary

All names carry the ``eventlog_`` prefix. Counters move once per batch, never per event per
subscriber, and a live stream's at most once a second (``stream.REPORT_SECONDS``): the fan-out
is the hot path.

Under ``eventlog serve`` each gunicorn worker writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (the server sets it) and ``/metrics`` sums them over the workers.
prometheus_client picks that storage when it is first imported, so it is imported here on
first use, never at import time: the server's master sets the directory before anything
imports it. Without the directory the metrics live in the process (an embedding app, tests),
in prometheus_client's default registry, where the app's own exposition finds them too.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
PUBLISH_OUTCOMES = ("stored", "idempotent_replay", "refused")
RESET_REASONS = ("beyond_head", "pruned")


class Metrics:
    """The process's metrics; label values are bound once, so the hot paths skip ``labels()``."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        published = Counter(
            "eventlog_published_events", "Events handed to publish, by outcome.", ["outcome"]
        )
        self.stored: Counter = published.labels("stored")
        self.idempotent_replay: Counter = published.labels("idempotent_replay")
        self.refused: Counter = published.labels("refused")
        self.publish_duration: Histogram = Histogram(
            "eventlog_publish_duration_seconds",
            "Time of one publish through the writer, from the call to its commit.",
        )
        self.live_subscribers: Gauge = Gauge(
            "eventlog_live_subscribers", "Open live streams.", multiprocess_mode="livesum"
        )
        self.delivered: Counter = Counter(
            "eventlog_delivered_events", "Events written to subscribers, live or replayed."
        )
        self.replayed: Counter = Counter(
            "eventlog_replayed_events", "Events written to subscribers from SQL (replay, catch-up)."
        )
        self.delivery_lag: Histogram = Histogram(
            "eventlog_delivery_lag_seconds",
            "From an event's time to its write to a live subscriber (a batch's oldest event;"
            " at most one batch per stream per second).",
        )
        self.overflows: Counter = Counter(
            "eventlog_subscriber_overflows",
            "Subscriber buffers dropped for a slow reader, which then caught up from SQL.",
        )
        resets = Counter("eventlog_resets", "Reset events sent to subscribers, by reason.", ["reason"])
        self.resets: dict[str, Counter] = {reason: resets.labels(reason) for reason in RESET_REASONS}
        self.pruned: Counter = Counter("eventlog_pruned_events", "Events removed by retention.")
        # The highest over live workers: a worker listens from its first stream on, so the
        # lowest would be 0 on any idle worker; Redis down takes every worker to 0.
        self.notifier_connected: Gauge = Gauge(
            "eventlog_notifier_connected",
            "1 while the process hears notifications (Redis subscribed, or in-process).",
            multiprocess_mode="livemax",
        )
        self.polled: Counter = Counter(
            "eventlog_polled_events", "Events the hub found by its periodic read, not by a notification."
        )
        # The worst over live workers: each checks the replicas on its own.
        self.replica_lag: Gauge = Gauge(
            "eventlog_replica_lag_seconds",
            "How far a read replica is behind the primary (the age of the oldest event it lacks); -1 unknown.",
            ["replica"],
            multiprocess_mode="livemax",
        )
        self.replica_in_use: Gauge = Gauge(
            "eventlog_replica_in_use",
            "1 while reads may go to the replica, 0 while it is left out (down, lagging, not a standby).",
            ["replica"],
            multiprocess_mode="livemin",
        )
        self.replica_reads: Counter = Counter(
            "eventlog_replica_reads",
            "Snapshot reads (replay and audit pages, exports) by where they ran: a replica, or primary.",
            ["source"],
        )


_metrics: Metrics | None = None
_lock = threading.Lock()


def get() -> Metrics:
    """The process's metrics, defined on first use."""
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics


def exposition() -> tuple[bytes, str]:
    """The metrics in the Prometheus text format, and its content type: summed over every
    worker that writes to ``PROMETHEUS_MULTIPROC_DIR`` when that is set."""
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        REGISTRY,
        CollectorRegistry,
        generate_latest,
    )

    get()  # so a scrape before any traffic still lists every metric
    registry = REGISTRY
    if os.environ.get(MULTIPROCESS_DIR):
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST
