"""Starting and stopping what the benches measure: a fresh PostgreSQL database, eventlog and
Flask-SSE servers (each in its own gunicorn process tree), Nchan (Debian's nginx with its
pub/sub module, installed with apt-get when missing), a private redis-server, plus small
shared helpers (free ports, RSS of a process, file-descriptor limits, result tables).

Nothing here runs load: the load clients live in ``_clients.py`` and run in their own
processes, never in the server's.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Self

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
BIN = Path(sys.executable).parent
EVENTLOG_BIN = BIN / "eventlog"
GUNICORN_BIN = BIN / "gunicorn"

POSTGRES_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", POSTGRES_URL)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


# --- small helpers ----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_nofile(wanted: int | None = None) -> int:
    """Raise this process's soft RLIMIT_NOFILE (to the hard limit by default); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if wanted is None else wanted
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


class ServerExited(RuntimeError):
    """A server process ended while the bench waited for it: no use waiting longer."""


def wait_until(check: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except ServerExited:
            raise
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            error = exc
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {error!r})")


def http_status(port: int, path: str, timeout: float = 2.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def proc_status(pid: int, field: str) -> int | None:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM, ...) in bytes, or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def listening_sockets(port: int) -> int:
    """How many sockets listen on TCP ``port`` (IPv4 and IPv6), from /proc/net."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                next(rows)  # the header
                for row in rows:
                    fields = row.split()
                    local, state = fields[1], fields[3]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                        count += 1
        except OSError:
            continue
    return count


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def machine_cpu() -> tuple[float, float, float]:
    """(busy, idle, steal) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    ticks = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / ticks, (idle + iowait) / ticks, steal / ticks


def postgres_backends(database: str) -> list[int]:
    """PostgreSQL backend processes serving ``database`` (by their process title)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith("postgres: ") and f" {database} " in title:
            pids.append(int(entry.name))
    return pids


class CpuMeter:
    """Where the CPU went during a measured window: the machine, the server's workers, and
    the PostgreSQL backends of the bench database (cores = CPU seconds / wall seconds)."""

    def __init__(self, server: ServerProcess, database_url: str | None = None,
                 clients: Sequence[int] = ()) -> None:
        self.server = server
        self.database = database_url.rsplit("/", 1)[1] if database_url else None
        self.clients = list(clients)

    def _snapshot(self) -> dict[str, Any]:
        workers = {pid: cpu_seconds(pid) for pid in self.server.worker_pids()}
        backends = {pid: cpu_seconds(pid) for pid in postgres_backends(self.database)} if self.database else {}
        clients = {pid: cpu_seconds(pid) for pid in self.clients}
        return {"t": time.monotonic(), "machine": machine_cpu(), "workers": workers, "pg": backends,
                "clients": clients}

    def start(self) -> CpuMeter:
        self.before = self._snapshot()
        return self

    def stop(self) -> dict[str, Any]:
        after, before = self._snapshot(), self.before
        wall = after["t"] - before["t"]

        def delta(key: str) -> float:
            # Processes that started during the window count from zero.
            return sum((v or 0) - (before[key].get(pid) or 0) for pid, v in after[key].items())

        # Per worker too: keep-alive clients stay on the worker that accepted them, and an
        # uneven split (one worker busy, one idle) explains many a slow run.
        each = sorted(((v or 0) - (before["workers"].get(pid) or 0)) / wall
                      for pid, v in after["workers"].items())
        busy = after["machine"][0] - before["machine"][0]
        steal = after["machine"][2] - before["machine"][2]
        return {
            "wall": wall,
            "machine_busy": busy / wall,
            "machine_steal": steal / wall,
            "server": delta("workers") / wall,
            "server_each": each,
            "postgres": delta("pg") / wall,
            "clients": delta("clients") / wall,
        }


def describe_cpu(cpu: dict[str, Any] | None) -> str:
    if not cpu:
        return "-"
    steal = f" (steal {cpu['machine_steal']:.2f})" if cpu["machine_steal"] > 0.05 else ""
    text = (f"machine busy {cpu['machine_busy']:.2f} of {os.cpu_count()} cores{steal}; "
            f"server workers {cpu['server']:.2f}")
    if len(cpu.get("server_each") or ()) > 1:
        text += f" ({' + '.join(f'{c:.2f}' for c in cpu['server_each'])})"
    if cpu.get("postgres"):
        text += f", postgres {cpu['postgres']:.2f}"
    if cpu.get("clients"):
        text += f", bench clients {cpu['clients']:.2f}"
    # What is left: other processes on the machine (Redis, other sessions' work) and the
    # kernel's time outside the measured processes.
    rest = cpu["machine_busy"] - cpu["server"] - cpu.get("postgres", 0) - cpu.get("clients", 0)
    return text + f", rest {max(0.0, rest):.2f}"


def mb(value: float | None) -> str:
    return "?" if value is None else f"{value / 1e6:,.0f} MB"


def env_pairs(pairs: list[str] | None) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` from the command line as a dict."""
    result = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--eventlog-env wants KEY=VALUE, got {pair!r}")
        result[key] = value
    return result


