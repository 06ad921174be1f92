#!/usr/bin/env python3
"""Server-Sent Events benches: eventlog vs Flask-SSE 1.0.0 vs Nchan, side by side.

    idle       N (10,000) idle SSE connections on ONE server process: worker RSS and the
               time for one published event to reach all of them   (targets <= 200 MB, <= 200 ms)
    fanout     200, then 2,000 subscribers of one stream, 100 events/s for 10 s:
               publish-to-delivery latency p50/p99 and missing deliveries
                                                      (targets at 200: p50 <= 3 ms, p99 <= 10 ms; at 2,000: p99 <= 120 ms)
    replay     a subscriber 100,000 events behind resumes with Last-Event-ID: events/s
                                                                     (target >= 150,000/s)
    reconnect  50 subscribers each drop their connection 3 times (and come back with
               Last-Event-ID, as EventSource does) while 2,000 events are published:
               missing and duplicate deliveries
    all        the four above, one after the other

Subscribers are raw HTTP/1.1 sockets in separate client processes: asyncio for idle and
reconnect, one blocking socket for replay, and for fanout a small C program
(``fanout_client.c``, compiled with ``cc`` when the bench starts).
eventlog runs on a fresh PostgreSQL database with Redis notifications; Flask-SSE is the
minimal app from its docs (``flask_sse_app.py``). Both use gunicorn gevent workers: 1 for
``idle`` (one process), 2 otherwise. Nchan is Debian's nginx with ``libnginx-mod-nchan``
(installed with apt-get when missing), always one nginx worker process, its message buffer
holding at least as many messages as the scenario publishes (``_servers.NchanServer``).
Servers are measured one at a time, never together.

    python bench/streams.py all --quick      # smoke run of everything
    python bench/streams.py idle             # the full idle bench
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing as mp
import os
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

from _clients import (
    Ok,
    Publisher,
    accepted,
    event_order,
    SseConnection,
    connect,
    event_body,
    open_many,
    paced_publisher,
    percentile,
    sse_request,
    wait_for,
)
from _servers import (
    REDIS_URL,
    CpuMeter,
    EventlogServer,
    NCHAN_BUFFER,
    FlaskSseServer,
    NchanServer,
    PrivateRedis,
    Profiler,
    describe_cpu,
    env_pairs,
    fresh_database,
    mb,
    open_fds,
    proc_status,
    raise_nofile,
    ratio,
    table,
    verdict,
)

STREAM = "bench"
SPAWN = mp.get_context("spawn")


# --- process plumbing ---------------------------------------------------------------------------

class Inbox:
    """Messages from client processes, picked by kind: ``(kind, index, payload)``."""

    def __init__(self) -> None:
        self.queue = SPAWN.Queue()
        self._held: list[tuple[Any, ...]] = []

    def collect(self, kind: str, count: int, timeout: float) -> dict[int, Any]:
        found: dict[int, Any] = {}
        for message in list(self._held):
            if message[0] == kind and len(found) < count:
                found[message[1]] = message[2]
                self._held.remove(message)
        deadline = time.monotonic() + timeout
        while len(found) < count and time.monotonic() < deadline:
            try:
                message = self.queue.get(timeout=min(1.0, max(0.05, deadline - time.monotonic())))
            except queue.Empty:
                continue
            if message[0] == kind:
                found[message[1]] = message[2]
            else:
                self._held.append(message)
        return found


def split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def start_clients(target: Any, per_client: list[int], *args: Any) -> list[Any]:
    procs = [SPAWN.Process(target=target, args=(i, n, *args), daemon=True) for i, n in enumerate(per_client)]
    for proc in procs:
        proc.start()
    return procs


def run_each(runs: Any, run_one: Any) -> dict[str, dict[str, Any]]:
    """Run one scenario on each server in turn (eventlog, Flask-SSE, Nchan), printing progress."""
    results: dict[str, dict[str, Any]] = {}
    for label, server, ok in runs:
        print(f"  {label} ...", flush=True)
        with server:
            results[label] = run_one(label, server, ok)
        print(f"    {label}: {results[label]['summary']}", flush=True)
    return results


def join_clients(procs: list[Any], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.join(timeout=max(0.1, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)
        elif proc.exitcode:
            print(f"    WARNING: a bench client process exited with code {proc.exitcode}: what it "
                  "should have reported is missing from these figures", flush=True)


def errors_of(conns: list[SseConnection]) -> dict[str, int]:
    return dict(Counter(":".join(c.error.split(":")[:2]) if c.error.startswith("connect") else c.error
                        for c in conns if c.error).most_common(4))


def publish_one(port: int, path: str, type_: str, data: Any, ok: Ok) -> tuple[float, bool]:
    """POST one event on a new connection; return when the request started and whether it worked."""
    publisher = Publisher(port)
    publisher.connect()
    started = time.monotonic()
    status, _ = publisher.post(path, event_body(type_, data))
    publisher.close()
    return started, accepted(status, ok)


NCHAN_OK = frozenset({201, 202})  # delivered to subscribers / only stored


def servers(args: argparse.Namespace, database_url: str | None, workers: int, redis_url: str,
            run: str, bench: str, published: int = 0) -> list[tuple[str, Any, Ok]]:
    """(label, server, publish status) for eventlog, then Flask-SSE, then Nchan (one nginx
    worker whatever ``workers`` says; its buffer holds ``published`` messages at least)."""
    logs = args.logs
    result: list[tuple[str, Any, Ok]] = []
    if database_url is not None:
        result.append(("eventlog", EventlogServer(
            database_url, redis_url, f"bench-{run}", workers=workers,
            log_path=logs / f"eventlog-{bench}.log" if logs else None,
            extra_env=env_pairs(args.eventlog_env)), 201))
    if not args.skip_flask_sse:
        result.append(("Flask-SSE", FlaskSseServer(
            redis_url, f"bench-sse-{run}", workers=workers,
            log_path=logs / f"flask-sse-{bench}.log" if logs else None), 200))
    if not args.skip_nchan:
        result.append(("Nchan", NchanServer(
            buffer=args.nchan_buffer or max(NCHAN_BUFFER, published),
            log_path=logs / f"nchan-{bench}.log" if logs else None), NCHAN_OK))
    return result


LABELS = ("eventlog", "Flask-SSE", "Nchan")


def row(name: str, results: dict[str, dict[str, Any]], key: str, show: Any,
        lower_is_better: bool = False, target: str = "") -> list[str]:
    """A table row: ``show(result)`` for each server that ran, eventlog's ratio of ``key`` to
    Flask-SSE's and to Nchan's (above 1: eventlog better), the target."""
    ours = results.get("eventlog") or {}
    cells = [show(results[label]) if results.get(label) else "-" for label in LABELS]
    ratios = [ratio(ours.get(key), (results.get(label) or {}).get(key), lower_is_better) if key else ""
              for label in LABELS[1:]]
    return [name, *cells, *ratios, target]


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"


def fmt_s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:,.2f} s"


def until_all(result: dict[str, Any], n: int) -> str:
    if not result:
        return "-"
    if result.get("all_s") is not None:
        return fmt_s(result["all_s"])
    if result.get("max_s") is None:
        return "never"
    return f"never all ({n - result['got']:,} short; last {fmt_s(result['max_s'])})"


# --- (a) idle -----------------------------------------------------------------------------------

class IdleConnection(SseConnection):
    got_at: float | None = None

    def on_frames(self, frames: list[tuple[bytes, bytes, bytes]], now: float) -> None:
        if self.got_at is None:
            self.got_at = now


def idle_client(index: int, count: int, port: int, path: str, rate: float, wait_bytes: bool,
                settle: float, probe_timeout: float, inbox: Any, probe: Any, stop: Any) -> None:
    raise_nofile()
    asyncio.run(_idle_client(index, count, port, path, rate, wait_bytes, settle, probe_timeout,
                             inbox, probe, stop))


async def _idle_client(index: int, count: int, port: int, path: str, rate: float, wait_bytes: bool,
                       settle: float, probe_timeout: float, inbox: Any, probe: Any, stop: Any) -> None:
    request = sse_request(path, port)
    began = time.monotonic()
    conns: list[IdleConnection] = await open_many(lambda i: IdleConnection(request), count, port, rate,
                                                  retries=3)
    if wait_bytes:
        await wait_for(lambda: all(c.first_bytes_at or c.closed for c in conns), settle, 0.1)
    ready = [c.first_bytes_at for c in conns if c.first_bytes_at and not c.closed]
    inbox.put(("opened", index, {
        "open": sum(not c.closed for c in conns), "ready": len(ready),
        "last_ready": max(ready) if ready else None, "began": began,
        "retried": sum(c.attempts > 1 for c in conns),
    }))
    await wait_for(lambda: probe.is_set() or stop.is_set(), 900, 0.05)
    await wait_for(lambda: stop.is_set() or all(c.got_at or c.closed for c in conns), probe_timeout, 0.05)
    inbox.put(("probed", index, {
        "times": [c.got_at for c in conns if c.got_at],
        "open": sum(not c.closed for c in conns), "errors": errors_of(conns),
    }))
    await wait_for(stop.is_set, 120, 0.1)
    for c in conns:
        if c.transport is not None:
            c.transport.abort()


def bench_idle(args: argparse.Namespace) -> list[list[str]]:
    n = args.connections
    run = uuid.uuid4().hex[:8]
    print(f"\n[idle] {n:,} idle SSE connections on one server process (1 gevent worker; Nchan: 1 nginx "
          f"worker), opened at {args.connect_rate:,.0f}/s by {args.clients} client processes; a private "
          f"redis-server (maxclients {n + 1000:,}) for eventlog and Flask-SSE", flush=True)
    with PrivateRedis(maxclients=n + 1000) as redis_server, fresh_database(args.keep_db) as database_url:
        results = run_each(
            servers(args, database_url, 1, redis_server.url, run, "idle"),
            lambda label, server, ok: _idle_one(args, label, server, ok, redis_server),
        )
    ours = results.get("eventlog") or {}
    rss_mb = (ours.get("rss") or 0) / 1e6 if ours.get("rss") else None
    rows = [
        row(f"connections held of {n:,}", results, "held", lambda r: f"{r['held']:,}"),
        row("worker RSS with them open", results, "rss", lambda r: mb(r.get("rss")), True,
            f"<= 200 MB ({verdict(rss_mb, 200, True)})"),
        row("subscribers that got the event", results, "got", lambda r: f"{r.get('got', 0):,}"),
        row("time until all of them had it", results, "all_s", lambda r: until_all(r, n), True,
            f"<= 200 ms ({verdict(ours.get('all_s'), 0.2, True)})"),
        row("median delivery", results, "p50_s", lambda r: fmt_ms(r.get("p50_s")), True),
    ]
    print()
    print(table(rows))
    return rows


def _idle_one(args: argparse.Namespace, label: str, server: Any, ok: Ok, redis_server: PrivateRedis) -> dict[str, Any]:
    n = args.connections
    worker = server.worker_pids()[0]
    rss_idle = proc_status(worker, "VmRSS")
    redis_before = redis_server.connected_clients()
    inbox = Inbox()
    probe, stop = SPAWN.Event(), SPAWN.Event()
    per_client = split(n, args.clients)
    procs = start_clients(idle_client, per_client, server.port, server.stream_path(STREAM),
                          args.connect_rate / len(per_client), server.ready_at_first_bytes, args.settle,
                          args.timeout, inbox.queue, probe, stop)
    out: dict[str, Any] = {"rss_idle": rss_idle}
    profiler = Profiler(server, args.profile if isinstance(server, EventlogServer) else None, "idle-connect",
                        n / args.connect_rate + 5)
    try:
        with profiler:
            opened = inbox.collect("opened", len(procs), n / args.connect_rate + args.settle + 60)
        open_now = sum(o["open"] for o in opened.values())
        retried = sum(o["retried"] for o in opened.values())
        ready_line = f"{retried:,} needed to retry their connect; " if retried else ""
        if server.ready_at_first_bytes:
            ready = sum(o["ready"] for o in opened.values())
            lasts = [o["last_ready"] for o in opened.values() if o["last_ready"]]
            began = min(o["began"] for o in opened.values()) if opened else 0
            took = (max(lasts) - began) if lasts else 0
            ready_line += (f"{ready:,} streaming (first bytes) after {took:.1f} s "
                           f"({ready / took if took else 0:,.0f} new streams/s); ")
        else:
            # Flask-SSE sends nothing before the first event: count its Redis subscriptions.
            last, stable_since = -1, time.monotonic()
            deadline = time.monotonic() + args.settle
            while time.monotonic() < deadline and time.monotonic() - stable_since < 5:
                clients = redis_server.connected_clients() - redis_before
                if clients >= open_now:
                    break
                if clients != last:
                    last, stable_since = clients, time.monotonic()
                time.sleep(0.5)
            ready_line += (f"{redis_server.connected_clients() - redis_before:,} Redis connections "
                           f"opened by the server; ")
        time.sleep(1.0)
        rss = proc_status(worker, "VmRSS")
        fds = open_fds(worker)
        alive = server.process is not None and server.process.poll() is None and worker in server.worker_pids()
        sent_at, published = publish_one(server.port, server.publish_path(STREAM), "probe",
                                         {"probe": True}, ok)
        via = "" if published else "; probe publish over HTTP FAILED"
        if not published and isinstance(server, FlaskSseServer):
            # Its one worker could not take the POST: publish as another app process would.
            import redis

            client = redis.Redis.from_url(redis_server.url)
            sent_at = time.monotonic()
            client.publish(server.channel, json.dumps({"data": {"probe": True}, "type": "probe"}))
            client.close()
            via += ", so it was sent straight to Redis (as another process of the app would)"
        probe.set()
        probed = inbox.collect("probed", len(procs), args.timeout + 60)
        times = sorted(t - sent_at for p in probed.values() for t in p["times"])
        held = sum(p["open"] for p in probed.values())
        errors: Counter[str] = Counter()
        for p in probed.values():
            errors.update(p["errors"])
        out.update({
            "open": open_now, "held": held, "rss": rss, "got": len(times),
            "all_s": times[-1] if times and len(times) >= n else None,
            "p50_s": percentile(times, 50), "max_s": times[-1] if times else None,
            "rss_hwm": proc_status(worker, "VmHWM"),
        })
        per_conn = (rss - rss_idle) / open_now if rss and rss_idle and open_now else None
        out["summary"] = (
            f"{open_now:,} of {n:,} connections open; {ready_line}worker RSS {mb(rss_idle)} idle -> "
            f"{mb(rss)} loaded ({'%.1f kB' % (per_conn / 1e3) if per_conn else '?'} per connection), "
            f"{fds or '?':,} fds; worker {'alive' if alive else 'GONE'}{via}; {len(times):,} got the "
            f"event (latest after "
            f"{fmt_s(times[-1] if times else None)}); {held:,} still open afterwards"
            + (f"; client-side errors {dict(errors)}" if errors else "")
        )
    finally:
        stop.set()
        join_clients(procs)
    return out


# --- (b) fanout ---------------------------------------------------------------------------------

NATIVE_CLIENT = Path(__file__).with_name("fanout_client.c")


def build_native_client(directory: Path) -> Path:
    """Compile ``fanout_client.c`` (the fan-out bench's subscribers) into ``directory``."""
    binary = directory / "fanout_client"
    command = [os.environ.get("CC", "cc"), "-O2", "-o", str(binary), str(NATIVE_CLIENT)]
    try:
        subprocess.run(command, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        sys.exit(f"the fan-out bench needs a C compiler for its subscribers ({' '.join(command)}): {error}")
    return binary


class NativeFanoutClient:
    """One ``fanout_client`` process: it holds ``count`` subscribers and reports on the inbox
    like the Python client processes do. It has the part of ``multiprocessing.Process``'s API
    that ``join_clients`` uses."""

    def __init__(self, binary: Path, index: int, count: int, port: int, path: str, total: int,
                 ready_on_ping: bool, settle: float, timeout: float, inbox: Any) -> None:
        self._latency_file = Path(tempfile.mkstemp(prefix="fanout-latencies-")[1])
        self._process = subprocess.Popen(
            [str(binary), str(port), path, str(count), str(total), "1" if ready_on_ping else "0",
             str(settle), str(timeout), str(self._latency_file)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self._process.pid
        threading.Thread(target=self._relay, args=(index, inbox), daemon=True).start()

    def _relay(self, index: int, inbox: Any) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            kind, *numbers = line.split()
            if kind == "ready":
                inbox.put(("ready", index, int(numbers[0])))
            elif kind == "done":
                received, dupes, closed, reads, errors = map(int, numbers)
                inbox.put(("done", index, {
                    "received": received, "dupes": dupes, "closed": closed, "reads": reads,
                    "latencies": self._latency_file.read_bytes(),
                    "errors": {"connect or HTTP": errors} if errors else {},
                }))
        self._latency_file.unlink(missing_ok=True)

    def stop(self) -> None:
        """Ask it to report what it has now (it stops at the end of its stdin)."""
        if self._process.stdin is not None and not self._process.stdin.closed:
            self._process.stdin.close()

    def join(self, timeout: float | None = None) -> None:
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def is_alive(self) -> bool:
        return self._process.poll() is None

    def terminate(self) -> None:
        self._process.terminate()

    @property
    def exitcode(self) -> int | None:
        return self._process.returncode


# Issue #18's delivery targets (p99, and p50 where it sets one) by fan-out size; other sizes
# are read against an earlier issue's p99.
FANOUT_TARGETS = {200: 0.010, 2000: 0.120}
FANOUT_TARGET = 0.100
FANOUT_P50_TARGETS = {200: 0.003}


def bench_fanout(args: argparse.Namespace) -> list[list[str]]:
    rows = []
    for subscribers in args.subscribers:
        rows += _bench_fanout_size(argparse.Namespace(**{**vars(args), "subscribers": subscribers}))
    return rows


def _bench_fanout_size(args: argparse.Namespace) -> list[list[str]]:
    total = int(args.rate * args.duration)
    run = uuid.uuid4().hex[:8]
    print(f"\n[fanout] {args.subscribers:,} subscribers of one stream ({args.clients} client processes), "
          f"{total:,} events at {args.rate:g}/s ({args.publishers} keep-alive publisher connections); "
          f"2 gevent workers for eventlog and Flask-SSE, 1 nginx worker for Nchan", flush=True)
    with tempfile.TemporaryDirectory() as build, fresh_database(args.keep_db) as database_url:
        client = build_native_client(Path(build))
        results = run_each(
            servers(args, database_url, 2, args.redis_url, run, "fanout", total),
            lambda label, server, ok: _fanout_one(args, label, server, ok, total, database_url, client),
        )
    ours = results.get("eventlog") or {}
    target = FANOUT_TARGETS.get(args.subscribers, FANOUT_TARGET)
    p50 = FANOUT_P50_TARGETS.get(args.subscribers)
    p50_target = "" if p50 is None else f"<= {p50 * 1000:g} ms ({verdict(ours.get('p50'), p50, True)})"
    rows = [
        row("latency p50", results, "p50", lambda r: fmt_ms(r.get("p50")), True, p50_target),
        row("latency p99", results, "p99", lambda r: fmt_ms(r.get("p99")), True,
            f"<= {target * 1000:g} ms ({verdict(ours.get('p99'), target, True)})"),
        row("latency max", results, "max", lambda r: fmt_ms(r.get("max")), True),
        row(f"missing of {total * args.subscribers:,}", results, "", lambda r: f"{r['missing']:,}",
            target="0"),
        row("duplicates", results, "", lambda r: f"{r['dupes']:,}", target="0"),
        row("publish rate achieved", results, "rate", lambda r: f"{r['rate']:,.0f}/s",
            target=f"{args.rate:g}/s"),
    ]
    print()
    print(f"  {args.subscribers:,} subscribers:")
    print(table(rows))
    return rows


def wait_ready(inbox: Inbox, clients: int, server: Any, ok: Ok, settle: float) -> dict[int, Any]:
    """Collect each client process's "ready" report (bounded by ``settle`` + 30 s).

    Flask-SSE sends nothing until an event comes, so its subscribers are pinged until every
    client has seen one; an eventlog or Nchan subscriber is ready at its first bytes.
    """
    deadline = time.monotonic() + settle + 30
    ready: dict[int, Any] = {}
    while len(ready) < clients and time.monotonic() < deadline:
        if not server.ready_at_first_bytes:
            publish_one(server.port, server.publish_path(STREAM), "ping", {}, ok)
        ready.update(inbox.collect("ready", clients - len(ready), 0.3))
    return ready


def _fanout_one(args: argparse.Namespace, label: str, server: Any, ok: Ok, total: int,
                database_url: str, client: Path) -> dict[str, Any]:
    inbox = Inbox()
    per_client = split(args.subscribers, args.clients)
    is_eventlog = isinstance(server, EventlogServer)
    procs = [NativeFanoutClient(client, i, n, server.port, server.stream_path(STREAM),
                                total, not server.ready_at_first_bytes, args.settle,
                                total / args.rate + args.grace + args.settle + 120, inbox.queue)
             for i, n in enumerate(per_client)]
    publisher = None
    try:
        ready = wait_ready(inbox, len(procs), server, ok, args.settle)
        n_ready = sum(ready.values())
        time.sleep(0.5)
        start_at = time.monotonic() + 0.5
        publisher = SPAWN.Process(target=paced_publisher, daemon=True, args=(
            server.port, server.publish_path(STREAM), "tick", total, args.rate, args.publishers, ok,
            start_at, inbox.queue))
        with Profiler(server, args.profile if is_eventlog else None, "fanout", total / args.rate):
            publisher.start()
            meter = CpuMeter(server, database_url if is_eventlog else None,
                             [p.pid for p in procs] + [publisher.pid]).start()
            published = inbox.collect("published", 1, total / args.rate + 150).get(0)
        # Let deliveries drain (CPU is counted until every subscriber has all, or the grace ends).
        done = inbox.collect("done", len(procs), args.grace)
        cpu = meter.stop()
        for proc in procs:
            proc.stop()
        done.update(inbox.collect("done", len(procs) - len(done), 30))
    finally:
        for proc in procs:
            proc.stop()
        join_clients(procs if publisher is None else [*procs, publisher])
    latencies = array("d")
    for d in done.values():
        latencies.frombytes(d["latencies"])
    ordered = sorted(latencies)
    received = sum(d["received"] for d in done.values())
    errors: Counter[str] = Counter()
    for d in done.values():
        errors.update(d["errors"])
    sent = published["sent"] if published else 0
    rate = sent / max(1e-9, published["last"] - published["first"]) if published else 0
    summary = (
        f"{n_ready:,} of {args.subscribers:,} subscribed; published {sent:,} of {total:,} "
        f"({published['errors'] if published else '?'} errors) at {rate:,.0f}/s"
        + (f" (requests p50 {fmt_ms(published['request_p50'])}, p99 {fmt_ms(published['request_p99'])})"
           if published else "")
        + "; "
        f"{received:,} deliveries of {total * args.subscribers:,}; "
        f"{sum(d['closed'] for d in done.values())} connections closed"
        + (f" ({dict(errors)})" if errors else "")
        + f"\n    CPU: {describe_cpu(cpu)}; server CPU per delivery "
        f"{cpu['server'] * cpu['wall'] / max(received, 1) * 1e6:.1f} us; "
        f"{received / max(1, sum(d['reads'] for d in done.values())):.2f} events per socket read"
    )
    return {
        "p50": percentile(ordered, 50), "p99": percentile(ordered, 99),
        "max": ordered[-1] if ordered else None,
        "missing": total * args.subscribers - received,
        "dupes": sum(d["dupes"] for d in done.values()), "summary": summary, "rate": rate,
    }


# --- (c) replay ----------------------------------------------------------------------------------

QUIET_SECONDS = 10.0


def replay_client(port: int, path: str, last_event_id: str, expected: int, timeout: float, inbox: Any,
                  go: Any) -> None:
    """One subscriber on a blocking socket: resume after ``last_event_id``, read ``expected`` events.

    Counts the events in id order: each numeric id (eventlog's) the one after the last, each
    ``<seconds>:<n>`` id (Nchan's) above the last."""
    import socket

    from _clients import ChunkedDecoder, FrameParser

    inbox.put(("ready", 0, None))
    go.wait(60)
    cpu0 = time.process_time()
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(0.5)
    sock.sendall(sse_request(path, port, last_event_id))
    head, body = b"", b""
    chunked: ChunkedDecoder | None = None
    parser = FrameParser()
    count = in_order = 0
    previous = event_order(last_event_id)
    first = last = None
    deadline = started + timeout
    status = None
    while count < expected and time.monotonic() < deadline:
        try:
            data = sock.recv(1 << 18)
        except TimeoutError:
            # A server that stopped sending part way (Nchan resuming after an id its buffer
            # no longer holds) is not waited for until the deadline.
            if last is not None and time.monotonic() - last > QUIET_SECONDS:
                break
            continue
        if not data:
            break
        if status is None:
            head += data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                continue
            status = int(head.split(b" ", 2)[1])
            if b"transfer-encoding: chunked" in head[:end].lower():  # eventlog's; Nchan's is plain
                chunked = ChunkedDecoder()
            data = head[end + 4:]
        body = chunked.feed(data) if chunked is not None else data
        frames = parser.feed(body)
        if frames:
            now = time.monotonic()
            if first is None:
                first = now
            for event_id, _event, _data in frames:
                count += 1
                key = event_order(event_id)
                if key is not None and previous is not None and len(key) == len(previous) and (
                        key[0] == previous[0] + 1 if len(key) == 1 else key > previous):
                    in_order += 1
                previous = key or previous
            last = now
    sock.close()
    inbox.put(("replayed", 0, {
        "status": status, "count": count, "in_order": in_order, "started": started,
        "first": first, "last": last, "cpu": time.process_time() - cpu0,
    }))


def bench_replay(args: argparse.Namespace) -> list[list[str]]:
    run = uuid.uuid4().hex[:8]
    n = args.events
    print(f"\n[replay] one subscriber {n:,} events behind resumes with Last-Event-ID; events inserted "
          f"first with batch publishes of {args.batch:,} (Nchan: one event a request, its buffer "
          f"{args.nchan_buffer or max(NCHAN_BUFFER, n + 1):,} messages); 2 gevent workers for eventlog and Flask-SSE, 1 nginx "
          f"worker for Nchan", flush=True)
    results: dict[str, dict[str, Any]] = {}
    with fresh_database(args.keep_db) as database_url:
        # Nchan's buffer: the events and the marker published before them.
        for label, server, ok in servers(args, database_url, 2, args.redis_url, run, "replay", n + 1):
            print(f"  {label} ...", flush=True)
            with server:
                if isinstance(server, EventlogServer):
                    results[label] = _replay_eventlog(args, server, database_url)
                elif isinstance(server, NchanServer):
                    results[label] = _replay_nchan(args, server, ok)
                else:
                    results[label] = _replay_flask_sse(args, server, ok)
            print(f"    {label}: {results[label]['summary']}", flush=True)
    ours = results.get("eventlog") or {}
    rows = [
        row(f"events replayed of {n:,}", results, "count", lambda r: f"{r.get('count', 0):,}"),
        row("lost (not replayed)", results, "", lambda r: f"{r['lost']:,}" if "lost" in r else "all",
            target="0"),
        row("replay events/s", results, "rate", lambda r: f"{r['rate']:,.0f}" if r.get("rate") else "0" if "lost" in r else "0 (no replay)",
            target=f">= 150,000 ({verdict(ours.get('rate'), 150_000)})"),
        row("time to first event", results, "ttfe", lambda r: fmt_ms(r.get("ttfe")) if r.get("ttfe") else "never",
            True),
    ]
    print()
    print(table(rows))
    return rows


def measure_replay(args: argparse.Namespace, server: Any, resume_after: str, stored: int, loaded: str,
                   database_url: str | None = None) -> dict[str, Any]:
    """Resume one subscriber after ``resume_after`` and read the ``stored`` events behind it;
    the figures, with ``loaded`` (how the events were loaded) and the CPU split in the summary.
    eventlog's workers are profiled when ``--profile`` asks."""
    inbox = Inbox()
    go = SPAWN.Event()
    client = SPAWN.Process(target=replay_client, daemon=True, args=(
        server.port, server.stream_path(STREAM), resume_after, stored, args.timeout, inbox.queue, go))
    client.start()
    inbox.collect("ready", 1, 60)
    profile = args.profile if isinstance(server, EventlogServer) else None
    with Profiler(server, profile, "replay", max(2.0, stored / 50000)):
        meter = CpuMeter(server, database_url, [client.pid or 0]).start()
        go.set()
        result = inbox.collect("replayed", 1, args.timeout + 30).get(0)
    cpu = meter.stop()
    join_clients([client])
    if not result:
        return {"summary": "the replay client reported nothing"}
    elapsed = (result["last"] or result["started"]) - result["started"]
    rate = result["count"] / elapsed if elapsed > 0 else None
    ttfe = result["first"] - result["started"] if result["first"] else None
    summary = (
        f"{loaded}; replayed {result['count']:,} ({result['in_order']:,} in id order) in {elapsed:.2f} s; "
        f"first event after {fmt_ms(ttfe)}; client CPU {result['cpu']:.2f} s\n    CPU: {describe_cpu(cpu)}"
    )
    return {"count": result["count"], "lost": stored - result["count"], "rate": rate, "ttfe": ttfe,
            "summary": summary}


def load_events(server: Any, bodies: list[list[bytes]], ok: Ok) -> tuple[list[bytes], int, float]:
    """POST each list of ``bodies`` in order over a keep-alive connection of its own, the lists
    at the same time; the answers to the accepted ones, how many failed, and the seconds taken."""
    import concurrent.futures

    path = server.publish_path(STREAM)

    def load(share: list[bytes]) -> tuple[list[bytes], int]:
        publisher, answers, errors = Publisher(server.port, timeout=120), [], 0
        for body in share:
            status, answer = publisher.post(path, body)
            if accepted(status, ok):
                answers.append(answer)
            else:
                errors += 1
        publisher.close()
        return answers, errors

    began = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        loaded = list(pool.map(load, bodies))
    return [a for answers, _ in loaded for a in answers], sum(e for _, e in loaded), time.monotonic() - began


def analyze(database_url: str) -> None:
    """Give PostgreSQL's planner the statistics of the events just loaded, as autovacuum does
    within a minute of a bulk load (``autovacuum_naptime``). Right after the load, a table
    never analyzed is planned as if it held a few rows: each replay page then read every event
    after its cursor and sorted them (a bitmap scan and a top-N sort, 9.7 ms a page at 50,000
    events behind, where the index gives the page in 0.8 ms), and the replay measured that."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))  # every table: a revision compared may name them otherwise
    engine.dispose()


REPLAYED = b'{"type":"replayed","data":{"i":%d,"sku":"ABC-123","qty":2,"note":"benchmark event"}}'


def _replay_eventlog(args: argparse.Namespace, server: Any, database_url: str) -> dict[str, Any]:
    size = args.batch
    body = b"[" + b",".join(REPLAYED % i for i in range(size)) + b"]"
    answers, errors, load_s = load_events(server, [[body] * share for share in split(-(-args.events // size), 4)],
                                          201)
    stored = len(answers) * size
    resume_after = min(json.loads(a)["events"][0]["id"] for a in answers) - 1 if answers else 0
    analyze(database_url)
    return measure_replay(args, server, str(resume_after), stored,
                          f"loaded {stored:,} events in {load_s:.1f} s ({stored / load_s:,.0f}/s, "
                          f"{errors} failed batches)", database_url)


def _replay_nchan(args: argparse.Namespace, server: NchanServer, ok: Ok) -> dict[str, Any]:
    """Nchan replays what its buffer still holds: publish a marker, then ``args.events`` events
    one a request from 4 keep-alive connections, then resume after the marker's id."""
    marker = Publisher(server.port)
    status, answer = marker.post(server.publish_path(STREAM), event_body("marker", {}))
    marker.close()
    if not accepted(status, ok):
        return {"summary": f"the marker's publish failed with HTTP {status}"}
    # The publisher answers with the channel's state, ending "last message id: <id>".
    resume_after = answer.decode().rsplit("last message id:", 1)[1].strip()
    answers, errors, load_s = load_events(
        server, [[REPLAYED % i for i in range(j, args.events, 4)] for j in range(4)], ok)
    stored = len(answers)
    return measure_replay(args, server, resume_after, stored,
                          f"published {stored:,} events in {load_s:.1f} s ({stored / load_s:,.0f}/s, "
                          f"{errors} failed) into a buffer of {server.buffer:,}")


def _replay_flask_sse(args: argparse.Namespace, server: Any, ok: Ok) -> dict[str, Any]:
    # Flask-SSE keeps nothing: events published before a subscriber connects are gone.
    # Check it with a few hundred, then listen with Last-Event-ID for a few seconds.
    published = 0
    publisher = Publisher(server.port)
    for i in range(args.flask_sse_check):
        status, _ = publisher.post(server.publish_path(STREAM), event_body("replayed", {"i": i}))
        published += accepted(status, ok)
    publisher.close()
    inbox = Inbox()
    go = SPAWN.Event()
    go.set()
    client = SPAWN.Process(target=replay_client, daemon=True, args=(
        server.port, server.stream_path(STREAM), "1", published, args.listen, inbox.queue, go))
    client.start()
    inbox.collect("ready", 1, 60)
    result = inbox.collect("replayed", 1, args.listen + 30).get(0) or {"count": 0}
    join_clients([client])
    summary = (f"cannot replay: it ignores Last-Event-ID and stores nothing. Published "
               f"{published:,} events, then listened {args.listen:g} s with Last-Event-ID: got "
               f"{result['count']:,} of them"
               + (f" (so 0 of {args.events:,} in the eventlog scenario)" if result["count"] == 0 else ""))
    return {"count": result["count"], "summary": summary}


# --- (d) reconnect ---------------------------------------------------------------------------------

class Subscriber:
    """One EventSource-like subscriber across reconnects, decoding with eventlog.sse.Decoder."""

    def __init__(self, total: int) -> None:
        self.seen = bytearray(total)
        self.unique = self.dupes = self.out_of_order = 0
        self.last_id = ""  # of the last dispatched event, as EventSource keeps it
        # The highest id delivered, as event_order reads it (eventlog's and Nchan's ids are ordered).
        self.newest_id: tuple[int, ...] = ()
        self.pinged = False
        self.reconnects = self.failed_connects = 0
        self.conn: ReconnectConnection | None = None


class ReconnectConnection(SseConnection):
    def __init__(self, request: bytes, owner: Subscriber) -> None:
        from eventlog.sse import Decoder

        super().__init__(request)
        self.owner = owner
        self.decoder = Decoder()

    def on_body(self, data: bytes, now: float) -> None:
        owner = self.owner
        for message in self.decoder.feed(data):
            if message.event == "ping":
                owner.pinged = True
                continue
            event, payload = message.event, json.loads(message.data)
            if event == "message" and isinstance(payload, dict) and "type" in payload:
                # Nchan delivers the POSTed body as it came, with no event type.
                event, payload = payload["type"], payload["data"]
            if event != "tick":
                continue
            owner.last_id = message.id
            seq = payload["seq"]
            if owner.seen[seq]:
                owner.dupes += 1
                continue
            order = event_order(message.id)
            if order is not None:  # Flask-SSE sends no ids: order is not checked there
                if order < owner.newest_id:
                    owner.out_of_order += 1
                owner.newest_id = max(owner.newest_id, order)
            owner.seen[seq] = 1
            owner.unique += 1


def reconnect_client(index: int, count: int, port: int, path: str, total: int, ready_on_ping: bool,
                     drops: list[list[float]], delay: float, settle: float, hard_timeout: float,
                     inbox: Any, go: Any, go_at: Any, stop: Any) -> None:
    raise_nofile()
    asyncio.run(_reconnect_client(index, count, port, path, total, ready_on_ping, drops, delay, settle,
                                  hard_timeout, inbox, go, go_at, stop))


async def _reconnect_client(index: int, count: int, port: int, path: str, total: int, ready_on_ping: bool,
                            drops: list[list[float]], delay: float, settle: float, hard_timeout: float,
                            inbox: Any, go: Any, go_at: Any, stop: Any) -> None:
    subs = [Subscriber(total) for _ in range(count)]

    async def open_for(sub: Subscriber) -> None:
        sub.conn = ReconnectConnection(sse_request(path, port, sub.last_id or None), sub)
        if not await connect(sub.conn, port):
            sub.failed_connects += 1

    await asyncio.gather(*(open_for(s) for s in subs))

    def ready(s: Subscriber) -> bool:
        assert s.conn is not None
        return s.conn.closed or (s.pinged if ready_on_ping else s.conn.first_bytes_at is not None)

    await wait_for(lambda: all(ready(s) for s in subs), settle, 0.05)
    inbox.put(("ready", index, sum(ready(s) and not s.conn.closed for s in subs)))  # type: ignore[union-attr]
    await wait_for(lambda: go.is_set() or stop.is_set(), settle + 120, 0.02)
    start = go_at.value

    async def flaky(sub: Subscriber, offsets: list[float]) -> None:
        for offset in offsets:  # bounded: one round per planned drop
            wait = start + offset - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if stop.is_set():
                return
            assert sub.conn is not None
            sub.conn.abort()
            await asyncio.sleep(delay)
            sub.reconnects += 1
            await open_for(sub)

    tasks = [asyncio.create_task(flaky(s, d)) for s, d in zip(subs, drops)]
    await wait_for(lambda: stop.is_set() or (all(t.done() for t in tasks) and all(s.unique >= total for s in subs)),
                   hard_timeout, 0.1)
    for task in tasks:
        task.cancel()
    inbox.put(("done", index, {
        "received": sum(s.unique for s in subs), "dupes": sum(s.dupes for s in subs),
        "out_of_order": sum(s.out_of_order for s in subs), "reconnects": sum(s.reconnects for s in subs),
        "failed_connects": sum(s.failed_connects for s in subs),
        "complete": sum(s.unique >= total for s in subs),
    }))
    for s in subs:
        if s.conn is not None and s.conn.transport is not None:
            s.conn.transport.abort()


def drop_plan(rng: random.Random, drops: int, window: float, delay: float) -> list[float]:
    """``drops`` moments inside the publishing window, at least ``delay`` + 0.2 s apart."""
    gap = delay + 0.2
    span = window * 0.9 - window * 0.05
    for _ in range(1000):
        offsets = sorted(rng.uniform(window * 0.05, window * 0.9) for _ in range(drops))
        if all(b - a >= gap for a, b in itertools.pairwise(offsets)):
            return offsets
    return [window * 0.05 + i * span / max(1, drops) for i in range(drops)]


def bench_reconnect(args: argparse.Namespace) -> list[list[str]]:
    run = uuid.uuid4().hex[:8]
    window = args.events / args.rate
    print(f"\n[reconnect] {args.subscribers} subscribers each drop their connection {args.drops} times "
          f"(reconnecting after {args.reconnect_delay:g} s with Last-Event-ID) while {args.events:,} "
          f"events are published at {args.rate:g}/s; 2 gevent workers for eventlog and Flask-SSE, 1 nginx "
          f"worker for Nchan", flush=True)
    rng = random.Random(args.seed)
    plans = [drop_plan(rng, args.drops, window, args.reconnect_delay) for _ in range(args.subscribers)]
    with fresh_database(args.keep_db) as database_url:
        results = run_each(
            servers(args, database_url, 2, args.redis_url, run, "reconnect", args.events),
            lambda label, server, ok: _reconnect_one(args, label, server, ok, plans),
        )
    ours = results.get("eventlog") or {}
    rows = [
        row(f"missing of {args.events * args.subscribers:,}", results, "", lambda r: f"{r['missing']:,}",
            target=f"0 ({verdict(ours.get('missing'), 0, True)})"),
        row("duplicates", results, "", lambda r: f"{r['dupes']:,}",
            target=f"0 ({verdict(ours.get('dupes'), 0, True)})"),
        row("out of id order", results, "", lambda r: f"{r['out_of_order']:,}" if r["ids"] else "n/a (no ids)",
            target="0"),
    ]
    print()
    print(table(rows))
    return rows


def _reconnect_one(args: argparse.Namespace, label: str, server: Any, ok: Ok,
                   plans: list[list[float]]) -> dict[str, Any]:
    inbox = Inbox()
    go, stop = SPAWN.Event(), SPAWN.Event()
    go_at = SPAWN.Value("d", 0.0)
    per_client = split(args.subscribers, args.clients)
    offsets, procs = 0, []
    for i, count in enumerate(per_client):
        proc = SPAWN.Process(target=reconnect_client, daemon=True, args=(
            i, count, server.port, server.stream_path(STREAM), args.events, not server.ready_at_first_bytes,
            plans[offsets:offsets + count], args.reconnect_delay, args.settle,
            args.events / args.rate + args.grace + 60, inbox.queue, go, go_at, stop))
        offsets += count
        procs.append(proc)
        proc.start()
    publisher = None
    try:
        ready = wait_ready(inbox, len(procs), server, ok, args.settle)
        time.sleep(0.5)
        start_at = time.monotonic() + 0.5
        go_at.value = start_at
        go.set()
        publisher = SPAWN.Process(target=paced_publisher, daemon=True, args=(
            server.port, server.publish_path(STREAM), "tick", args.events, args.rate, 2, ok,
            start_at, inbox.queue))
        publisher.start()
        published = inbox.collect("published", 1, args.events / args.rate + 150).get(0)
        done = inbox.collect("done", len(procs), args.grace)
        stop.set()
        done.update(inbox.collect("done", len(procs) - len(done), 30))
    finally:
        stop.set()
        join_clients(procs if publisher is None else [*procs, publisher])

    def total(key: str) -> int:
        return sum(d[key] for d in done.values())

    received = total("received")
    sent = published["sent"] if published else 0
    summary = (
        f"{sum(ready.values())} of {args.subscribers} subscribed; published {sent:,} of {args.events:,}; "
        f"{total('reconnects')} reconnects ({total('failed_connects')} failed); "
        f"{total('complete')} subscribers got every event; {received:,} deliveries of "
        f"{args.events * args.subscribers:,}"
    )
    return {"missing": args.events * args.subscribers - received, "dupes": total("dupes"),
            "out_of_order": total("out_of_order"), "ids": not isinstance(server, FlaskSseServer),
            "summary": summary}


# --- command line -------------------------------------------------------------------------------------

def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="smoke run: small sizes, short windows")
    p.add_argument("--redis-url", default=REDIS_URL, help=f"Redis for eventlog and Flask-SSE (default {REDIS_URL}; "
                   "idle always starts a private redis-server)")
    p.add_argument("--skip-flask-sse", action="store_true", help="do not measure Flask-SSE")
    p.add_argument("--skip-nchan", action="store_true", help="do not measure Nchan")
    p.add_argument("--nchan-buffer", type=int, metavar="N",
                   help="Nchan's nchan_message_buffer_length (default: 100,000, or what the scenario "
                        "publishes when more; smaller shows what it loses)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="record py-spy profiles of eventlog's workers in the measured part into DIR")
    p.add_argument("--logs", type=Path, metavar="DIR", help="keep the servers' logs in DIR")
    p.add_argument("--eventlog-env", action="append", metavar="KEY=VALUE",
                   help="extra environment for the eventlog server (experiments; repeatable)")
    p.add_argument("--keep-db", action="store_true", help="do not drop the bench database")
    p.add_argument("--settle", type=float, default=60.0,
                   help="seconds to wait for subscribers to be connected (default 60; idle: 180)")


def add_idle(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connections", type=int, default=10000, help="idle connections (default 10000)")
    p.add_argument("--idle-clients", dest="clients", type=int, default=4, help="client processes (default 4)")
    p.add_argument("--connect-rate", type=float, default=1000.0, help="new connections per second (default 1000)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for the event to reach everyone (default 30)")
    p.set_defaults(settle=180.0)


def add_fanout(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subscribers", type=int, nargs="+", default=[200, 2000],
                   help="subscribers, one run per number given (default 200 2000)")
    p.add_argument("--fanout-clients", dest="clients", type=int, default=4, help="client processes (default 4)")
    p.add_argument("--rate", type=float, default=100.0, help="events per second (default 100)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of publishing (default 10)")
    p.add_argument("--publishers", type=int, default=4, help="publisher connections (default 4)")
    p.add_argument("--grace", type=float, default=15.0, help="seconds to let deliveries drain (default 15)")


def add_replay(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, default=100000, help="events behind (default 100000)")
    p.add_argument("--batch", type=int, default=1000, help="batch size for loading (default 1000)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the replay (default 120)")
    p.add_argument("--flask-sse-check", type=int, default=500,
                   help="events published to Flask-SSE before its subscriber connects (default 500)")
    p.add_argument("--listen", type=float, default=3.0,
                   help="seconds the Flask-SSE subscriber listens for a replay (default 3)")


def add_reconnect(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subscribers", type=int, default=50, help="subscribers (default 50)")
    p.add_argument("--drops", type=int, default=3, help="drops per subscriber (default 3)")
    p.add_argument("--events", type=int, default=2000, help="events published (default 2000)")
    p.add_argument("--rate", type=float, default=200.0, help="events per second (default 200)")
    p.add_argument("--reconnect-delay", type=float, default=0.5,
                   help="seconds offline before reconnecting, the same for both servers (default 0.5)")
    p.add_argument("--reconnect-clients", dest="clients", type=int, default=2, help="client processes (default 2)")
    p.add_argument("--grace", type=float, default=15.0, help="seconds to let deliveries finish (default 15)")
    p.add_argument("--seed", type=int, default=1, help="seed of the drop schedule (default 1)")


QUICK = {
    "idle": {"connections": 1000, "settle": 20.0, "timeout": 10.0},
    "fanout": {"subscribers": [100], "duration": 3.0, "grace": 5.0, "settle": 20.0},
    "replay": {"events": 10000, "flask_sse_check": 50, "listen": 1.5, "timeout": 30.0},
    "reconnect": {"subscribers": 10, "events": 400, "grace": 5.0, "settle": 20.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True, metavar="{idle,fanout,replay,reconnect,all}")
    adders = {"idle": add_idle, "fanout": add_fanout, "replay": add_replay, "reconnect": add_reconnect}
    helps = {
        "idle": "10,000 idle connections on one process: RSS and time to reach them all",
        "fanout": "200, then 2,000 subscribers, 100 events/s: latency p50/p99 and missing events",
        "replay": "a subscriber 100,000 events behind: replay events/s",
        "reconnect": "50 subscribers dropping 3 times each: missing and duplicate events",
    }
    for name, add in adders.items():
        p = sub.add_parser(name, help=helps[name], description=helps[name])
        add_common(p)
        add(p)
    p_all = sub.add_parser("all", help="run idle, fanout, replay and reconnect with their defaults")
    add_common(p_all)
    args = parser.parse_args()
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    benches = {"idle": bench_idle, "fanout": bench_fanout, "replay": bench_replay, "reconnect": bench_reconnect}
    names = list(benches) if args.bench == "all" else [args.bench]
    started = time.monotonic()
    for name in names:
        # Each bench takes its own defaults; "all" shares only the common options.
        p = argparse.ArgumentParser()
        add_common(p)
        adders[name](p)
        own = p.parse_args([])
        for key, value in vars(args).items():
            if key in vars(own) and (args.bench != "all" or key in vars(p_all.parse_args([]))):
                setattr(own, key, value)
        if own.quick:
            for key, value in QUICK[name].items():
                if args.bench == "all" or getattr(args, key, None) == p.get_default(key):
                    setattr(own, key, value)
        benches[name](own)
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
