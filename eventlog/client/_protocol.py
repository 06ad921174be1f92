"""What the sync and the async client share, with no I/O: requests, retries, stream reading.

``Client`` and ``AsyncClient`` differ only in how they wait and send; every decision
(what to send, what an answer means, whether and when to retry, which events to yield)
is made here, once.
"""

from __future__ import annotations

import random
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import httpx

from .. import errors, sse
from .. import body as strict_json
from ..events import RESET_TYPE, EventFilter, NewEvent
from ..query import MAX_LIMIT, AuditQuery
from ..validation import parse_events
from ._errors import (
    FINAL,
    ProblemError,
    ResetError,
    ServiceUnavailable,
    TransportError,
    Unauthorized,
    from_answer,
    local,
)
from ._models import Event, Reset

JSON = "application/json"
EVENT_STREAM = "text/event-stream"
FIRST_RETRY_SECONDS = 1.0
"""How long to wait before the first reconnection, until the server sends ``retry:``."""
MAX_DELAY_SECONDS = 30.0
"""The longest wait between two attempts (never shorter than the server's ``retry:``)."""
Resets = Literal["raise", "yield"]


def check(build: Any, *args: Any, **kwargs: Any) -> Any:
    """``build(*args, **kwargs)`` with eventlog's own checks turned into the client's errors."""
    try:
        return build(*args, **kwargs)
    except errors.EventlogError as error:
        raise local(error) from None


def publish_body(stream: str, data: Any, type: str) -> bytes:
    """The body of a publish of one event (checked as the server would)."""
    event: NewEvent = check(NewEvent.of, stream, data, type=type)
    return _event_json(event).encode()


def batch_body(stream: str, events: Iterable[Mapping[str, Any]]) -> bytes:
    """The body of an atomic batch: each item is ``{"data": ..., "type"?: ...}``."""
    parsed, _ = check(
        parse_events, stream, [dict(e) for e in events], max_data_bytes=sys.maxsize,
        max_batch=sys.maxsize,
    )
    return f"[{','.join(_event_json(e) for e in parsed)}]".encode()


def _event_json(event: NewEvent) -> str:
    # The type is checked against [A-Za-z0-9._:-] and data is JSON text: nothing to escape.
    return f'{{"type":"{event.type}","data":{event.data}}}'


def first_page(
    base: str, streams: str | Sequence[str], types: Sequence[str], after: int | None,
    before: int | None, since: datetime | None, until: datetime | None, order: str, page_size: int,
) -> httpx.URL:
    """The URL of an audit query's first page, checked as the server checks it."""
    if order not in ("asc", "desc"):
        raise local(errors.InvalidRequest("'order' must be 'asc' or 'desc'"))
    where = check(
        EventFilter, streams=tuple(stream_names(streams)), types=tuple(types), after=after,
        before=before, since=since, until=until,
    )
    params = AuditQuery(where, min(page_size, MAX_LIMIT), order == "desc").to_params()
    return httpx.URL(f"{base}/events", params=params)


def publish_request(base: str, stream: str) -> tuple[httpx.URL, dict[str, str]]:
    """Where a publish goes, and its headers. One key for every attempt: the server stores
    the first and answers the others with it, so a retry after a lost answer stores nothing new."""
    headers = {"Content-Type": JSON, "Idempotency-Key": str(uuid.uuid4())}
    return httpx.URL(f"{base}/streams/{stream}/events"), headers


def stream_names(streams: str | Sequence[str]) -> list[str]:
    """One stream name or several, checked."""
    names = [streams] if isinstance(streams, str) else list(streams)
    check(EventFilter, streams=tuple(names))
    return names


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def failure(response: httpx.Response, body: bytes) -> ProblemError:
    return from_answer(response.status_code, response.headers.get("content-type", ""), body)


def events_of(page: Any) -> tuple[list[Event], str | None]:
    """The events of an audit page or a batch answer, and its ``next`` link."""
    return [Event.from_object(e) for e in page["events"]], page.get("next")


def parse_json(body: bytes) -> Any:
    return strict_json.loads(body.decode())