def run_id() -> str:
    return f"{os.getpid()}_{uuid.uuid4().hex[:6]}"


# --- the database ---------------------------------------------------------------------------

@contextlib.contextmanager
def fresh_database(keep: bool = False, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """A new, migrated database of this run's own; dropped afterwards.

    On the server ``BENCH_DATABASE_URL`` names (default ``BENCH_POSTGRES_URL``: PostgreSQL;
    ``mysql+pymysql://...`` for MariaDB or MySQL), created beside the database the URL names
    (``eventlog_bench_<run>``); for a ``sqlite:///`` URL, a new file in a temporary folder.
    Migrated with ``eventlog db upgrade`` exactly as a deployment would (with ``extra_env``: by
    the code the server will run, when that is another revision's).
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(DATABASE_URL)
    name = f"eventlog_bench_{run_id()}"
    backend = base.get_backend_name()
    with contextlib.ExitStack() as cleanup:
        if backend == "sqlite":
            folder = Path(tempfile.mkdtemp(prefix="eventlog_bench_"))
            if not keep:
                cleanup.callback(shutil.rmtree, folder, ignore_errors=True)
            url = f"sqlite:///{folder / 'eventlog.db'}"
        else:
            admin_url = base.set(database=None) if backend == "mysql" else base
            admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
            quoted = admin.dialect.identifier_preparer.quote(name)
            with admin.connect() as conn:
                conn.execute(text(f"CREATE DATABASE {quoted}"))
            drop = f"DROP DATABASE IF EXISTS {quoted}" + (" WITH (FORCE)" if backend == "postgresql" else "")

            def dropped() -> None:
                with admin.connect() as conn:
                    conn.execute(text(drop))
                admin.dispose()

            if not keep:
                cleanup.callback(dropped)
            url = base.set(database=name).render_as_string(hide_password=False)
        env = {**clean_env(), **(extra_env or {}), "EVENTLOG_DATABASE_URL": url}
        subprocess.run(
            [str(EVENTLOG_BIN), "db", "upgrade"], env=env, check=True,
            stdout=subprocess.DEVNULL, timeout=120,
        )
        yield url


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("EVENTLOG_", "BENCH_"))}


# --- servers -----------------------------------------------------------------------------------

class ServerProcess:
    """A server's master process (gunicorn's, or nginx's for Nchan) and its workers."""

    name = "server"
    # Whether a subscriber can tell it is registered from its first bytes; Flask-SSE sends
    # nothing until the first event.
    ready_at_first_bytes = True

    def __init__(self, argv: Sequence[str], env: dict[str, str], port: int, workers: int,
                 ready_path: str, log_path: Path | None = None) -> None:
        self.argv = list(argv)
        self.env = env
        self.port = port
        self.workers = workers
        self.ready_path = ready_path
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def sockets(self) -> int:
        """How many listening sockets the server has once every worker accepts connections."""
        return 1

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Self:
        # Kept open while the server runs; closed in stop().
        self._log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        raise_nofile()  # the child inherits the raised file limit
        self.process = subprocess.Popen(
            self.argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            cwd=str(ROOT), start_new_session=True,
        )

        def up() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ServerExited(f"{self.name} exited with {self.process.returncode}; {self.exit_hint()}")
            return (
                len(self.worker_pids()) == self.workers
                and listening_sockets(self.port) >= self.sockets
                and http_status(self.port, self.ready_path) == 200
            )

        wait_until(up, timeout, f"{self.name} on port {self.port}")
        # Every worker answers at least once (each boots its app lazily on first request).
        for _ in range(self.workers * 4):
            http_status(self.port, self.ready_path)
        return self

    def exit_hint(self) -> str:
        """Where to read why the server exited."""
        return f"see {self.log_path}" if self.log_path else "run with --logs DIR to keep its log"

    def worker_pids(self) -> list[int]:
        return [] if self.process is None else children(self.process.pid)

    def rss(self) -> dict[int, int | None]:
        return {pid: proc_status(pid, "VmRSS") for pid in self.worker_pids()}

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)  # its own session: only its tree
                self.process.wait(timeout=10)
            self.process = None
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EventlogServer(ServerProcess):
    name = "eventlog"

    @property
    def sockets(self) -> int:
        # A socket per worker (SO_REUSEPORT): until the last one listens, the kernel hands
        # every connection to the others, and a scenario's subscribers would pile onto them.
        return self.workers

    def __init__(self, database_url: str, redis_url: str, channel: str, *, workers: int = 2,
                 connections: int = 20000, log_path: Path | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        port = free_port()
        env = {
            **clean_env(),
            "EVENTLOG_DATABASE_URL": database_url,
            "EVENTLOG_REDIS_URL": redis_url,
            "EVENTLOG_REDIS_CHANNEL": channel,
            **(extra_env or {}),
        }
        argv = [str(EVENTLOG_BIN), "serve", "--port", str(port), "--workers", str(workers),
                "--connections", str(connections), "--no-migrate"]
        super().__init__(argv, env, port, workers, "/healthz", log_path)

    def stream_path(self, stream: str) -> str:
        return f"/streams/{stream}/events"

    def publish_path(self, stream: str) -> str:
        return f"/streams/{stream}/events"


class FlaskSseServer(ServerProcess):
    """The docs' minimal Flask-SSE app under gunicorn with gevent workers.

    Same gunicorn settings as ``eventlog serve`` (gevent, keep-alive 5 s, graceful timeout 5 s,
    worker connections 20,000, file limit raised), so only the apps differ.
    """

    name = "Flask-SSE"
    ready_at_first_bytes = False

    def __init__(self, redis_url: str, channel: str, *, workers: int = 2,
                 connections: int = 20000, log_path: Path | None = None) -> None:
        port = free_port()
        self.channel = channel
        env = {**clean_env(), "REDIS_URL": redis_url, "FLASK_SSE_CHANNEL": channel}
        argv = [str(GUNICORN_BIN), "--chdir", str(BENCH_DIR), "-k", "gevent",
                "-w", str(workers), "--worker-connections", str(connections),
                "--keep-alive", "5", "--graceful-timeout", "5", "--no-control-socket",
                "-b", f"127.0.0.1:{port}", "flask_sse_app:app"]
        super().__init__(argv, env, port, workers, "/", log_path)

    def stream_path(self, stream: str) -> str:
        return f"/stream?channel={self.channel}"

    def publish_path(self, stream: str) -> str:
        return "/publish"


NGINX_BIN = Path("/usr/sbin/nginx")
# Nchan's per-channel message buffer in every scenario: the replay's 100,000 events behind (a
# scenario with more events sizes it up to them), so what it can replay is never what the
# bench left it room for.
NCHAN_BUFFER = 100_000
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
NCHAN_PACKAGES = ("nginx", "libnginx-mod-nchan")


def ensure_nchan() -> None:
    """Install Debian's nginx and its Nchan module with apt-get when either is missing (as root,
    non-interactively), saying so; exit with what to do when that is not possible."""
    if NGINX_BIN.exists() and NCHAN_MODULE.exists():
        return
    apt = shutil.which("apt-get")
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *NCHAN_PACKAGES]
    if apt is None or os.geteuid() != 0:
        raise SystemExit(f"Nchan is not installed ({NGINX_BIN} or {NCHAN_MODULE} is missing) and this "
                         f"bench cannot install it (it needs root and apt-get): run `{' '.join(command)}`, "
                         "or pass --skip-nchan")
    print(f"  Nchan is missing: installing Debian's {' and '.join(NCHAN_PACKAGES)} "
          f"({' '.join(command)}) ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    quiet: dict[str, Any] = {"env": env, "stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL}
    if subprocess.run([apt, *command[1:]], **quiet).returncode != 0:
        # An image built without package lists (or with stale ones) needs them first.
        subprocess.run([apt, "update", "-q"], check=True, **quiet)
        subprocess.run([apt, *command[1:]], check=True, **quiet)
    if not (NGINX_BIN.exists() and NCHAN_MODULE.exists()):
        raise SystemExit(f"apt-get installed {' '.join(NCHAN_PACKAGES)} but {NCHAN_MODULE} is missing")
    print(f"  installed: {subprocess.run([NGINX_BIN, '-v'], capture_output=True, text=True).stderr.strip()}",
          flush=True)


