"""The README stays true: CI runs its test command, and its table lists every setting."""

from __future__ import annotations

import re
from pathlib import Path

from eventlog.cli import main
from eventlog.config import KEYS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command() -> None:
    command = re.search(r"\*\*Test it\*\*.*?```sh\n(.+?)\n```", README, re.S)
    assert command is not None
    ci = (ROOT / ".ci" / "run").read_text()
    assert command.group(1) in ci.splitlines()


def test_configuration_table_lists_every_setting() -> None:
    documented = set(re.findall(r"^\| `(EVENTLOG_\w+)` \|", README, re.M))
    settings = set(KEYS)
    options = {
        param.envvar
        for command in main.commands.values()
        for param in getattr(command, "params", [])
        if isinstance(getattr(param, "envvar", None), str)
    }
    assert documented == settings | options
