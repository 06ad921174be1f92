"""Settings: defaults, then ``EVENTLOG_*`` environment variables, then a test's mapping.

Every setting is read and checked once, when the app is created, so a bad value stops the
process at start with a message naming the variable instead of failing on some later request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from flask import Config

DEFAULTS: dict[str, Any] = {
    "DATABASE_URL": "sqlite:///eventlog.db",
    "REDIS_URL": "",
    "REDIS_CHANNEL": "eventlog",
    "MAX_DATA_BYTES": 1024 * 1024,
    "MAX_BATCH": 1000,
    "MAX_REQUEST_BYTES": 64 * 1024 * 1024,
    "HEARTBEAT_SECONDS": 15.0,
    "RETRY_MS": 2000,
    "POLL_SECONDS": 1.0,
    "FANOUT_SECONDS": 0.05,
    "SUBSCRIBER_BUFFER": 1000,
}
# The settings for which 0 means something (the feature is off) rather than a mistake.
MAY_BE_ZERO = frozenset({"FANOUT_SECONDS"})


def read_config(overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults, then ``EVENTLOG_*`` environment variables, then ``overrides`` (a test's)."""
    config = Config(root_path=".")
    config.from_mapping(DEFAULTS)
    config.from_prefixed_env("EVENTLOG")
    if overrides is not None:
        config.from_mapping(overrides)
    return config


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the environment variable."""


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """The checked settings one app runs with (see the README's configuration table)."""

    database_url: str
    redis_url: str
    redis_channel: str
    max_data_bytes: int
    max_batch: int
    max_request_bytes: int
    heartbeat_seconds: float
    retry_ms: int
    poll_seconds: float
    fanout_seconds: float
    subscriber_buffer: int

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> Settings:
        """Build settings from a Flask config whose keys are the unprefixed names."""
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            key = field.name.upper()
            raw = config.get(key, DEFAULTS[key])
            values[field.name] = _coerce(key, raw, DEFAULTS[key])
        settings = cls(**values)
        if not settings.database_url:
            raise ConfigError("EVENTLOG_DATABASE_URL is empty; set a SQLAlchemy URL")
        return settings


def _coerce(key: str, raw: Any, default: Any) -> Any:
    """Convert ``raw`` to the type of ``default``, refusing what does not fit."""
    kind = type(default)
    if kind is str:
        if raw is None:
            return ""
        return str(raw)
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"EVENTLOG_{key} must be a number, got {raw!r}") from None
    if key in MAY_BE_ZERO:
        if isinstance(raw, bool) or value < 0:
            raise ConfigError(f"EVENTLOG_{key} must be 0 or a positive number, got {raw!r}")
    elif isinstance(raw, bool) or value <= 0:
        raise ConfigError(f"EVENTLOG_{key} must be a positive number, got {raw!r}")
    return value
