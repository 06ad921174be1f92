#!/usr/bin/env python3
"""This checkout against a git revision, interleaved in one run: ratios, not figures of other days.

The machine drifts by a third between runs and more while others use it, so a figure is only
worth comparing with one measured beside it. This script checks the revision out with
``git worktree add`` into a temporary directory, runs each scenario on both codes in turn
(the order alternates each round, so a drift during the run favours neither), and prints every
round's figures and ratios side by side, then the medians:

    single   8 keep-alive clients POST one event each (publish.py single): events/s, and the
             server's CPU per event (steadier than the rate while other load takes the cores);
             then pgbench's one-row INSERT from 8 clients in the same round, as the reference
    batch    the same with arrays of 1,000 events: events/s, CPU per event
    fanout   200 subscribers of one stream, 100 events/s (streams.py fanout): delivery p50,
             p99, and the server's CPU per delivery
    replay   one subscriber resumes 20,000 events behind (streams.py replay): events/s

Each side gets a fresh PostgreSQL database migrated by its own code, and its own
``eventlog serve`` (2 workers), which imports the revision's package through ``PYTHONPATH``
(the revision's dependencies are this environment's). A ratio above 1 means this checkout is
better. Every hot-path change reports such a run against the main it started from.

    python bench/compare.py 93621f4                        # all four, 3 rounds (about 12 minutes)
    python bench/compare.py 93621f4 --rounds 5 --only single --only fanout
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import publish
import streams
from _servers import REDIS_URL, EventlogServer, describe_cpu, fresh_database, machine_cpu, pgbench_tps, table

ROOT = Path(__file__).resolve().parent.parent
HERE = "this checkout"


@contextlib.contextmanager
def revision_tree(revision: str) -> Iterator[Path]:
    """``revision`` checked out (detached) into a temporary worktree, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="eventlog-compare-") as parent:
        tree = Path(parent) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(tree),
                        revision], check=True)
        # The package maps eventlog.migrations to the top-level migrations/ (pyproject.toml);
        # imported through PYTHONPATH, the revision's package must find its own there, not
        # this checkout's, which the editable install would supply.
        (tree / "eventlog" / "migrations").symlink_to("../migrations")
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           check=False)


def imported_from(env: dict[str, str]) -> str:
    """Where the server's interpreter imports eventlog from, with ``env`` (a sanity check)."""
    # -P: like the server's console script, the working directory (the checkout) is not on
    # sys.path; the server runs there too.
    out = subprocess.run([sys.executable, "-P", "-c", "import eventlog; print(eventlog.__file__)"],
                         env={**os.environ, **env}, capture_output=True, text=True, check=True, cwd=ROOT)
    return str(Path(out.stdout.strip()).parent.parent)


def scenario_args(name: str, quick: bool) -> argparse.Namespace:
    """The scenario's own bench options, at the sizes this comparison uses."""
    if name in ("single", "batch"):
        return argparse.Namespace(clients=8, warmup=1.0 if quick else 2.0,
                                  duration=3.0 if quick else 8.0, batch_size=1000, profile=None)
    parser = argparse.ArgumentParser()
    streams.add_common(parser)
    (streams.add_fanout if name == "fanout" else streams.add_replay)(parser)
    args = parser.parse_args([])
    if name == "fanout":
        args.subscribers, args.duration, args.grace, args.settle = 200, 3.0 if quick else 8.0, 8.0, 30.0
    else:
        args.events = 5000 if quick else 20000
    return args


def measure(name: str, args: argparse.Namespace, env: dict[str, str], client: Path) -> dict[str, Any]:
    """One scenario on one code: its figures (bigger is better unless the key says ms)."""
    with fresh_database(extra_env=env) as database_url, EventlogServer(
        database_url, REDIS_URL, f"compare-{name}-{time.monotonic_ns()}", extra_env=env
    ) as server:
        if name in ("single", "batch"):
            result = publish.run_phase(server, name, args, 201, None, database_url)
            # CPU per event: steadier than the rate while other load takes the cores.
            per_event = result["cpu"]["server"] / max(result["events_per_s"], 1e-9) * 1e6
            return {"events/s": result["events_per_s"], "server CPU us/event": per_event, "cpu": result["cpu"]}
        if name == "fanout":
            total = int(args.rate * args.duration)
            result = streams._fanout_one(args, "eventlog", server, 201, total, database_url, client)
            per_delivery = re.search(r"server CPU per delivery ([\d.]+) us", result["summary"])
            return {"p50 ms": result["p50"] * 1000, "p99 ms": result["p99"] * 1000,
                    "server CPU us/delivery": float(per_delivery.group(1)) if per_delivery else 0.0,
                    "missing": result["missing"], "dupes": result["dupes"], "cpu": None}
        result = streams._replay_eventlog(args, server, database_url)
        return {"events/s": result.get("rate") or 0.0, "cpu": None}