NCHAN_CONFIG = """\
# Written by bench/_servers.py for one bench run; nginx runs with -p {dir} -g 'daemon off;'.
load_module {module};
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections {connections};
}}

http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    # As eventlog serve's gunicorn: keep-alive 5 s, and no cap on requests per connection
    # (nginx's default of 1,000 would make the publish bench's clients reconnect).
    keepalive_timeout 5s;
    keepalive_requests 1000000000;
    client_max_body_size 1m;
    client_body_buffer_size 1m;

    # Each channel keeps its last {buffer} messages, never expiring (Nchan's defaults: 10 for an
    # hour): all a subscriber resuming with Last-Event-ID can get. The shared memory holds them.
    nchan_message_buffer_length {buffer};
    nchan_message_timeout 0;
    nchan_shared_memory_size {shm_mb}m;

    server {{
        # gunicorn's backlog (nginx's default is 511) for the idle bench's 1,000 connects a second.
        listen 127.0.0.1:{port} backlog=2048;

        location = /healthz {{
            return 200 "ok\\n";
        }}
        location ~ ^/pub/([\\w-]+)$ {{
            nchan_publisher http;
            nchan_channel_id $1;
        }}
        location ~ ^/sub/([\\w-]+)$ {{
            nchan_subscriber eventsource;
            nchan_channel_id $1;
            # As eventlog: without Last-Event-ID a subscriber gets what comes next, not the buffer.
            nchan_subscriber_first_message newest;
        }}
    }}
}}
"""


