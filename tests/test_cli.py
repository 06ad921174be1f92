"""The ``eventlog`` command: help texts, migrations, publish and query from a shell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from eventlog.cli import main
from eventlog.migrate import head


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A runner on a fresh SQLite file, configured the way a user would: the environment."""
    monkeypatch.setenv("EVENTLOG_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    return CliRunner()


@pytest.mark.parametrize(
    "command", [[], ["serve"], ["db"], ["db", "upgrade"], ["db", "current"], ["publish"], ["query"]]
)
def test_every_command_has_help(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(main, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage: main" in result.output or "Usage:" in result.output


def test_migrate_publish_and_query(runner: CliRunner) -> None:
    assert runner.invoke(main, ["db", "current"]).output.strip() == "none"
    newest = head()
    assert runner.invoke(main, ["db", "upgrade"]).output.strip() == f"database at revision {newest}"
    assert runner.invoke(main, ["db", "current"]).output.strip() == newest

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
