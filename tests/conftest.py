"""Fixtures: the app on every engine, real PostgreSQL, MariaDB and Redis, and real server processes.

PostgreSQL, MariaDB (or MySQL) and Redis come from EVENTLOG_TEST_POSTGRES_URL,
EVENTLOG_TEST_MYSQL_URL and EVENTLOG_TEST_REDIS_URL (defaulting to the local servers). When one
is unreachable its tests skip with the reason, or fail when EVENTLOG_TEST_REQUIRE_SERVICES=1
(as on CI).

Nothing shared is written to: a database server's URL names where the tests connect to create
databases of their own (for PostgreSQL by default the server's own ``postgres``), and every
Redis channel a test uses is named for its run (``RUN``), so concurrent runs never meet.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from helpers import CuttableProxy, free_port, wait_until
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError

from eventlog import EventLog, create_app
from eventlog.database import make_engine
from eventlog.migrate import upgrade
from eventlog.models import Counter, Event, IdempotencyKey, PrunedStream

POSTGRES_URL = os.environ.get(
    "EVENTLOG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
MYSQL_URL = os.environ.get("EVENTLOG_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
REDIS_URL = os.environ.get("EVENTLOG_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN = uuid.uuid4().hex[:12]
"""This run's name, in every Redis channel it uses."""
REQUIRE_SERVICES = os.environ.get("EVENTLOG_TEST_REQUIRE_SERVICES") == "1"
EVENTLOG_BIN = Path(sys.executable).with_name("eventlog")


def unavailable(reason: str) -> None:
    """Skip the test for a missing service, or fail when CI requires every service."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (EVENTLOG_TEST_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


# --- databases -----------------------------------------------------------------------

# Per server engine: the test server's URL, its name for a skip, how to create and drop a database.
SERVERS = {
    "postgresql": (POSTGRES_URL, "PostgreSQL", 'CREATE DATABASE "{}"', 'DROP DATABASE IF EXISTS "{}" WITH (FORCE)'),
    "mysql": (MYSQL_URL, "MariaDB/MySQL", "CREATE DATABASE `{}` CHARACTER SET utf8mb4", "DROP DATABASE IF EXISTS `{}`"),
}


@contextlib.contextmanager
def fresh_database(engine: str, prefix: str, options: str = "") -> Iterator[Engine]:
    """An engine on a new, empty database of a server engine ("postgresql", "mysql"), created
    next to the one its EVENTLOG_TEST_*_URL names and dropped afterwards: concurrent runs
    never meet. ``options`` go to CREATE DATABASE (a locale, say)."""
    url, label, create, drop = SERVERS[engine]
    admin = make_engine(url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f"{create.format(name)} {options}"))
    except OperationalError as error:
        admin.dispose()
        unavailable(server_problem(error, admin.url, label))
    engine_on = make_engine(admin.url.set(database=name).render_as_string(hide_password=False))
    try:
        yield engine_on
    finally:
        engine_on.dispose()
        with admin.connect() as conn:
            conn.execute(text(drop.format(name)))
        admin.dispose()


fresh_postgres_database = functools.partial(fresh_database, "postgresql")


def migrated(engine: str) -> Iterator[Engine]:
    """The run's migrated database of a server engine (shared by the run, emptied per test)."""
    with fresh_database(engine, "eventlog_test") as migrated_engine:
        upgrade(migrated_engine)
        yield migrated_engine


def server_problem(error: OperationalError, url: URL, label: str) -> str:
    """Why the database server at ``url`` cannot be used: no such database, or no server answering."""
    message = str(error.orig)
    if "does not exist" in message or "Unknown database" in message:
        return (
            f"{label} at {url.set(database=None).render_as_string()} has no database {url.database!r},"
            " which the test URL names for the tests to connect to (they create databases of"
            " their own from there): create it, or name another"
        )
    return f"{label} is not reachable at {url.render_as_string()}"


@pytest.fixture(scope="session")
def postgres_engine() -> Iterator[Engine]:
    yield from migrated("postgresql")


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def mysql_engine() -> Iterator[Engine]:
    yield from migrated("mysql")


def empty_database(engine: Engine) -> None:
    """Empty the log of a server database (the counter back at 0)."""
    with engine.begin() as conn:
        for table in (Event, IdempotencyKey, PrunedStream):
            conn.execute(text(f"TRUNCATE TABLE {table.__tablename__}"))
        conn.execute(text(f"UPDATE {Counter.__tablename__} SET last_id = 0, last_time = NULL"))



def sqlite_database(folder: Path) -> str:
    """The URL of a new, migrated SQLite database in ``folder``."""
    url = f"sqlite:///{folder / 'eventlog.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


