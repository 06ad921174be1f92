#!/usr/bin/env python3
"""Pruning a million events: how much it slows publishing and live fan-out (PostgreSQL + Redis).

Two million old events are loaded straight into a fresh database (1,000,000 three days old,
1,000,000 two days old, in ten streams of their own) before eventlog starts. Then, on one
``eventlog serve --workers 2``:

    publish    single-event publish rate (publish.py's clients), without a prune, then while
               ``eventlog prune`` deletes the first million (EVENTLOG_RETAIN_SECONDS=2.5 days)
    fanout     1,000 subscribers at 100 events/s (streams.py's fan-out), p50/p99 latency,
               without a prune, then while ``eventlog prune`` deletes the second million

The prune runs as the ``eventlog prune`` command, the same code as the servers' background
pruner (whose interval is set to a day here, so it stays out of the way). Each line says how
long the prune took and how much of the measured window it covered.

    python bench/prune.py            # about 3 minutes
    python bench/prune.py --quick    # smoke run: 200,000 events per prune, short windows
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from _servers import EVENTLOG_BIN, REDIS_URL, EventlogServer, clean_env, describe_cpu, fresh_database
from publish import run_phase
from streams import _fanout_one, build_native_client

DAY = 86400
STREAMS = 10


def load(database_url: str, count: int) -> None:
    """Insert ``count`` events three days old, then ``count`` two days old, straight in SQL."""
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        for days, first in ((3, 1), (2, count + 1)):
            conn.execute(
                "INSERT INTO eventlog_events (id, stream, type, data, time)"
                " SELECT g, 'old-' || (g %% %(streams)s), 'order-created',"
                " '{\"n\":' || g || ',\"sku\":\"ABC-123\",\"qty\":2,\"note\":\"benchmark event\"}',"
                " now() - make_interval(days => %(days)s) + g * interval '1 microsecond'"
                " FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g",
                {"streams": STREAMS, "days": days, "first": first, "last": first + count - 1},
            )
        conn.execute("UPDATE eventlog_counter SET last_id = %s", (2 * count,))
        conn.execute("VACUUM ANALYZE events")


class Prune:
    """``eventlog prune`` in the background, keeping ``keep_seconds`` of events; it times itself."""

    def __init__(self, database_url: str, keep_seconds: int) -> None:
        env = {**clean_env(), "EVENTLOG_DATABASE_URL": database_url,
               "EVENTLOG_RETAIN_SECONDS": str(keep_seconds)}
        self.started = time.monotonic()
        self.process = subprocess.Popen([str(EVENTLOG_BIN), "prune"], env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
        self.ended: float | None = None
        self.output = ""
        self._thread = threading.Thread(target=self._wait, daemon=True)
        self._thread.start()

    def _wait(self) -> None:
        self.output = self.process.communicate()[0].strip()
        self.ended = time.monotonic()

    def finish(self) -> str:
        self._thread.join()
        assert self.ended is not None
        return f"{self.output} in {self.ended - self.started:.1f} s"

    def coverage(self, begin: float, end: float) -> str:
        """How much of the window [begin, end] the prune was running."""
        self._thread.join()
        assert self.ended is not None
        overlap = max(0.0, min(end, self.ended) - max(begin, self.started))
        return f"the prune ran during {overlap / (end - begin):.0%} of the measured window"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events per prune (default 1,000,000)")
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--only", choices=["publish", "fanout"], action="append")
    args = parser.parse_args()
    if args.quick:
        args.events = 200_000
    phases = args.only or ["publish", "fanout"]
    publish_args = argparse.Namespace(clients=8, warmup=3.0, duration=10.0, batch_size=1000, profile=None)
    fanout_args = argparse.Namespace(subscribers=1000, clients=4, settle=3.0, grace=10.0, rate=100.0,
                                     duration=10.0, publishers=4, profile=None)
    if args.quick:
        publish_args.warmup, publish_args.duration = 1.0, 3.0
        fanout_args.subscribers, fanout_args.duration = 200, 3.0
    print(f"prune bench: {args.events:,} events per prune, PostgreSQL + Redis, 2 gevent workers", flush=True)
    started = time.monotonic()
    with fresh_database(args.keep_db) as database_url, tempfile.TemporaryDirectory() as build:
        load(database_url, args.events)
        print(f"  loaded {2 * args.events:,} old events in {time.monotonic() - started:.0f} s", flush=True)
        env = {"EVENTLOG_RETAIN_SECONDS": str(DAY), "EVENTLOG_PRUNE_SECONDS": str(DAY)}
        with EventlogServer(database_url, args.redis_url, f"bench-prune-{uuid.uuid4().hex[:8]}",
                            extra_env=env) as server:
            if "publish" in phases:
                quiet = run_phase(server, "single", publish_args, 201, None, database_url)
                print(f"  publish, no prune : {quiet['events_per_s']:,.0f} events/s, request p99 "
                      f"{quiet['p99_ms']:.1f} ms; CPU: {describe_cpu(quiet['cpu'])}", flush=True)
                prune = Prune(database_url, int(2.5 * DAY))
                time.sleep(0.5)
                begin = time.monotonic() + publish_args.warmup
                busy = run_phase(server, "single", publish_args, 201, None, database_url)
                window = (begin, begin + publish_args.duration)
                print(f"  publish, pruning  : {busy['events_per_s']:,.0f} events/s, request p99 "
                      f"{busy['p99_ms']:.1f} ms; CPU: {describe_cpu(busy['cpu'])}\n"
                      f"    {prune.finish()}; {prune.coverage(*window)}", flush=True)
            if "fanout" in phases:
                client = build_native_client(Path(build))
                total = int(fanout_args.rate * fanout_args.duration)

                def fanout() -> dict[str, Any]:
                    return _fanout_one(fanout_args, "eventlog", server, 201, total, database_url, client)

                quiet = fanout()
                print(f"  fan-out, no prune : p50 {quiet['p50'] * 1000:.0f} ms, p99 {quiet['p99'] * 1000:.0f} ms, "
                      f"{quiet['missing']} missing\n    {quiet['summary']}", flush=True)
                # The subscribers take a few seconds to connect: start the prune so that it
                # is well under way when the events begin.
                busy: dict[str, Any] = {}
                runner = threading.Thread(target=lambda: busy.update(fanout()))
                began = time.monotonic()
                runner.start()
                time.sleep(fanout_args.settle)
                prune = Prune(database_url, DAY)
                runner.join()
                ended = time.monotonic() - began
                print(f"  fan-out, pruning  : p50 {busy['p50'] * 1000:.0f} ms, p99 {busy['p99'] * 1000:.0f} ms, "
                      f"{busy['missing']} missing\n    {busy['summary']}\n    {prune.finish()}, from"
                      f" {prune.started - began:.1f} s into a fan-out run of {ended:.1f} s", flush=True)
    print(f"done in {time.monotonic() - started:.0f} s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
