"""The test environment is reproducible: constraints.txt pins everything eventlog[test] installs."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def _pinned() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line)
            assert match, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def _needed(name: str, extras: frozenset[str], seen: set[str]) -> None:
    """Add ``name`` and everything it requires in this environment to ``seen``."""
    key = canonicalize_name(name)
    if key in seen:
        return
    seen.add(key)
    try:
        requirements = distribution(name).requires or []
    except PackageNotFoundError:
        return  # a requirement whose marker excluded it from this platform
    for text in requirements:
        requirement = Requirement(text)
        environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
        if requirement.marker is None or any(requirement.marker.evaluate(e) for e in environments):
            _needed(requirement.name, frozenset(requirement.extras), seen)


def test_every_test_dependency_is_pinned() -> None:
    needed: set[str] = set()
    _needed("eventlog", frozenset({"test"}), needed)
    needed.discard("eventlog")
    installed = {name for name in needed if _installed(name)}
    missing = sorted(installed - set(_pinned()))
    assert not missing, f"add to constraints.txt (bash .ci/newest regenerates it): {missing}"


def _installed(name: str) -> bool:
    try:
        distribution(name)
    except PackageNotFoundError:
        return False
    return True
