"""How long one large publish takes to store, by size, on SQLite and PostgreSQL, with the
machine's cores kept busy: the figures EVENTLOG_MAX_REQUEST_BYTES is chosen from.

    python bench/limits.py                       # 4, 8, 16, 32, 64 MiB; 2 busy processes
    python bench/limits.py --sizes 8 --burners 0 --repeat 3

Each size is one batch of 1,000 events whose data is what a web app sends (objects of short
strings and numbers: slower to parse and to compress than one long string), published over
HTTP to ``eventlog serve`` (one worker) with the timeouts lifted, so every size is measured
to the end. It prints the status and the seconds from sending to the answer; then, in this
process, where a publish of each size spends them: decoding the body, checking the events,
and the database's part (the statement and the commit, which the statement timeout bounds).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from _servers import EVENTLOG_BIN, EventlogServer, clean_env, fresh_database

LIFTED = {
    "EVENTLOG_MAX_REQUEST_BYTES": str(1 << 30),
    "EVENTLOG_STATEMENT_TIMEOUT_SECONDS": "600",
    "EVENTLOG_LOCK_TIMEOUT_SECONDS": "600",
    "EVENTLOG_REPLY_TIMEOUT_SECONDS": "700",
    "EVENTLOG_AUDIT_TIMEOUT_SECONDS": "1",
}


def batch(size: int, count: int, rng: random.Random) -> bytes:
    """A batch of ``count`` events of about ``size`` bytes in all, as JSON."""
    events = []
    for number in range(count):
        lines, used = [], 40
        while used < size // count - 40:
            line = {"sku": f"{rng.getrandbits(48):012x}", "qty": rng.randrange(1, 99),
                    "price": rng.randrange(10**6) / 100}
            lines.append(line)
            used += len(json.dumps(line, separators=(",", ":"))) + 1
        events.append({"data": {"order": number, "lines": lines}})
    return json.dumps(events, separators=(",", ":")).encode()


def measure(url: str, label: str, sizes: list[int], repeat: int) -> None:
    rng = random.Random(20)
    with EventlogServer(url, "", "limits", workers=1, extra_env=LIFTED) as server:
        for mib in sizes:
            body = batch(mib << 20, 1000, rng)
            for _ in range(repeat):
                started = time.monotonic()
                response = httpx.post(f"{server.base}/streams/limits/events", content=body,
                                      headers={"Content-Type": "application/json"}, timeout=900)
                print(f"{label:10} {len(body) / (1 << 20):5.1f} MiB: {response.status_code}"
                      f" in {time.monotonic() - started:5.2f} s", flush=True)


def breakdown(url: str, label: str, sizes: list[int]) -> None:
    """Time each step of a publish, in this process (the server's steps, without HTTP)."""
    from eventlog.body import decode_json
    from eventlog.database import WRITES, make_engine
    from eventlog.store import Publish, append_all
    from eventlog.validation import parse_events

    engine = make_engine(url)
    rng = random.Random(21)
    try:
        for mib in sizes:
            body = batch(mib << 20, 1000, rng)
            started = time.monotonic()
            value = decode_json(body)
            decoded = time.monotonic()
            events, _ = parse_events("limits", value, max_data_bytes=1 << 30, max_batch=1000)
            checked = time.monotonic()
            with engine.execution_options(**WRITES).begin() as conn:
                append_all(conn, [Publish(events)])
            stored = time.monotonic()
            print(f"{label:10} {len(body) / (1 << 20):5.1f} MiB: decode {decoded - started:5.2f} s,"
                  f" check {checked - decoded:5.2f} s, database {stored - checked:5.2f} s", flush=True)
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4,8,16,32,64", help="batch sizes in MiB (default %(default)s)")
    parser.add_argument("--burners", type=int, default=2, help="CPU-burning processes (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=2, help="publishes per size (default %(default)s)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.burners)]
    try:
        print(f"{args.burners} busy processes; load average before: {os.getloadavg()[0]:.1f}")
        with tempfile.TemporaryDirectory() as folder:
            sqlite = f"sqlite:///{Path(folder) / 'limits.db'}"
            subprocess.run([str(EVENTLOG_BIN), "db", "upgrade"], check=True,
                           env={**clean_env(), "EVENTLOG_DATABASE_URL": sqlite}, stdout=subprocess.DEVNULL)
            measure(sqlite, "sqlite", sizes, args.repeat)
            breakdown(sqlite, "sqlite", sizes)
        with fresh_database() as postgres:
            measure(postgres, "postgresql", sizes, args.repeat)
            breakdown(postgres, "postgresql", sizes)
    finally:
        for burner in burners:
            burner.kill()


if __name__ == "__main__":
    main()
