#!/usr/bin/env python3
"""Read replicas: 50 clients replaying 100,000 events at once, and publishing meanwhile, with
the replays on the primary only, on one streaming replica, and on two (PostgreSQL + Redis).

A primary and two standbys are built on free ports under a temporary directory, with the same
builder the tests use (``tests/replication.py``: Debian's PostgreSQL binaries, run as the
``postgres`` user, so this runs as root or as postgres). 100,000 events are loaded straight
into the primary; then, for each setting, one ``eventlog serve --workers 2``:

    replay     50 clients open ``/streams/replay/events`` with ``Last-Event-ID: 0`` at once and
               read to the last event; the time until the last client has all of them
    publish    single-event publishes, one at a time from 4 threads, during the replay
    primary    CPU seconds of the primary's postgres processes during the replay, per replayed
               event (the live backends' time, plus what exited backends left in the
               postmaster's children's time)
    pages      the share of replay pages read on the primary (the server's metrics)
    ended      streams the server ended before the client had every event (the client comes
               back with ``Last-Event-ID``), and sessions PostgreSQL ended for sitting idle in a
               transaction (its logs, every node's)
    machine    how busy the whole machine was during the replay, and its load average after

Also measured, once: how long after a commit on the primary a standby shows it (``doorbell``),
which a hub reading from a replica would add to every live delivery.

    python bench/replicas.py            # about 4 minutes on 2 cores
    python bench/replicas.py --quick    # 20,000 events, 20 clients
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
from _clients import event_body
from _servers import REDIS_URL, EventlogServer, children, cpu_seconds, machine_cpu

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from replication import Cluster, Node  # noqa: E402  (the tests' cluster builder)

from eventlog.database import make_engine  # noqa: E402
from eventlog.migrate import upgrade  # noqa: E402

STREAM = "replay"


def load(node: Node, database: str, events: int) -> None:
    """``events`` events of about 100 bytes in one stream, straight into the tables."""
    with psycopg.connect(f"host=127.0.0.1 port={node.port} user=postgres dbname={database}") as conn:
        conn.execute(
            "INSERT INTO eventlog_events (id, stream, type, data, time)"
            " SELECT n, %s, 'loaded', json_build_object('n', n, 'pad', repeat('x', 80))::text,"
            " clock_timestamp() FROM generate_series(1, %s) AS n",
            (STREAM, events),
        )
        conn.execute("UPDATE eventlog_counter SET last_id = %s, last_time = clock_timestamp()", (events,))


def postgres_cpu(postmaster: int) -> float:
    """CPU seconds of a postmaster and its backends, those that exited included."""
    try:
        fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    own = sum(int(f) for f in fields[11:15]) / ticks  # utime, stime, cutime, cstime
    return own + sum(cpu_seconds(pid) or 0.0 for pid in children(postmaster))


IDLE_ENDED = "idle-in-transaction timeout"  # in PostgreSQL's FATAL message


def idle_ended(cluster: Cluster) -> int:
    """Sessions the cluster's servers ended for sitting idle in a transaction, so far."""
    return sum(
        (node.folder / "log").read_text(errors="replace").count(IDLE_ENDED)
        for node in cluster.nodes
        if (node.folder / "log").exists()
    )


def postmaster_pid(node: Node) -> int:
    return int((node.folder / "postmaster.pid").read_text().split()[0])


async def replay_one(port: int, last: int, reconnects: list[int]) -> float:
    """Read the stream from the start until id ``last``, coming back with ``Last-Event-ID``
    when the server ends it (as EventSource does); seconds it took."""
    began = time.monotonic()
    cursor = 0
    while True:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET /streams/{STREAM}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Accept: text/event-stream\r\nLast-Event-ID: {cursor}\r\n\r\n".encode()
        )
        tail = b""
        while True:
            chunk = await reader.read(1 << 20)
            if not chunk:
                break
            seen = tail + chunk
            at = seen.rfind(b"\nid: ")
            if at >= 0 and seen.find(b"\n", at + 5) > 0:
                cursor = int(seen[at + 5 : seen.find(b"\n", at + 5)])
            if cursor >= last:
                writer.close()
                return time.monotonic() - began
            tail = seen[-64:]
        writer.close()
        reconnects.append(cursor)


async def replay_all(port: int, clients: int, last: int, reconnects: list[int]) -> list[float]:
    return list(await asyncio.gather(*(replay_one(port, last, reconnects) for _ in range(clients))))