class NchanServer(ServerProcess):
    """Nchan: Debian's nginx with ``libnginx-mod-nchan``, one worker process, in the foreground.

    Its configuration (``NCHAN_CONFIG``) is written into a temporary directory of its own, which
    also holds the pid file, the error log and nginx's temp paths; nothing under /etc or /var
    is read or written. Publishers POST the event's JSON to ``/pub/<stream>`` (201 when it had
    subscribers, 202 when it was only stored); subscribers GET ``/sub/<stream>`` as EventSource,
    resuming with ``Last-Event-ID``. Nchan keeps the last ``buffer`` messages of each channel in
    shared memory (never expiring): that is all it can replay.
    """

    name = "Nchan"

    def __init__(self, *, buffer: int, connections: int = 20000, log_path: Path | None = None) -> None:
        ensure_nchan()
        self.buffer = buffer
        self.connections = connections
        self.directory: Path | None = None
        super().__init__([], clean_env(), free_port(), 1, "/healthz", log_path)

    def start(self, timeout: float = 60.0) -> Self:
        self.directory = Path(tempfile.mkdtemp(prefix="nchan_bench_"))
        # nginx started as root runs its worker as nobody, which must reach the temp paths.
        self.directory.chmod(0o755)
        # A stored message takes well under 2 kB of shared memory with its bookkeeping: room
        # for the whole buffer, so no message is dropped for want of space.
        shm_mb = max(128, self.buffer * 2 // 1000)
        config = self.directory / "nginx.conf"
        # As gunicorn's: as many connections as asked, within the file limit it can have.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nofile = self.connections + 100 if hard == resource.RLIM_INFINITY else min(self.connections + 100, hard)
        config.write_text(NCHAN_CONFIG.format(
            dir=self.directory, module=NCHAN_MODULE, port=self.port, connections=nofile - 100,
            nofile=nofile, shm_mb=shm_mb, buffer=self.buffer))
        self.argv = [str(NGINX_BIN), "-p", str(self.directory), "-c", str(config), "-e",
                     str(self.directory / "error.log"), "-g", "daemon off;"]
        try:
            return super().start(timeout)
        except BaseException:
            self.stop()
            raise

    def exit_hint(self) -> str:
        assert self.directory is not None
        lines = (self.directory / "error.log").read_text(errors="replace").strip().splitlines()
        return "nginx said: " + (lines[-1] if lines else "nothing")

    def stream_path(self, stream: str) -> str:
        return f"/sub/{stream}"

    def publish_path(self, stream: str) -> str:
        return f"/pub/{stream}"

    def stop(self) -> None:
        super().stop()  # SIGTERM: nginx's fast shutdown (its SIGQUIT would wait for every stream)
        if self.directory is not None:
            if self.log_path is not None:
                shutil.copyfile(self.directory / "error.log", self.log_path)
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


class PrivateRedis:
    """A redis-server of the bench's own, on a free port (so 10,000 Flask-SSE connections
    never exhaust the shared server's ``maxclients``)."""

    def __init__(self, maxclients: int = 10000) -> None:
        self.port = free_port()
        self.maxclients = maxclients
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> Self:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; it is needed for a private Redis")
        raise_nofile()  # the child inherits the raised file limit
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--maxclients", str(self.maxclients)],
            stdout=subprocess.DEVNULL, start_new_session=True,
        )
        wait_until(lambda: self.info("server"), 15, "private redis-server")
        return self

    def info(self, section: str) -> dict[str, str]:
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=5)
        try:
            return {k: str(v) for k, v in client.info(section).items()}
        finally:
            client.close()

    def connected_clients(self) -> int:
        return int(self.info("clients")["connected_clients"])

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- profiling ---------------------------------------------------------------------------

