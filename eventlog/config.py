"""Settings: one table of every setting, read from ``EVENTLOG_*`` keys of a Flask config.

``Settings`` below is the table: each field is one setting, its default, and whether 0 is
allowed (``zero=True``: 0 turns the feature off). The key in ``app.config``, and the
environment variable the standalone app loads into it, is the field's name upper-cased
behind ``EVENTLOG_``. An app that embeds eventlog keeps its own keys (``DATABASE_URL``,
``MAX_CONTENT_LENGTH``, ...) to itself: only ``EVENTLOG_`` keys are read, none is written.

Every setting is checked once, when the extension is set up, so a bad value stops the
process at start with a message naming the key instead of failing on some later request,
and an ``EVENTLOG_*`` name that is no setting (a typo) is warned about, once, with the
closest known name.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .database import SUPPORTED, supported_url
from .deadline import MIN_CONNECT_SECONDS
from .errors import ConfigError
from .live_budget import LIVE_BYTES

PREFIX = "EVENTLOG_"
MIN_SECRET_BYTES = 32  # HS256 with a shorter key is guessable offline (RFC 7518 §3.2)
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1")
"""The names a loopback-only server answers to by default (any port). Not ``[::1]``:
Werkzeug's host check cuts each allowed name at its first colon, so no entry can match an
IPv6 literal; reach an IPv6 loopback server as ``localhost``."""
ANY_HOST = "*"


def _setting(default: Any, *, zero: bool = False, choices: tuple[str, ...] = ()) -> Any:
    """A field of the table; ``zero`` says 0 is a meaningful value (the feature is off);
    ``choices`` are the only values a text setting takes."""
    return dataclasses.field(default=default, metadata={"zero": zero, "choices": choices})


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """The checked settings one app runs with (the README's configuration table)."""

    database_url: str = "sqlite:///eventlog.db"
    database_replica_urls: str = ""
    replica_max_lag_seconds: float = 5.0
    redis_url: str = ""
    redis_channel: str = "eventlog"
    max_data_bytes: int = 1024 * 1024
    max_batch: int = 1000
    max_request_bytes: int = 8 * 1024 * 1024  # stores well within the timeouts (README)
    heartbeat_seconds: float = 15.0
    retry_ms: int = 2000
    poll_seconds: float = 1.0
    fanout_seconds: float = _setting(0.05, zero=True)
    subscriber_buffer: int = 1000
    subscriber_buffer_bytes: int = 8 * 1024 * 1024
    page_bytes: int = 8 * 1024 * 1024
    replay_bytes: int = 128 * 1024 * 1024
    live_bytes: int = LIVE_BYTES
    jwt_secret: str = ""
    jwt_public_key: str = ""
    jwt_audience: str = ""
    jwt_issuer: str = ""
    jwt_cookie: str = "eventlog_token"
    cors_origins: str = ""
    request_timeout_seconds: float = 60.0
    allowed_hosts: str = ",".join(LOOPBACK_HOSTS)
    retain_seconds: float = _setting(0.0, zero=True)
    retain_events: int = _setting(0, zero=True)
    prune_seconds: float = 60.0
    metrics: str = _setting("on", choices=("on", "off"))

    def trusted_hosts(self) -> list[str] | None:
        """``allowed_hosts`` as Flask's ``TRUSTED_HOSTS``: None (any host) for ``*``."""
        hosts = [host.strip().lower() for host in self.allowed_hosts.split(",") if host.strip()]
        return None if ANY_HOST in hosts else hosts
    # Every wait on the database, in seconds (PostgreSQL, MySQL and MariaDB; ARCHITECTURE.md
    # "Every wait is bounded" says what each bounds). 0 leaves that wait unbounded.
    connect_timeout_seconds: float = _setting(3.0, zero=True)
    reply_timeout_seconds: float = _setting(6.0, zero=True)
    statement_timeout_seconds: float = _setting(5.0, zero=True)
    lock_timeout_seconds: float = _setting(3.0, zero=True)
    idle_in_transaction_timeout_seconds: float = _setting(2.0, zero=True)
    keepalive_seconds: float = _setting(2.0, zero=True)
    pool_timeout_seconds: float = 10.0
    audit_timeout_seconds: float = _setting(2.0, zero=True)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        """Read the ``EVENTLOG_*`` keys of ``config``; a missing key takes its default."""
        values = {
            field.name: _coerce(field, config.get(key_of(field.name), field.default))
            for field in dataclasses.fields(cls)
        }
        values["database_url"] = _database_url(values["database_url"])
        values["database_replica_urls"] = _replica_urls(values["database_replica_urls"], values["database_url"])
        if values["jwt_secret"] and len(values["jwt_secret"].encode()) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"{key_of('jwt_secret')} must be at least {MIN_SECRET_BYTES} bytes"
                " (e.g. the output of `openssl rand -hex 32`)"
            )
        values["cors_origins"] = _origins(values["cors_origins"])
        if not values["allowed_hosts"].strip(", "):
            raise ConfigError(f"{key_of('allowed_hosts')} is empty; name the hosts, or * for any")
        _check_reply_timeout(values)
        if values["live_bytes"] < values["subscriber_buffer_bytes"]:
            raise ConfigError(
                f"{key_of('live_bytes')} ({values['live_bytes']}), what all of a worker's live"
                f" buffers hold together, must be at least {key_of('subscriber_buffer_bytes')}"
                f" ({values['subscriber_buffer_bytes']}), what one of them holds"
            )
        return cls(**values)

    @property
    def replica_urls(self) -> list[str]:
        """The read replicas' URLs (``EVENTLOG_DATABASE_REPLICA_URLS``), in their order."""
        return self.database_replica_urls.split(",") if self.database_replica_urls else []

    @property
    def origins(self) -> frozenset[str]:
        """The origins allowed to call from a browser (``EVENTLOG_CORS_ORIGINS``)."""
        return frozenset(self.cors_origins.split(",")) if self.cors_origins else frozenset()