SERVER_ENGINES = {"postgresql": "postgres_engine", "mysql": "mysql_engine"}
ENGINES = ["sqlite", *SERVER_ENGINES]
"""Every engine, as ``database_url`` parameters: ``@pytest.mark.parametrize("database_url",
[...], indirect=True)`` narrows a test to some."""


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database on each engine (MariaDB for "mysql")."""
    if request.param == "sqlite":
        return sqlite_database(tmp_path)
    engine = request.getfixturevalue(SERVER_ENGINES[request.param])
    empty_database(engine)
    return url_of(engine)


@pytest.fixture
def postgres_url(postgres_engine: Engine) -> str:
    """The PostgreSQL test database, migrated and empty."""
    empty_database(postgres_engine)
    return url_of(postgres_engine)


@pytest.fixture
def mysql_url(mysql_engine: Engine) -> str:
    """The MariaDB test database, migrated and empty."""
    empty_database(mysql_engine)
    return url_of(mysql_engine)


@pytest.fixture(params=list(SERVER_ENGINES))
def server_url(request: pytest.FixtureRequest) -> str:
    """A migrated, empty database on each server engine (PostgreSQL, MariaDB), for the
    tests of a cluster: several servers on one database."""
    engine = request.getfixturevalue(SERVER_ENGINES[request.param])
    empty_database(engine)
    return url_of(engine)


def proxy_to(database_url: str) -> CuttableProxy:
    """A proxy in front of the database server of ``database_url`` that a test may cut or
    black-hole (``helpers.through`` gives a database URL by way of it)."""
    url = make_url(database_url)
    default_port = 5432 if url.get_backend_name() == "postgresql" else 3306
    return CuttableProxy(url.port or default_port, url.host or "127.0.0.1", http=False)


@pytest.fixture
def database_proxy(postgres_url: str) -> Iterator[CuttableProxy]:
    """A proxy in front of the test's PostgreSQL that the test may cut or black-hole
    (``helpers.through`` gives a database URL by way of it)."""
    proxy = proxy_to(postgres_url)
    yield proxy
    proxy.close()


@pytest.fixture
def server_proxy(server_url: str) -> Iterator[CuttableProxy]:
    """``database_proxy`` on each server engine (PostgreSQL, MariaDB)."""
    proxy = proxy_to(server_url)
    yield proxy
    proxy.close()


# --- redis -----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def redis_available() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        unavailable(f"Redis is not reachable at {REDIS_URL}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_url(redis_available: str) -> str:
    return redis_available


@pytest.fixture
def redis_channel() -> str:
    """A channel of this test's own, so concurrent test runs never hear each other."""
    return f"eventlog-test-{RUN}-{uuid.uuid4().hex[:12]}"


@dataclass
class RedisServer:
    """A redis-server of the test's own, on a free port, that the test may stop and restart."""

    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        wait_until(lambda: redis.Redis(port=self.port, socket_connect_timeout=0.2).ping())

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed")
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


# --- the app in-process -------------------------------------------------------------------

@pytest.fixture
def app(request: pytest.FixtureRequest, database_url: str) -> Iterator[Flask]:
    """The standalone app on each backend; ``@pytest.mark.settings(EVENTLOG_X=...)`` adds settings."""
    marker = request.node.get_closest_marker("settings")
    app = create_app(
        {
            "EVENTLOG_DATABASE_URL": database_url,
            "EVENTLOG_POLL_SECONDS": 0.2,
            "EVENTLOG_HEARTBEAT_SECONDS": 0.2,
            **(marker.kwargs if marker else {}),
        }
    )
    yield app
    eventlog: EventLog = app.extensions["eventlog"]
    eventlog.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def eventlog(app: Flask) -> EventLog:
    extension: EventLog = app.extensions["eventlog"]
    return extension


# --- real server processes -------------------------------------------------------------------

@dataclass
class Server:
    """An ``eventlog serve`` process; ``url`` is its base URL."""

    port: int
    env: dict[str, str]
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None  # where its stdout and stderr go, appended (default: the test's own)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        output = None if self.log is None else self.log.open("ab")
        self.process = subprocess.Popen(
            [str(EVENTLOG_BIN), "serve", "--port", str(self.port), "--no-migrate", *self.args],
            env=self.env,
            stdout=output,
            stderr=output,
            start_new_session=True,  # its own process group: kill() takes the workers too
        )
        if output is not None:
            output.close()  # the child holds its own copy
        wait_until(lambda: httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200, timeout=30)

    def kill(self) -> None:
        """Kill -9 the master and its workers at once, as in a crash: no cleanup anywhere."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def interrupt(self) -> None:
        """Begin gunicorn's quick shutdown (SIGINT): open streams are not waited for."""
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)

    def stop(self) -> None:
        """Quick shutdown, waited for."""
        self.interrupt()
        if self.process is not None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
            self.process = None


def server_env(database_url: str, redis_url: str | None = None, **settings: Any) -> dict[str, str]:
    """The environment of a server process: this one's, with only the given EVENTLOG_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLOG_")}
    env["EVENTLOG_DATABASE_URL"] = database_url
    if redis_url:
        env["EVENTLOG_REDIS_URL"] = redis_url
        env["EVENTLOG_REDIS_CHANNEL"] = f"eventlog-test-{RUN}"  # unless the test names its own
    env.update({f"EVENTLOG_{k}": str(v) for k, v in settings.items()})
    return env


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    """Start ``eventlog serve`` processes: ``start_server(database_url, redis_url=None, ...)``.

    Extra keyword arguments become EVENTLOG_* settings (``POLL_SECONDS=0.5``); ``args`` are
    extra command-line arguments; ``log`` a file for its output; ``env`` more environment
    variables. Every server is stopped when the test ends.
    """
    servers: list[Server] = []

    def start(
        database_url: str,
        redis_url: str | None = None,
        *,
        args: list[str] | None = None,
        port: int | None = None,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        **settings: Any,
    ) -> Server:
        environment = {**server_env(database_url, redis_url, **settings), **(env or {})}
        server = Server(port or free_port(), environment, args or [], log=log)
        servers.append(server)  # before start(), so a server that never got ready is stopped too
        server.start()
        return server

    yield start
    for server in servers:
        server.interrupt()  # all at once: each takes about a second to wind down
    for server in servers:
        server.stop()
