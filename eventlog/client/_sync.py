"""The blocking client, over an ``httpx.Client`` (its own, or one the caller passes)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, overload

import httpx

from .. import sse
from . import _protocol as protocol
from ._errors import ProblemError
from ._models import Event, Reset

Token = str | Callable[[], str]


class Client:
    """A client of one eventlog server at ``url`` (with its prefix, if mounted under one).

    ``token``: a string, or a callable asked for one before each request, and again once
    after a 401 (so it can renew an expired token). ``timeout``: seconds for each connect,
    write and read; ``idle_timeout``: seconds a stream may stay silent (the server sends a
    heartbeat every 15 s) before the client reconnects. ``retry_for``: seconds that publish
    and query keep retrying a lost connection or a 5xx before they raise. ``http``: an
    ``httpx.Client`` to send through (the caller closes it); the timeouts apply to it too.
    """

    def __init__(
        self,
        url: str,
        *,
        token: Token | None = None,
        timeout: float = 10.0,
        idle_timeout: float = 45.0,
        retry_for: float = 60.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = httpx.Timeout(timeout)
        self._stream_timeout = httpx.Timeout(timeout, read=idle_timeout)
        self._retry_for = retry_for
        self._owned = http is None
        self._http = httpx.Client() if http is None else http

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections (not those of an ``http`` client the caller passed)."""
        if self._owned:
            self._http.close()

    def publish(self, stream: str, data: Any, *, type: str = sse.DEFAULT_TYPE) -> Event:
        """Store one event and return it. Retried with one Idempotency-Key, so it is stored
        once however many attempts it takes."""
        answer = self._publish(stream, protocol.publish_body(stream, data, type))
        return Event.from_object(answer)

    def publish_batch(self, stream: str, events: Iterable[Mapping[str, Any]]) -> list[Event]:
        """Store ``events`` (each ``{"data": ..., "type"?: ...}``) atomically, with
        consecutive ids; retried like :meth:`publish`."""
        answer = self._publish(stream, protocol.batch_body(stream, events))
        return protocol.events_of(answer)[0]

    def query(
        self,
        streams: str | Sequence[str] = (),
        *,
        types: Sequence[str] = (),
        after: int | None = None,
        before: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        order: Literal["asc", "desc"] = "asc",
        page_size: int = 1000,
    ) -> Iterator[Event]:
        """Every event that matches (all streams if none are named), page after page."""
        url: httpx.URL | None = protocol.first_page(
            self.url, streams, types, after, before, since, until, order, page_size
        )
        while url is not None:
            events, link = protocol.events_of(self._send("GET", url))
            yield from events
            url = None if link is None else url.join(link)

    @overload
    def subscribe(
        self, streams: str | Sequence[str] = ..., *, after: int | None = ...,
        resets: Literal["raise"] = ...,
    ) -> Iterator[Event]: ...

    @overload
    def subscribe(
        self, streams: str | Sequence[str] = ..., *, after: int | None, resets: Literal["yield"]
    ) -> Iterator[Event | Reset]: ...

    def subscribe(
        self, streams: str | Sequence[str] = (), *, after: int | None = None,
        resets: protocol.Resets = "raise",
    ) -> Iterator[Event] | Iterator[Event | Reset]:
        """Events of ``streams`` (all if none) with ids above ``after``, forever.

        ``after=None`` starts with new events, ``after=0`` with the oldest kept. Reconnects
        by itself (after ``retry:``, with jittered backoff) and resumes after the last event
        yielded, so no event comes twice or goes missing. Where the server cannot resume
        exactly (a resume point beyond its head, or events pruned), ``resets="raise"``
        raises ResetError and ``"yield"`` yields a Reset and goes on. A 4xx other than an
        expired token raises.
        """
        cursor = protocol.Cursor(protocol.stream_names(streams), after, resets)
        return self._follow(cursor)

    def _follow(self, cursor: protocol.Cursor) -> Iterator[Any]:
        attempts = protocol.Attempts(None, renewable=callable(self._token))
        while True:
            response = None
            try:
                with self._http.stream(
                    "GET", cursor.url(self.url), headers={**cursor.headers(), **self._auth()},
                    timeout=self._stream_timeout,
                ) as response:
                    if response.status_code != 200:
                        raise protocol.failure(response, response.read())
                    cursor.opened(response)
                    attempts.succeeded()
                    decoder = sse.Decoder()  # a frame a cut connection left half-read is dropped
                    for chunk in response.iter_bytes():
                        for item in cursor.read(decoder, chunk):
                            yield cursor.deliver(item)
                wait = attempts.ended(cursor.retry_seconds)  # the server closed the stream
            except (httpx.TransportError, ProblemError) as error:
                floor = cursor.retry_seconds
                wait = attempts.after_failure(error, response, floor=floor, first=floor)
            time.sleep(wait)

    def _publish(self, stream: str, body: bytes) -> Any:
        url, headers = protocol.publish_request(self.url, stream)
        return self._send("POST", url, body, headers)

    def _send(
        self, method: str, url: httpx.URL, body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        attempts = protocol.Attempts(self._retry_for, renewable=callable(self._token))
        while True:
            response = None
            try:
                response = self._http.request(
                    method, url, content=body, headers={**(headers or {}), **self._auth()},
                    timeout=self._timeout,
                )
                if response.status_code < 400:
                    return protocol.parse_json(response.content)
                error: Exception = protocol.failure(response, response.content)
            except httpx.TransportError as failed:
                error = failed
            time.sleep(attempts.after_failure(error, response))

    def _auth(self) -> dict[str, str]:
        token = self._token() if callable(self._token) else self._token
        return protocol.bearer(token)