def is_loopback(host: str) -> bool:
    """Whether a listen address (``eventlog serve --host``) is on the loopback interface only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def key_of(name: str) -> str:
    """The config key (and environment variable) of the setting named ``name``."""
    return PREFIX + name.upper()


KEYS = tuple(key_of(field.name) for field in dataclasses.fields(Settings))
"""Every setting's config key, in the table's order."""


COMMAND_KEYS = (
    "EVENTLOG_HOST", "EVENTLOG_PORT", "EVENTLOG_WORKERS", "EVENTLOG_WORKER_CONNECTIONS",
    "EVENTLOG_INSECURE", "EVENTLOG_LOG_LEVEL", "EVENTLOG_ACCESS_LOG", "EVENTLOG_LOG_FORMAT",
    "EVENTLOG_TOKEN", "EVENTLOG_URL",
)
"""The environment variables the command line reads for its options (cli.py), beside KEYS."""
TEST_PREFIX = "EVENTLOG_TEST_"
"""The test suite's own variables (README, Development)."""
_warned: set[str] = set()


def unknown_names(names: Iterable[str], known: Collection[str] = KEYS) -> dict[str, str]:
    """The ``EVENTLOG_*`` names in ``names`` that are not in ``known``, each with a warning
    naming the closest known one; each name once per process (later calls leave it out)."""
    suffixes = [key.removeprefix(PREFIX) for key in known]
    warnings = {}
    for name in sorted(set(names)):
        if not name.startswith(PREFIX) or name.startswith(TEST_PREFIX) or name in known or name in _warned:
            continue
        _warned.add(name)
        closest = difflib.get_close_matches(name.removeprefix(PREFIX), suffixes, n=1)
        hint = f"; did you mean {PREFIX}{closest[0]}?" if closest else ""
        warnings[name] = f"{name} is not an eventlog setting and is ignored{hint}"
    return warnings