class Profiler:
    """``py-spy record`` on every worker of a server for ``seconds`` (raw collapsed stacks)."""

    def __init__(self, server: ServerProcess, out_dir: Path | None, label: str, seconds: float) -> None:
        self.server, self.out_dir, self.label, self.seconds = server, out_dir, label, seconds
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Self:
        spy = shutil.which("py-spy") or str(BIN / "py-spy")
        if self.out_dir is None:
            return self
        if not Path(spy).exists():
            print("  (py-spy not installed: no profile)")
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for pid in self.server.worker_pids():
            out = self.out_dir / f"{self.label}-{pid}.txt"
            self.procs.append(subprocess.Popen(
                [spy, "record", "-p", str(pid), "-d", str(max(1, int(self.seconds))), "-r", "200",
                 "-f", "raw", "-o", str(out), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            try:
                proc.wait(timeout=self.seconds + 30)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait(timeout=10)
        if self.procs:
            print(f"  py-spy profiles (collapsed stacks) in {self.out_dir}/{self.label}-*.txt")


# --- output ------------------------------------------------------------------------------

def ratio(ours: float | None, theirs: float | None, lower_is_better: bool = False) -> str:
    """How many times better eventlog is (>1 = eventlog better)."""
    if ours is None or theirs is None:
        return "n/a"
    if lower_is_better:
        ours, theirs = theirs, ours
    if theirs == 0:
        return "inf" if ours > 0 else "n/a"
    return f"{ours / theirs:.2f}x"


SIDE_BY_SIDE = ("", "eventlog", "Flask-SSE", "Nchan", "vs Flask-SSE", "vs Nchan", "target")


def table(rows: Sequence[Sequence[str]], header: Sequence[str] = SIDE_BY_SIDE) -> str:
    all_rows = [list(header), *[list(map(str, r)) for r in rows]]
    widths = [max(len(r[i]) if i < len(r) else 0 for r in all_rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(all_rows):
        cells = [(row[i] if i < len(row) else "").ljust(widths[i]) if i == 0
                 else (row[i] if i < len(row) else "").rjust(widths[i]) for i in range(len(header))]
        lines.append("  " + "  ".join(cells).rstrip())
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(value: float | None, target: float, lower_is_better: bool = False) -> str:
    if value is None:
        return "n/a"
    ok = value <= target if lower_is_better else value >= target
    return "met" if ok else "MISSED"


def pgbench_tps(seconds: float) -> float:
    """PostgreSQL's own rate of one-row INSERTs from 8 clients, on this machine right now: the
    reference a single publish (one row and the counter, over HTTP) is read against."""
    import psycopg
    from sqlalchemy.engine import make_url

    with fresh_database() as database_url, tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
        url = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE pgbench_reference (id bigserial PRIMARY KEY, data text)")
        script.write("INSERT INTO pgbench_reference (data) VALUES "
                     """('{"type":"order-created","data":{"sku":"ABC-123","qty":2}}');\n""")
        script.flush()
        out = subprocess.run(["pgbench", "-n", "-c", "8", "-j", "2", "-T", str(int(seconds)), "-f",
                              script.name, url], capture_output=True, text=True, check=True).stdout
    found = re.search(r"tps = ([\d.]+)", out)
    return float(found.group(1)) if found else 0.0
