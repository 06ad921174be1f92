"""A misspelled EVENTLOG_* name is warned about at start, naming the closest known one,
once per name: in app.config for an app that embeds eventlog, in the environment for the
standalone server and commands."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from conftest import EVENTLOG_BIN, Server, server_env, sqlite_database
from flask import Flask

from eventlog import EventLog
from eventlog.cli import main
from eventlog.config import COMMAND_KEYS


def test_an_embedding_app_hears_of_each_unknown_key_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="eventlog")
    apps = []
    for _ in range(2):
        app = Flask("host")
        app.config.update(
            EVENTLOG_DATABASE_URL=f"sqlite:///{tmp_path / 'host.db'}",
            EVENTLOG_REDIS_ULR="redis://localhost:6379/0",
            EVENTLOG_JWT_SECRT="x" * 32,
            EVENTLOG_HEARTBEAT_SECOND=5,
            EVENTLOG_NOTHING_LIKE_ANY_NAME=1,
        )
        apps.append((app, EventLog(app)))
    try:
        warnings = [r.getMessage() for r in caplog.records if r.name.startswith("eventlog")]
        assert warnings == [
            "EVENTLOG_HEARTBEAT_SECOND is not an eventlog setting and is ignored; did you mean EVENTLOG_HEARTBEAT_SECONDS?",
            "EVENTLOG_JWT_SECRT is not an eventlog setting and is ignored; did you mean EVENTLOG_JWT_SECRET?",
            "EVENTLOG_NOTHING_LIKE_ANY_NAME is not an eventlog setting and is ignored",
            "EVENTLOG_REDIS_ULR is not an eventlog setting and is ignored; did you mean EVENTLOG_REDIS_URL?",
        ]
    finally:
        for _, events in apps:
            events.close()


def test_the_server_warns_once_in_its_log_format(tmp_path: Path, start_server: Callable[..., Server]) -> None:
    log = tmp_path / "server.log"
    start_server(
        sqlite_database(tmp_path), args=["--workers", "2", "--log-format", "json"], log=log,
        env={"EVENTLOG_RETAIN_SECOND": "60", "EVENTLOG_WORKER": "3"},
    )
    lines = log.read_text().splitlines()
    assert all(line.startswith("{") for line in lines), lines
    retain = [line for line in lines if "EVENTLOG_RETAIN_SECOND " in line]
    assert len(retain) == 1 and "did you mean EVENTLOG_RETAIN_SECONDS?" in retain[0]
    # Options of the command line are names it knows too.
    assert sum("did you mean EVENTLOG_WORKERS?" in line for line in lines) == 1


def test_a_command_warns_about_the_environment(tmp_path: Path) -> None:
    env = server_env(f"sqlite:///{tmp_path / 'cli.db'}", EVENTLOG_DATABSE_URL="sqlite:///typo.db")
    env["EVENTLOG_DATABSE_URL"] = env.pop("EVENTLOG_EVENTLOG_DATABSE_URL")
    done = subprocess.run([str(EVENTLOG_BIN), "db", "current"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "none"
    assert done.stderr.count("did you mean EVENTLOG_DATABASE_URL?") == 1


def test_the_command_line_keys_are_the_options_environment_variables() -> None:
    def envvars(command: click.Command) -> set[str]:
        found = {p.envvar for p in command.params if isinstance(p.envvar, str)}
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                found |= envvars(sub)
        return found

    assert envvars(main) == set(COMMAND_KEYS)
