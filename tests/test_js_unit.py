"""The browser client's unit tests (tests/js/, Node's own test runner) pass."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from conftest import unavailable

ROOT = Path(__file__).resolve().parent.parent


def test_node_unit_tests_of_eventlog_js_pass() -> None:
    node = shutil.which("node")
    if node is None:
        unavailable("node is not installed (the unit tests of eventlog.js run in Node)")
    assert node is not None
    result = subprocess.run(
        [node, "--test", "tests/js/"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout and "# pass 0" not in result.stdout
