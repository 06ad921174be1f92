"""The package's public surface and its type annotations."""

from __future__ import annotations

from pathlib import Path

import eventlog

ROOT = Path(__file__).resolve().parent.parent


def test_public_names_are_pinned() -> None:
    assert sorted(eventlog.__all__) == [
        "Appended", "ConfigError", "EventFilter", "EventLog", "EventlogError", "Forbidden",
        "IdempotencyConflict", "InvalidRequest", "NewEvent", "Page", "PayloadTooLarge", "QueryTooLong",
        "StoredEvent", "Unauthorized", "UnsupportedMediaType", "blueprint", "create_app", "include_name",
    ]
    assert all(hasattr(eventlog, name) for name in eventlog.__all__)


def test_package_type_checks_strictly() -> None:
    from mypy import api

    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), str(ROOT / "eventlog")])
    assert status == 0, out + err
