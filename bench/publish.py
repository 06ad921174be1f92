#!/usr/bin/env python3
"""Publishing throughput over HTTP: eventlog (PostgreSQL + Redis) vs Flask-SSE (Redis) vs Nchan.

Client processes (8 by default), each with one keep-alive HTTP/1.1 connection
(a raw socket), POST as fast as the server answers. After a warm-up, events whose
request completes inside a fixed window are counted.

    single  one event per request             eventlog target >= 5,000 events/s
    batch   arrays of 1,000 events (eventlog)   eventlog target >= 120,000 events/s
    noop    a Flask POST route that does nothing, under the same gunicorn: the ceiling
            for any Flask app on this machine right now (calibration, not a contender)
    nchan   Nchan (nginx's pub/sub module, from Debian's packages, installed with apt-get
            when missing): the same single events POSTed to its publisher location

Flask-SSE and Nchan have no batch publish: their rows show their single-event rates only.
eventlog and Flask-SSE run under gunicorn with 2 gevent workers (eventlog on a fresh
database); Nchan runs one nginx worker process, its buffer holding the last 100,000 messages.
Each phase prints where the CPU went (the machine, the server's workers, PostgreSQL, the
bench's own clients), so a figure from a busy machine can be read for what it is.

    python bench/publish.py             # defaults: 3 s warm-up, 10 s window per phase
    python bench/publish.py --quick     # smoke run
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from _clients import Ok, Publisher, accepted, percentile
from _servers import (
    REDIS_URL,
    NCHAN_BUFFER,
    CpuMeter,
    EventlogServer,
    FlaskSseServer,
    NchanServer,
    Profiler,
    describe_cpu,
    env_pairs,
    pgbench_tps,
    fresh_database,
    ratio,
    table,
    verdict,
)

# Issue #18's targets.
TARGET_SINGLE = 5000.0
TARGET_BATCH = 120000.0
STREAM = "bench-publish"


def single_body(client: int, n: int) -> bytes:
    return (
        b'{"type":"order-created","data":{"client":%d,"n":%d,"sku":"ABC-123","qty":2,'
        b'"note":"benchmark event"}}' % (client, n)
    )


def batch_body(client: int, size: int) -> bytes:
    items = b",".join(
        b'{"type":"order-created","data":{"client":%d,"n":%d,"sku":"ABC-123","qty":2,'
        b'"note":"benchmark event"}}' % (client, n)
        for n in range(size)
    )
    return b"[" + items + b"]"


def client_main(index: int, port: int, path: str, mode: str, batch: int, ok_status: Ok,
                go: Any, window: Any, results: Any) -> None:
    """One load process: publish until the window closes; report what completed in it."""
    publisher = Publisher(port)
    body = batch_body(index, batch) if mode == "batch" else None
    per_request = batch if mode == "batch" else 1
    results.put(("ready", index))
    if not go.wait(120):
        results.put(("result", index, None))
        return
    begin, end = window[0], window[1]
    done = errors = 0
    latencies: list[float] = []
    n = 0
    hard_stop = end + 60  # a request stuck past the window cannot hang the bench
    while True:
        started = time.monotonic()
        if started >= end or started >= hard_stop:
            break
        n += 1
        status, _ = publisher.post(path, body if body is not None else single_body(index, n))
        finished = time.monotonic()
        if not accepted(status, ok_status):
            errors += 1
            if status == 0:
                time.sleep(0.05)
            continue
        if begin <= finished < end:
            done += 1
            latencies.append(finished - started)
    publisher.close()
    results.put(("result", index, {"requests": done, "events": done * per_request,
                                   "errors": errors, "latencies": latencies}))


def run_phase(server: Any, mode: str, args: argparse.Namespace, ok_status: Ok,
              profile_label: str | None, database_url: str | None = None,
              path: str | None = None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    go = ctx.Event()
    window = ctx.Array("d", 2)
    procs = [
        ctx.Process(target=client_main, daemon=True, args=(
            i, server.port, path or server.publish_path(STREAM), mode, args.batch_size, ok_status,
            go, window, results))
        for i in range(args.clients)
    ]
    for proc in procs:
        proc.start()
    ready = 0
    deadline = time.monotonic() + 60
    while ready < len(procs) and time.monotonic() < deadline:
        if results.get(timeout=max(0.1, deadline - time.monotonic()))[0] == "ready":
            ready += 1
    begin = time.monotonic() + args.warmup
    window[0], window[1] = begin, begin + args.duration
    go.set()
    time.sleep(args.warmup)
    meter = CpuMeter(server, database_url, [p.pid for p in procs]).start()
    profiler = Profiler(server, args.profile, profile_label, args.duration) if profile_label else None
    if profiler:
        profiler.__enter__()
    time.sleep(max(0.0, window[1] - time.monotonic()))
    cpu = meter.stop()
    reports = []
    deadline = time.monotonic() + 120
    while len(reports) < len(procs) and time.monotonic() < deadline:
        message = results.get(timeout=max(0.1, deadline - time.monotonic()))
        if message[0] == "result":
            reports.append(message[2])
    for proc in procs:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()
    if profiler:
        profiler.__exit__(None, None, None)
    good = [r for r in reports if r]
    latencies = sorted(x for r in good for x in r["latencies"])
    return {
        "events_per_s": sum(r["events"] for r in good) / args.duration,
        "requests_per_s": sum(r["requests"] for r in good) / args.duration,
        "errors": sum(r["errors"] for r in good),
        "p50_ms": (percentile(latencies, 50) or 0) * 1000,
        "p99_ms": (percentile(latencies, 99) or 0) * 1000,
        "cpu": cpu,
        "clients_reported": len(good),
    }


def describe(result: dict[str, Any] | None) -> str:
    if result is None:
        return "-"
    return (f"{result['requests_per_s']:,.0f} req/s, latency p50 {result['p50_ms']:.1f} ms "
            f"p99 {result['p99_ms']:.1f} ms, errors {result['errors']}\n"
            f"                    CPU: {describe_cpu(result['cpu'])}; "
            f"server CPU per event {result['cpu']['server'] / max(result['events_per_s'], 1e-9) * 1e6:,.0f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8, help="client processes (default 8)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase (default 10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first (default 3)")
    parser.add_argument("--batch-size", type=int, default=1000, help="events per batch request (default 1000)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers for both servers (default 2)")
    parser.add_argument("--only", choices=["single", "batch", "flask-sse", "nchan", "noop"], action="append",
                        help="run only these phases (repeatable); noop: a Flask POST route that does "
                             "nothing, under the same gunicorn, as the machine's ceiling")
    parser.add_argument("--redis-url", default=REDIS_URL, help=f"Redis for eventlog and Flask-SSE (default {REDIS_URL})")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record py-spy profiles of eventlog's workers during each phase into DIR")
    parser.add_argument("--eventlog-env", action="append", metavar="KEY=VALUE",
                        help="extra environment for the eventlog server (experiments; repeatable)")
    parser.add_argument("--logs", type=Path, metavar="DIR", help="keep the servers' logs in DIR")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the bench database")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s warm-up, 3 s windows, 4 clients")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.clients = 3.0, 1.0, min(args.clients, 4)
    phases = args.only or ["single", "batch", "flask-sse", "nchan", "noop"]
    run = uuid.uuid4().hex[:8]
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)

    print(f"publish bench: {args.clients} client processes, keep-alive HTTP/1.1, "
          f"{args.warmup:g} s warm-up + {args.duration:g} s measured per phase, "
          f"{args.workers} gevent workers for eventlog and Flask-SSE, 1 nginx worker for Nchan")
    nchan = None
    if "nchan" in phases:  # installs Nchan now if it is missing, before any run
        nchan = NchanServer(buffer=NCHAN_BUFFER,
                            log_path=args.logs / "nchan-publish.log" if args.logs else None)
    results: dict[str, dict[str, Any] | None] = {"single": None, "batch": None, "flask-sse": None,
                                                 "nchan": None, "noop": None}
    if "single" in phases or "batch" in phases:
        with fresh_database(args.keep_db) as database_url:
            log = args.logs / "eventlog-publish.log" if args.logs else None
            with EventlogServer(database_url, args.redis_url, f"bench-{run}", workers=args.workers,
                                log_path=log, extra_env=env_pairs(args.eventlog_env)) as server:
                for mode in ("single", "batch"):
                    if mode in phases:
                        print(f"  eventlog {mode} ...", flush=True)
                        results[mode] = run_phase(server, mode, args, 201,
                                                  f"publish-{mode}" if args.profile else None,
                                                  database_url)
    if "flask-sse" in phases or "noop" in phases:
        log = args.logs / "flask-sse-publish.log" if args.logs else None
        with FlaskSseServer(args.redis_url, f"bench-sse-{run}", workers=args.workers, log_path=log) as server:
            if "flask-sse" in phases:
                print("  Flask-SSE single ...", flush=True)
                results["flask-sse"] = run_phase(server, "single", args, 200, None)
            if "noop" in phases:
                print("  Flask no-op POST (calibration) ...", flush=True)
                results["noop"] = run_phase(server, "single", args, 201, None, path="/noop")
    if nchan is not None:
        with nchan:
            print("  Nchan single ...", flush=True)
            results["nchan"] = run_phase(nchan, "single", args, frozenset({201, 202}), None)
    reference = None
    if "single" in phases:
        print("  pgbench one-row INSERTs (reference) ...", flush=True)
        reference = pgbench_tps(args.duration)

    single, batch, theirs, nchan_ = results["single"], results["batch"], results["flask-sse"], results["nchan"]

    def rate(r: dict[str, Any] | None) -> float | None:
        return None if r is None else r["events_per_s"]

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    rows = [
        ["single events/s", fmt(rate(single)), fmt(rate(theirs)), fmt(rate(nchan_)),
         ratio(rate(single), rate(theirs)), ratio(rate(single), rate(nchan_)),
         f">= {TARGET_SINGLE:,.0f} ({verdict(rate(single), TARGET_SINGLE)})"],
        ["(no-op Flask POST: ceiling)", fmt(rate(results["noop"])), "", "", "", "", ""],
        [f"batch ({args.batch_size}) events/s", fmt(rate(batch)), "no batch API", "no batch API",
         ratio(rate(batch), rate(theirs)) + " vs its single" if batch and theirs else "n/a",
         ratio(rate(batch), rate(nchan_)) + " vs its single" if batch and nchan_ else "n/a",
         f">= {TARGET_BATCH:,.0f} ({verdict(rate(batch), TARGET_BATCH)})"],
    ]
    print()
    print(table(rows))
    print()
    print(f"  eventlog single : {describe(single)}")
    print(f"  eventlog batch  : {describe(batch)}")
    print(f"  Flask-SSE single: {describe(theirs)}")
    print(f"  Nchan single    : {describe(nchan_)}")
    print(f"  no-op Flask POST: {describe(results['noop'])}")
    if reference:
        print(f"  pgbench, 8 clients, one-row INSERT: {reference:,.0f} tps in this run; single"
              f" publishes at {100 * (rate(single) or 0) / reference:.0f} % of it")
    print("  (no-op: the same gunicorn + Flask answering without any work; no app publishes faster"
          " than this on this machine right now)")
    print("  (Flask-SSE stores nothing: its publish is one Redis PUBLISH on a new Redis connection;"
          " eventlog commits to PostgreSQL, then announces; Nchan keeps the message in its"
          " shared-memory buffer, one nginx worker, no database)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
