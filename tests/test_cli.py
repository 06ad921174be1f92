"""The ``eventlog`` command: help texts, migrations, publish and query from a shell."""

from __future__ import annotations

import importlib.metadata
import json
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import EVENTLOG_BIN, Server, fresh_database, server_env
from helpers import Listener, free_port, wait_until

import eventlog
from eventlog import migrate
from eventlog.cli import main
from eventlog.config import Settings, parse_duration


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A runner on a fresh SQLite file, configured the way a user would: the environment."""
    monkeypatch.setenv("EVENTLOG_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    return CliRunner()


@pytest.mark.parametrize(
    "command",
    [[], ["serve"], ["db"], ["db", "upgrade"], ["db", "current"], ["db", "check"], ["publish"], ["query"],
     ["token", "create"]],
)
def test_every_command_has_help(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(main, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage: main" in result.output or "Usage:" in result.output


def test_migrate_publish_and_query(runner: CliRunner) -> None:
    assert runner.invoke(main, ["db", "current"]).output.strip() == "none"
    assert runner.invoke(main, ["db", "upgrade"]).output.strip() == f"database at revision {migrate.head()}"
    assert runner.invoke(main, ["db", "current"]).output.strip() == migrate.head()

    for i in range(5):
        stream = "orders" if i % 2 == 0 else "users"
        result = runner.invoke(main, ["publish", stream, json.dumps({"n": i}), "--type", "created"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["id"] == i + 1

    lines = runner.invoke(main, ["query", "--stream", "orders"]).output.splitlines()
    assert [json.loads(line)["data"] for line in lines] == [{"n": 0}, {"n": 2}, {"n": 4}]
    lines = runner.invoke(main, ["query", "--order", "desc", "--limit", "2"]).output.splitlines()
    assert [json.loads(line)["id"] for line in lines] == [5, 4]
    lines = runner.invoke(main, ["query", "--after", "3", "--type", "created"]).output.splitlines()
    assert [json.loads(line)["id"] for line in lines] == [4, 5]


def test_bad_input_is_a_clear_error(runner: CliRunner) -> None:
    runner.invoke(main, ["db", "upgrade"])
    result = runner.invoke(main, ["publish", "orders", "{not json"])
    assert result.exit_code == 2 and "not JSON" in result.output
    result = runner.invoke(main, ["publish", "bad stream", "1"])
    assert result.exit_code == 1 and "stream name" in result.output
    result = runner.invoke(main, ["query", "--since", "yesterday"])
    assert result.exit_code == 1 and "RFC 3339" in result.output


def test_bad_setting_names_the_variable(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTLOG_MAX_BATCH", "many")
    result = runner.invoke(main, ["db", "current"])
    assert result.exit_code == 1
    assert "EVENTLOG_MAX_BATCH must be a number" in result.output


@pytest.mark.parametrize(("value", "accepted"), [("0", True), ("0.2", True), ("-1", False)])
def test_fanout_interval_may_be_zero_but_not_negative(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, value: str, accepted: bool
) -> None:
    monkeypatch.setenv("EVENTLOG_FANOUT_SECONDS", value)
    result = runner.invoke(main, ["db", "current"])
    assert (result.exit_code == 0) is accepted, result.output
    if not accepted:
        assert "EVENTLOG_FANOUT_SECONDS must be 0 or a positive number" in result.output


@pytest.mark.parametrize(
    ("value", "seconds"), [("3600", 3600), ("1h", 3600), ("30m", 1800), ("7d", 604800), ("1.5h", 5400), ("45s", 45)]
)
def test_durations_read_as_token_ttls_do(value: str, seconds: float) -> None:
    """One parser: EVENTLOG_RETAIN_SECONDS (and every *_SECONDS setting) and --ttl agree."""
    assert Settings.from_config({"EVENTLOG_RETAIN_SECONDS": value}).retain_seconds == seconds
    assert Settings.from_config({"EVENTLOG_PRUNE_SECONDS": value}).prune_seconds == seconds
    assert parse_duration(value) == seconds


def test_a_bad_duration_says_what_is_taken(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTLOG_RETAIN_SECONDS", "1 week")
    assert "EVENTLOG_RETAIN_SECONDS must be a number of seconds, or a duration such as 30m, 1h or 7d" in one_line_error(
        runner.invoke(main, ["db", "current"])
    )
    monkeypatch.delenv("EVENTLOG_RETAIN_SECONDS")
    monkeypatch.setenv("EVENTLOG_JWT_SECRET", "s" * 32)
    assert runner.invoke(main, ["token", "create", "--ttl", "1.5h"]).exit_code == 0
    assert runner.invoke(main, ["token", "create", "--ttl", "0m"]).exit_code == 2


# --- start-up failures: one line, exit status 1, nothing created by surprise -----------------

def one_line_error(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.mark.parametrize("command", [["query"], ["publish", "orders", "1"], ["db", "check"]])
def test_no_database_file_is_an_error_not_a_new_database(
    runner: CliRunner, tmp_path: Path, command: list[str]
) -> None:
    assert "run `eventlog db upgrade`" in one_line_error(runner.invoke(main, command))
    assert not (tmp_path / "cli.db").exists()


def test_a_database_without_the_schema_says_what_to_run(runner: CliRunner, tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "cli.db").close()  # an empty database file
    assert "has no eventlog schema; run `eventlog db upgrade`" in one_line_error(runner.invoke(main, ["query"]))
    assert runner.invoke(main, ["db", "current"]).output.strip() == "none"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nonsense", "EVENTLOG_DATABASE_URL is not a database URL"),
        ("oracle://db.internal/x", "EVENTLOG_DATABASE_URL: eventlog runs on SQLite, PostgreSQL, MySQL or MariaDB, not oracle"),
        ("", "EVENTLOG_DATABASE_URL is empty"),
    ],
)
def test_a_bad_database_url_names_the_setting(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, url: str, message: str
) -> None:
    monkeypatch.setenv("EVENTLOG_DATABASE_URL", url)
    assert message in one_line_error(runner.invoke(main, ["query"]))


@pytest.mark.parametrize(
    ("engine_name", "scheme"), [("postgresql", "postgres"), ("mysql", "mysql"), ("mysql", "mariadb")]
)
def test_urls_as_hosting_providers_write_them_work(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, engine_name: str, scheme: str
) -> None:
    with fresh_database(engine_name, "eventlog_cli") as engine:
        plain = engine.url.set(drivername=scheme).render_as_string(hide_password=False)
        monkeypatch.setenv("EVENTLOG_DATABASE_URL", plain)
        result = runner.invoke(main, ["db", "upgrade"])
        assert result.exit_code == 0, result.output
        result = runner.invoke(main, ["publish", "orders", "1"])
        assert json.loads(result.output)["id"] == 1


@pytest.mark.parametrize("migrate", ["--migrate", "--no-migrate"])
def test_serve_with_an_unreachable_database_is_one_line(migrate: str) -> None:
    env = server_env(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere")
    result = subprocess.run(
        [str(EVENTLOG_BIN), "serve", "--port", str(free_port()), migrate],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: cannot use the database (EVENTLOG_DATABASE_URL)")


def test_serve_without_migrating_needs_the_schema(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "empty.db").close()
    env = server_env(f"sqlite:///{tmp_path / 'empty.db'}")
    result = subprocess.run(
        [str(EVENTLOG_BIN), "serve", "--port", str(free_port()), "--no-migrate"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: the database in EVENTLOG_DATABASE_URL has no eventlog schema; run `eventlog db upgrade`"
    ]


def test_a_publish_from_the_shell_is_announced_before_the_command_exits(
    postgres_url: str, redis_url: str, redis_channel: str, start_server: Callable[..., Server]
) -> None:
    """The announcement leaves from a background sender: the command must wait for it, or
    other processes hear of the event only at their next poll (here a minute away)."""
    server = start_server(postgres_url, redis_url, REDIS_CHANNEL=redis_channel, POLL_SECONDS=60)
    listener = Listener(f"{server.url}/streams/shell/events")
    assert listener.connected.wait(10)
    env = server_env(postgres_url, redis_url, REDIS_CHANNEL=redis_channel)
    published = subprocess.run(
        [str(EVENTLOG_BIN), "publish", "shell", '{"from": "cli"}'], env=env,
        capture_output=True, text=True, timeout=60, check=True,
    )
    event_id = json.loads(published.stdout)["id"]
    wait_until(lambda: listener.ids() == [event_id], timeout=5)
    listener.close()


def test_version() -> None:
    done = subprocess.run([str(EVENTLOG_BIN), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout == f"eventlog {importlib.metadata.version('eventlog')}\n" == f"eventlog {eventlog.__version__}\n"


def test_db_current_on_a_path_that_cannot_hold_the_file_is_an_error(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EVENTLOG_DATABASE_URL", f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    assert "there is no directory for the database file" in one_line_error(runner.invoke(main, ["db", "current"]))


def test_db_upgrade_never_downgrades_and_names_unknown_revisions(runner: CliRunner) -> None:
    assert runner.invoke(main, ["db", "upgrade", "0004"]).exit_code == 0
    error = one_line_error(runner.invoke(main, ["db", "upgrade", "0001"]))
    assert error == "Error: the database is at revision 0004, past 0001; `eventlog db upgrade` does not downgrade"
    assert "there is no revision 'f00d'" in one_line_error(runner.invoke(main, ["db", "upgrade", "f00d"]))
    assert runner.invoke(main, ["db", "current"]).output.strip() == "0004"
    assert runner.invoke(main, ["db", "upgrade", "0004"]).output.strip() == "database at revision 0004"
    assert runner.invoke(main, ["db", "upgrade"]).output.strip() == f"database at revision {migrate.head()}"
