"""PostgreSQL streaming replication for the tests: a primary and its standbys, each a real
``postgres`` of this machine (Debian's binaries) on a free port under a temporary directory.

They run as the ``postgres`` user (``initdb`` refuses root) and trust local connections, like
the machine's own server. A standby is a ``pg_basebackup -R`` of the primary with its own
replication slot, so the primary keeps every WAL segment it has not received however far it
lags; ``apply_delay`` delays its replay on purpose (``recovery_min_apply_delay``).
"""

from __future__ import annotations

import getpass
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from helpers import free_port

_BINS = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda path: float(Path(path).parent.name))
BIN = Path(_BINS[-1]) if _BINS else None  # the newest installed
USER = "postgres"
SETTINGS = """
listen_addresses = '127.0.0.1'
unix_socket_directories = '{folder}'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
hot_standby_feedback = on
wal_receiver_status_interval = 1s
fsync = off
full_page_writes = off
shared_buffers = 16MB
max_connections = 100
log_min_messages = warning
"""
HBA = """
local all all trust
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
"""


def available() -> str | None:
    """Why streaming replication cannot be tested here, or None when it can."""
    if BIN is None:
        return "no PostgreSQL binaries under /usr/lib/postgresql"
    if os.geteuid() != 0 and getpass.getuser() != USER:
        return "building clusters needs root (to run them as postgres) or the postgres user"
    return None


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    prefix = ["runuser", "-u", USER, "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *command], check=check, capture_output=True, text=True, timeout=120)


class Node:
    """One PostgreSQL server of the cluster: a data directory and a port."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.folder = root / name
        self.port = free_port()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        _run(str(BIN / "pg_ctl"), "-D", str(self.folder), "-o", f"-p {self.port}", "-l",
             str(self.folder / "log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        _run(str(BIN / "pg_ctl"), "-D", str(self.folder), "-m", mode, "-w", "stop", check=False)

    @property
    def running(self) -> bool:
        return _run(str(BIN / "pg_ctl"), "-D", str(self.folder), "status", check=False).returncode == 0

    def promote(self) -> None:
        _run(str(BIN / "pg_ctl"), "-D", str(self.folder), "-w", "promote")

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement through psql and return its unaligned output."""
        done = _run(str(BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER,
                    "-d", database, "-XAtqc", statement)
        return done.stdout.strip()

    def configure(self, **settings: str) -> None:
        """Change settings in postgresql.auto.conf and reload."""
        for name, value in settings.items():
            self.sql(f"ALTER SYSTEM SET {name} = '{value}'")
        self.sql("SELECT pg_reload_conf()")


class Cluster:
    """A primary and standbys built from it; ``close`` stops them and removes their files."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="eventlog-replication-"))
        shutil.chown(self.root, USER, USER)
        self.nodes: list[Node] = []
        self.primary = self._add("primary")
        _run(str(BIN / "initdb"), "-D", str(self.primary.folder), "-U", USER, "-A", "trust",
             "--no-sync", "-E", "UTF8", "--locale=C")
        with (self.primary.folder / "postgresql.conf").open("a") as conf:
            conf.write(SETTINGS.format(folder=self.root))
        (self.primary.folder / "pg_hba.conf").write_text(HBA)
        self.primary.start()

    def _add(self, name: str) -> Node:
        node = Node(self.root, name)
        self.nodes.append(node)
        return node

    def standby(self, name: str, *, apply_delay: str = "0", synchronous: bool = False) -> Node:
        """A new standby streaming from the primary through its own slot; ``synchronous``
        makes the primary wait for it at every commit (``synchronous_standby_names``)."""
        node = self._add(name)
        self.primary.sql(f"SELECT pg_create_physical_replication_slot('{name}')")
        _run(str(BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.primary.port), "-U",
             USER, "-D", str(node.folder), "-R", "-S", name, "-X", "stream", "--no-sync",
             "-c", "fast")
        with (node.folder / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"recovery_min_apply_delay = '{apply_delay}'\n")
            conf.write(f"primary_conninfo = 'host=127.0.0.1 port={self.primary.port} user={USER} application_name={name}'\n")
            conf.write(f"primary_slot_name = '{name}'\n")
        node.start()
        if synchronous:
            self.primary.configure(synchronous_standby_names=name, synchronous_commit="on")
        return node

    def wait_streaming(self, node: Node, timeout: float = 30) -> None:
        """Until ``node`` streams from the primary (replay may still be delayed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.primary.sql(
                f"SELECT state FROM pg_stat_replication WHERE application_name = '{node.name}'"
            )
            if state == "streaming":
                return
            time.sleep(0.05)
        raise TimeoutError(f"{node.name} is not streaming")

    def close(self, nodes: Sequence[Node] | None = None) -> None:
        for node in reversed(nodes or self.nodes):
            node.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