class Attempts:
    """The retries of one request: jittered exponential backoff within ``retry_for`` seconds.

    Jitter spreads the clients that a restart dropped at once, so that they do not all come
    back in the same instant. ``Retry-After`` and ``retry:`` are floors, never shortened.
    """

    def __init__(self, retry_for: float | None, *, renewable: bool) -> None:
        self._renewable = renewable  # the token is a callable, asked again after a 401
        self._deadline = None if retry_for is None else time.monotonic() + retry_for
        self.failures = 0
        self.renewed = False  # a 401 answered by renewing the token, once per success

    def delay(self, floor: float = 0.0, first: float = 0.1) -> float | None:
        """Seconds to wait before the next attempt, or None if the time is up."""
        base = max(floor, min(MAX_DELAY_SECONDS, first * 2.0 ** min(self.failures, 10)))
        self.failures += 1
        wait = base * random.uniform(1.0, 1.5)
        if self._deadline is not None and time.monotonic() + wait > self._deadline:
            return None
        return wait

    def ended(self, floor: float) -> float:
        """How long to wait before reconnecting to a stream that the server closed."""
        wait = self.delay(floor, floor)
        assert wait is not None, "a stream is retried for ever"
        return wait

    def succeeded(self) -> None:
        self.failures = 0
        self.renewed = False

    def after_failure(
        self, error: Exception, response: httpx.Response | None, *, floor: float = 0.0,
        first: float = 0.1,
    ) -> float:
        """How long to wait after ``error`` before trying again, or raise it: 4xx at once (a
        401 after one renewal of the token), a 5xx or a lost connection when time is up."""
        if isinstance(error, Unauthorized) and self._renewable and not self.renewed:
            self.renewed = True
            return 0.0
        if isinstance(error, ProblemError) and (
            not isinstance(error, ServiceUnavailable) or isinstance(error, FINAL)
        ):
            raise error
        wait = self.delay(max(floor, retry_after(response)), first)
        if wait is None:
            if isinstance(error, ProblemError):
                raise error
            raise TransportError(f"no answer from the server: {type(error).__name__}") from error
        return wait


def retry_after(response: httpx.Response | None) -> float:
    value = None if response is None else response.headers.get("retry-after")
    return float(value) if value is not None and value.isdigit() else 0.0


@dataclass
class Cursor:
    """A subscription's place across its connections: the last id yielded, and ``retry:``.

    Each connection reads with a fresh decoder, so a frame cut in half by a dropped
    connection is never dispatched; an id at or below the last one is never yielded again.
    """

    streams: list[str]
    last_id: int | None
    resets: Resets
    retry_seconds: float = FIRST_RETRY_SECONDS

    def url(self, base: str) -> httpx.URL:
        return httpx.URL(f"{base}/events", params=[("stream", s) for s in self.streams])

    def headers(self) -> dict[str, str]:
        headers = {"Accept": EVENT_STREAM, "Cache-Control": "no-cache"}
        if self.last_id is not None:
            headers["Last-Event-ID"] = str(self.last_id)
        return headers

    def opened(self, response: httpx.Response) -> None:
        """Check that ``response`` is a stream (a proxy may answer 200 with a page)."""
        if response.headers.get("content-type", "").partition(";")[0].strip() != EVENT_STREAM:
            raise ServiceUnavailable({
                "type": "about:blank", "title": "Not an event stream", "status": response.status_code,
                "detail": "the answer is not text/event-stream (a proxy in the way?)",
            })

    def read(self, decoder: sse.Decoder, chunk: bytes) -> list[Event | Reset]:
        """What ``chunk`` completes: new events, and resets (see ``deliver``)."""
        items: list[Event | Reset] = []
        for message in decoder.feed(chunk):
            if message.event == RESET_TYPE:
                reset = _reset(message)
                self.last_id = reset.id  # below the old one after a restore: later ids are new
                items.append(reset)
                continue
            event = Event.from_json(message.data)
            if self.last_id is not None and event.id <= self.last_id:
                continue
            self.last_id = event.id
            items.append(event)
        if decoder.retry is not None:
            self.retry_seconds = decoder.retry / 1000
        return items


    def deliver(self, item: Event | Reset) -> Event | Reset:
        """``item`` for the caller, or ResetError if it is a reset the caller wants raised."""
        if isinstance(item, Reset) and self.resets == "raise":
            raise ResetError(item)
        return item


def _reset(message: sse.Message) -> Reset:
    body = parse_json(message.data.encode())
    return Reset(int(message.id), body["requested"], body["oldest"], body["head"])