def publish_meanwhile(port: int, stop: threading.Event, counts: list[int]) -> list[threading.Thread]:
    """Four threads publishing one event at a time until ``stop``; ``counts`` gets each's total."""
    import http.client

    def run(slot: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        body = event_body("live", {"n": 1})
        while not stop.is_set():
            conn.request("POST", "/streams/live/events", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            assert response.status == 201
            counts[slot] += 1

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(len(counts))]
    for thread in threads:
        thread.start()
    return threads


def primary_share(port: int) -> float:
    """The share of the server's replay pages read on the primary so far (its metrics; all of
    them without replicas)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    reads = {}
    for line in conn.getresponse().read().decode().splitlines():
        if line.startswith("eventlog_replica_reads_total{"):
            labels, _, value = line.rpartition(" ")
            reads[labels.split('"')[1]] = float(value)
    total = sum(reads.values())
    return reads.get("primary", 0.0) / total if total else 1.0  # no replicas: no such metric


def measure(cluster: Cluster, database: str, replicas: list[Node], clients: int, events: int) -> dict[str, float]:
    urls = ",".join(node.url(database) for node in replicas)
    server = EventlogServer(
        cluster.primary.url(database), REDIS_URL, f"bench-{uuid.uuid4().hex}", workers=2,
        extra_env={"EVENTLOG_DATABASE_REPLICA_URLS": urls} if urls else {},
        log_path=Path(os.environ.get("BENCH_LOG", "/dev/null")),
    )
    with server:
        time.sleep(1.5)  # the replicas' first check
        postmaster = postmaster_pid(cluster.primary)
        counts = [0] * 4
        stop = threading.Event()
        cpu_before = postgres_cpu(postmaster)
        ended_before = idle_ended(cluster)
        machine_before = machine_cpu()
        began = time.monotonic()
        publishers = publish_meanwhile(server.port, stop, counts)
        reconnects: list[int] = []
        seconds = asyncio.run(replay_all(server.port, clients, events, reconnects))
        elapsed = time.monotonic() - began
        stop.set()
        for thread in publishers:
            thread.join()
        cpu = postgres_cpu(postmaster) - cpu_before
        on_primary = primary_share(server.port)
        busy, idle, steal = (after - before for after, before in zip(machine_cpu(), machine_before, strict=True))
    return {
        "replay_seconds": max(seconds),
        "replayed_per_second": clients * events / max(seconds),
        "publish_per_second": sum(counts) / elapsed,
        "primary_cpu_us_per_event": cpu / (clients * events) * 1e6,
        "reconnects": len(reconnects),
        "pages_on_primary": on_primary,
        "idle_ended": idle_ended(cluster) - ended_before,
        "machine_busy": busy / (busy + idle + steal),
        "load": os.getloadavg()[0],
    }


def doorbell(cluster: Cluster, database: str, standby: Node, samples: int = 200) -> list[float]:
    """Seconds from a commit on the primary until ``standby`` shows it."""
    primary = psycopg.connect(f"host=127.0.0.1 port={cluster.primary.port} user=postgres dbname={database}", autocommit=True)
    replica = psycopg.connect(f"host=127.0.0.1 port={standby.port} user=postgres dbname={database}", autocommit=True)
    delays = []
    with primary, replica:
        for _ in range(samples):
            (last,) = primary.execute(
                "UPDATE eventlog_counter SET last_id = last_id WHERE id = 1 RETURNING last_id"
            ).fetchone()  # type: ignore[misc]
            marker = uuid.uuid4().hex
            began = time.perf_counter()
            primary.execute("INSERT INTO eventlog_pruned_streams VALUES (%s, 0)", (marker,))
            while replica.execute("SELECT 1 FROM eventlog_pruned_streams WHERE stream = %s", (marker,)).fetchone() is None:
                pass
            delays.append(time.perf_counter() - began)
            primary.execute("DELETE FROM eventlog_pruned_streams WHERE stream = %s", (marker,))
            time.sleep(0.005)
    return sorted(delays)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args()
    events, clients = (20_000, 20) if options.quick else (100_000, 50)
    cluster = Cluster()
    try:
        standbys = [cluster.standby("one"), cluster.standby("two")]
        for node in standbys:
            cluster.wait_streaming(node)
        database = f"bench_{uuid.uuid4().hex[:8]}"
        cluster.primary.sql(f'CREATE DATABASE "{database}"')
        engine = make_engine(cluster.primary.url(database))
        upgrade(engine)
        engine.dispose()
        load(cluster.primary, database, events)
        for node in standbys:
            while node.sql("SELECT last_id FROM eventlog_counter", database) != str(events):
                time.sleep(0.1)
        delays = doorbell(cluster, database, standbys[0])
        print(
            f"doorbell: a commit shows on a standby after p50 {statistics.median(delays) * 1e3:.2f} ms,"
            f" p99 {delays[int(len(delays) * 0.99)] * 1e3:.2f} ms ({len(delays)} commits)"
        )
        rows = []
        for label, replicas in (("primary only", []), ("one replica", standbys[:1]), ("two replicas", standbys)):
            result = measure(cluster, database, replicas, clients, events)
            rows.append((label, result))
            print(label, {k: round(v, 2) for k, v in result.items()}, flush=True)
        base = rows[0][1]
        print(f"\n{clients} clients x {events:,} events")
        print(
            "| | replay (s) | replayed events/s | publishes/s meanwhile | primary CPU per replayed event"
            " | vs primary only | pages read on the primary | streams ended by the server"
            " | sessions ended idle in a transaction | machine busy, load average |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for label, r in rows:
            print(
                f"| {label} | {r['replay_seconds']:.1f} | {r['replayed_per_second']:,.0f} |"
                f" {r['publish_per_second']:,.0f} | {r['primary_cpu_us_per_event']:.2f} µs |"
                f" {r['primary_cpu_us_per_event'] / base['primary_cpu_us_per_event']:.2f}x |"
                f" {r['pages_on_primary']:.0%} | {r['reconnects']:.0f} | {r['idle_ended']:.0f} |"
                f" {r['machine_busy']:.0%}, {r['load']:.1f} |"
            )
    finally:
        log = cluster.primary.folder / "log"
        if log.exists() and os.environ.get("BENCH_LOG"):
            Path(os.environ["BENCH_LOG"] + ".primary").write_bytes(log.read_bytes())
        cluster.close()


if __name__ == "__main__":
    main()
