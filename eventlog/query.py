"""The audit query's parameters: one parser shared by the HTTP API and the CLI."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from .errors import InvalidRequest
from .events import EventFilter, rfc3339

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
PARAMETERS = frozenset({"stream", "type", "after", "before", "since", "until", "limit", "order"})
# RFC 3339's date-time, and nothing else: datetime.fromisoformat also takes ISO 8601's week
# dates, basic format and dates without a time, and refuses RFC 3339's lower-case t and z.
RFC3339 = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt](?P<hm>\d{2}:\d{2}):(?P<second>\d{2})"
    r"(?:\.(?P<fraction>\d+))?(?P<zone>[Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)


@dataclass(frozen=True, slots=True)
class AuditQuery:
    where: EventFilter
    limit: int = DEFAULT_LIMIT
    newest_first: bool = False

    def to_params(self) -> list[tuple[str, str]]:
        """The query as ``(name, value)`` pairs: what :func:`parse_audit_query` reads back."""
        where = self.where
        bounds = {"after": where.after, "before": where.before}
        times = {"since": where.since, "until": where.until}
        return [
            *(("stream", stream) for stream in where.streams),
            *(("type", kind) for kind in where.types),
            *((name, str(value)) for name, value in bounds.items() if value is not None),
            *((name, rfc3339(value)) for name, value in times.items() if value is not None),
            ("limit", str(self.limit)),
            ("order", "desc" if self.newest_first else "asc"),
        ]


def parse_audit_query(params: Iterable[tuple[str, str]]) -> AuditQuery:
    """Parse ``(name, value)`` pairs (names may repeat) into a query, or raise InvalidRequest."""
    values: dict[str, list[str]] = {}
    for name, value in params:
        if name not in PARAMETERS:
            raise InvalidRequest(f"unknown query parameter {name[:50]!r}")
        values.setdefault(name, []).append(value)

    def single(name: str) -> str | None:
        given = values.get(name)
        if given and len(given) > 1:
            raise InvalidRequest(f"query parameter {name!r} may be given once")
        return given[0] if given else None

    order = single("order") or "asc"
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be 'asc' or 'desc'")
    where = EventFilter(
        streams=tuple(values.get("stream", ())),
        types=tuple(values.get("type", ())),
        after=_id("after", single("after")),
        before=_id("before", single("before")),
        since=_time("since", single("since")),
        until=_time("until", single("until")),
    )
    limit = _id("limit", single("limit"))
    if limit is None:
        limit = DEFAULT_LIMIT
    elif not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"'limit' must be between 1 and {MAX_LIMIT}")
    return AuditQuery(where, limit, order == "desc")


def _id(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 19:
        raise InvalidRequest(f"{name!r} must be a whole number >= 0, got {value[:40]!r}")
    return int(value)


def _time(name: str, value: str | None) -> datetime | None:
    """An RFC 3339 time, exactly as a filter bound: a fraction finer than the stored
    microseconds is rounded up, and a leap second is the second after :59, so that
    ``time >= since`` and ``time < until`` select the same events as on the exact value."""
    if value is None:
        return None
    match = RFC3339.fullmatch(value)
    if match is None:
        raise InvalidRequest(
            f"{name!r} must be an RFC 3339 time with a zone, like 2026-11-24T09:00:00Z;"
            f" got {value[:40]!r}"
        )
    second = int(match["second"])
    zone = "+00:00" if match["zone"] in "Zz" else match["zone"]
    fraction = match["fraction"] or "0"
    microseconds = -(-int(fraction) * 10**6 // 10 ** len(fraction))  # rounded up
    try:
        moment = datetime.fromisoformat(f"{match['date']}T{match['hm']}:{min(second, 59):02d}{zone}")
        return moment + timedelta(seconds=second - min(second, 59), microseconds=microseconds)
    except ValueError:
        raise InvalidRequest(f"{name!r} is not a valid time: {value[:40]!r}") from None
    except OverflowError:
        raise InvalidRequest(f"{name!r} is outside the years 1 to 9999") from None