def from_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The settings given as environment variables, under their config keys."""
    return {key: environ[key] for key in KEYS if key in environ}


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd]?)")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds from a duration: a number of seconds, or a number with ``s``, ``m``, ``h`` or
    ``d`` (``90``, ``0.5``, ``30m``, ``1h``, ``7d``); ValueError for anything else. The
    ``*_SECONDS`` settings and ``eventlog token create --ttl`` take these."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _coerce(field: dataclasses.Field[Any], raw: Any) -> Any:
    """Convert ``raw`` to the type of the field's default, refusing what does not fit."""
    key = key_of(field.name)
    kind: type[Any] = type(field.default)
    if kind is str:
        text = "" if raw is None else str(raw)
        choices = field.metadata.get("choices", ())
        if choices and text not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {raw!r}")
        return text
    duration = field.name.endswith("_seconds")
    try:
        value = parse_duration(raw) if duration and isinstance(raw, str) else kind(raw)
    except (TypeError, ValueError):
        try:
            value = kind(raw)  # what a duration is not, such as a negative number
        except (TypeError, ValueError):
            wanted = "a number of seconds, or a duration such as 30m, 1h or 7d" if duration else "a number"
            raise ConfigError(f"{key} must be {wanted}, got {raw!r}") from None
    if field.metadata.get("zero", False):
        if isinstance(raw, bool) or value < 0:
            raise ConfigError(f"{key} must be 0 or a positive number, got {raw!r}")
    elif isinstance(raw, bool) or value <= 0:
        raise ConfigError(f"{key} must be a positive number, got {raw!r}")
    return value


def _check_reply_timeout(values: dict[str, Any]) -> None:
    """This side must wait longer than the server's own caps, so that a statement the server
    cancels reports why (a 503 or the audit's "too long") instead of a lost connection; and
    longer than a new connection may take (libpq: whole seconds, at least 2), since the reply
    timeout bounds a request's database work in all, connecting included (``deadline.py``)."""
    reply = values["reply_timeout_seconds"]
    for name in ("statement_timeout_seconds", "audit_timeout_seconds"):
        if reply and not 0 < values[name] < reply:
            raise ConfigError(
                f"{key_of('reply_timeout_seconds')} ({reply:g}) must be above {key_of(name)}"
                f" ({values[name]:g}), which must then not be 0"
            )
    connect = values["connect_timeout_seconds"]
    if reply and connect and reply <= max(MIN_CONNECT_SECONDS, math.ceil(connect)):
        raise ConfigError(
            f"{key_of('reply_timeout_seconds')} ({reply:g}) must be above"
            f" {key_of('connect_timeout_seconds')} ({connect:g}) rounded up to whole seconds,"
            f" and above {MIN_CONNECT_SECONDS}"
        )


def _database_url(raw: str) -> str:
    """Check the database URL; one without a driver gets eventlog's (``postgres://`` and
    ``postgresql://`` psycopg, ``mysql://`` and ``mariadb://`` PyMySQL).

    Those spellings are what hosting providers hand out, and SQLAlchemy would otherwise
    refuse ``postgres://`` and look for drivers eventlog does not install for the others.
    """
    key = key_of("database_url")
    if not raw:
        raise ConfigError(f"{key} is empty; set a SQLAlchemy URL such as sqlite:///eventlog.db")
    try:
        url: URL = make_url(raw)
    except ArgumentError:
        raise ConfigError(
            f"{key} is not a database URL; use e.g. sqlite:///eventlog.db or"
            " postgresql+psycopg://user@host/db"
        ) from None
    supported = supported_url(url)
    if supported is None:
        raise ConfigError(f"{key}: eventlog runs on {SUPPORTED}, not {url.get_backend_name()}")
    return supported.render_as_string(hide_password=False)


def _replica_urls(raw: str, primary: str) -> str:
    """Check the comma-separated replica URLs: PostgreSQL standbys of a PostgreSQL primary
    (SQLite has no replicas; MySQL's are not supported)."""
    key = key_of("database_replica_urls")
    urls = []
    for given in (u.strip() for u in raw.split(",") if u.strip()):
        try:
            url = _database_url(given)
        except ConfigError:
            raise ConfigError(f"{key}: each entry must be a PostgreSQL URL") from None
        if make_url(url).get_backend_name() != "postgresql" or make_url(primary).get_backend_name() != "postgresql":
            raise ConfigError(f"{key}: read replicas are PostgreSQL standbys of a PostgreSQL {key_of('database_url')}")
        urls.append(url)
    return ",".join(urls)


def _origins(raw: str) -> str:
    """Check a comma-separated list of exact origins; return it without spaces."""
    origins = [o.strip().lower() for o in raw.split(",") if o.strip()]
    for origin in origins:
        if not _ORIGIN.fullmatch(origin):
            raise ConfigError(
                f"{key_of('cors_origins')}: {origin[:80]!r} is not an origin; list exact origins"
                " such as https://app.example.com (no '*', no path)"
            )
    return ",".join(origins)