def ratio(key: str, ours: float, theirs: float) -> float:
    """How much better this checkout is: above 1 is better (for times, theirs / ours)."""
    if key.endswith(("ms", "/event", "/delivery")):
        return theirs / ours if ours else float("inf")
    return ours / theirs if theirs else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revision", help="the git revision to compare with (e.g. the main you started from)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every scenario on both codes (default 3)")
    parser.add_argument("--only", action="append", choices=["single", "batch", "fanout", "replay"],
                        help="run only these scenarios (repeatable)")
    parser.add_argument("--quick", action="store_true", help="smoke run: short windows, small replay")
    args = parser.parse_args()
    # A plain kill still removes the worktree, the servers and the databases (finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    names = args.only or ["single", "batch", "fanout", "replay"]
    with revision_tree(args.revision) as tree, tempfile.TemporaryDirectory() as build:
        client = streams.build_native_client(Path(build))
        sides: dict[str, dict[str, str]] = {HERE: {}, args.revision: {"PYTHONPATH": str(tree)}}
        for label, env in sides.items():
            print(f"{label}: eventlog from {imported_from(env)}")
        figures: dict[str, dict[str, list[dict[str, Any]]]] = {n: {s: [] for s in sides} for n in names}
        rows: list[list[str]] = []
        header = ("", HERE, args.revision, "ratio", "")
        reference: list[float] = []  # pgbench's tps in each round
        for round_ in range(1, args.rounds + 1):
            order = list(sides) if round_ % 2 else list(reversed(sides))
            for name in names:
                scenario = scenario_args(name, args.quick)
                busy_before = machine_cpu()
                for label in order:
                    figures[name][label].append(measure(name, scenario, sides[label], client))
                busy = _busy_since(busy_before)
                ours, theirs = figures[name][HERE][-1], figures[name][args.revision][-1]
                added = [[f"round {round_} {name} {key}", f"{ours[key]:,.1f}", f"{theirs[key]:,.1f}",
                          f"{ratio(key, ours[key], theirs[key]):.2f}", f"machine {busy:.0%} busy"]
                         for key in ours if key not in ("cpu", "missing", "dupes")]
                rows += added
                print(table(added, header), flush=True)
                _check_fanout(name, ours, theirs)
                if name == "single":
                    tps = pgbench_tps(scenario.duration)
                    reference.append(tps)
                    print(f"  pgbench one-row INSERT, 8 clients, same round: {tps:,.0f} tps; single "
                          f"publishes at {ours['events/s'] / tps:.0%} of it here, "
                          f"{theirs['events/s'] / tps:.0%} on {args.revision}", flush=True)
        print("\nevery round (ratio above 1: this checkout is better):")
        print(table(rows, header))
        print("\nmedians:")
        medians = []
        for name in names:
            for key in (k for k in figures[name][HERE][0] if k not in ("cpu", "missing", "dupes")):
                ours_m = statistics.median(f[key] for f in figures[name][HERE])
                theirs_m = statistics.median(f[key] for f in figures[name][args.revision])
                ratios = [ratio(key, a[key], b[key])
                          for a, b in zip(figures[name][HERE], figures[name][args.revision], strict=True)]
                medians.append([f"{name} {key}", f"{ours_m:,.1f}", f"{theirs_m:,.1f}",
                                f"{statistics.median(ratios):.2f}",
                                "ratios " + " ".join(f"{r:.2f}" for r in ratios)])
        print(table(medians, header))
        if reference:
            print(f"  pgbench one-row INSERT (8 clients): {' '.join(f'{t:,.0f}' for t in reference)} tps")
        for name in names:
            for label in sides:
                cpus = [f["cpu"] for f in figures[name][label] if f["cpu"]]
                if cpus:
                    print(f"  {name} {label}: last CPU: {describe_cpu(cpus[-1])}")


def _busy_since(before: tuple[float, float, float]) -> float:
    """The machine's busy share since ``before`` (other engineers' load included)."""
    after = machine_cpu()
    busy = after[0] - before[0]
    total = busy + after[1] - before[1]
    return busy / total if total else 0.0


def _check_fanout(name: str, ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    if name == "fanout" and (ours["missing"] or ours["dupes"]):
        print(f"  WARNING: this checkout missed {ours['missing']} and duplicated {ours['dupes']} deliveries")
    if name == "fanout" and (theirs["missing"] or theirs["dupes"]):
        print(f"  note: the revision missed {theirs['missing']} and duplicated {theirs['dupes']}")


if __name__ == "__main__":
    main()
