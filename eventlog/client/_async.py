"""The asyncio client, over an ``httpx.AsyncClient``: the same methods as ``Client``."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, overload

import httpx

from .. import sse
from . import _protocol as protocol
from ._errors import ProblemError
from ._models import Event, Reset

AsyncToken = str | Callable[[], str] | Callable[[], Awaitable[str]]


class AsyncClient:
    """``Client`` for asyncio: the same arguments (``http`` is an ``httpx.AsyncClient``, and
    ``token`` may be an async callable), the same methods, awaited or iterated with
    ``async for``."""

    def __init__(
        self,
        url: str,
        *,
        token: AsyncToken | None = None,
        timeout: float = 10.0,
        idle_timeout: float = 45.0,
        retry_for: float = 60.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = httpx.Timeout(timeout)
        self._stream_timeout = httpx.Timeout(timeout, read=idle_timeout)
        self._retry_for = retry_for
        self._owned = http is None
        self._http = httpx.AsyncClient() if http is None else http

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections (not those of an ``http`` client the caller passed)."""
        if self._owned:
            await self._http.aclose()

    async def publish(self, stream: str, data: Any, *, type: str = sse.DEFAULT_TYPE) -> Event:
        """See ``Client.publish``."""
        answer = await self._publish(stream, protocol.publish_body(stream, data, type))
        return Event.from_object(answer)

    async def publish_batch(self, stream: str, events: Iterable[Mapping[str, Any]]) -> list[Event]:
        """See ``Client.publish_batch``."""
        answer = await self._publish(stream, protocol.batch_body(stream, events))
        return protocol.events_of(answer)[0]

    async def query(
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
    ) -> AsyncIterator[Event]:
        """See ``Client.query``."""
        url: httpx.URL | None = protocol.first_page(
            self.url, streams, types, after, before, since, until, order, page_size
        )
        while url is not None:
            events, link = protocol.events_of(await self._send("GET", url))
            for event in events:
                yield event
            url = None if link is None else url.join(link)

    @overload
    def subscribe(
        self, streams: str | Sequence[str] = ..., *, after: int | None = ...,
        resets: Literal["raise"] = ...,
    ) -> AsyncIterator[Event]: ...

    @overload
    def subscribe(
        self, streams: str | Sequence[str] = ..., *, after: int | None, resets: Literal["yield"]
    ) -> AsyncIterator[Event | Reset]: ...

    def subscribe(
        self, streams: str | Sequence[str] = (), *, after: int | None = None,
        resets: protocol.Resets = "raise",
    ) -> AsyncIterator[Event] | AsyncIterator[Event | Reset]:
        """See ``Client.subscribe``."""
        cursor = protocol.Cursor(protocol.stream_names(streams), after, resets)
        return self._follow(cursor)

    async def _follow(self, cursor: protocol.Cursor) -> AsyncIterator[Any]:
        attempts = protocol.Attempts(None, renewable=callable(self._token))
        while True:
            response = None
            try:
                async with self._http.stream(
                    "GET", cursor.url(self.url), headers={**cursor.headers(), **await self._auth()},
                    timeout=self._stream_timeout,
                ) as response:
                    if response.status_code != 200:
                        raise protocol.failure(response, await response.aread())
                    cursor.opened(response)
                    attempts.succeeded()
                    decoder = sse.Decoder()  # a frame a cut connection left half-read is dropped
                    async for chunk in response.aiter_bytes():
                        for item in cursor.read(decoder, chunk):
                            yield cursor.deliver(item)
                wait = attempts.ended(cursor.retry_seconds)  # the server closed the stream
            except (httpx.TransportError, ProblemError) as error:
                floor = cursor.retry_seconds
                wait = attempts.after_failure(error, response, floor=floor, first=floor)
            await asyncio.sleep(wait)

    async def _publish(self, stream: str, body: bytes) -> Any:
        url, headers = protocol.publish_request(self.url, stream)
        return await self._send("POST", url, body, headers)

    async def _send(
        self, method: str, url: httpx.URL, body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        attempts = protocol.Attempts(self._retry_for, renewable=callable(self._token))
        while True:
            response = None
            try:
                response = await self._http.request(
                    method, url, content=body, headers={**(headers or {}), **await self._auth()},
                    timeout=self._timeout,
                )
                if response.status_code < 400:
                    return protocol.parse_json(response.content)
                error: Exception = protocol.failure(response, response.content)
            except httpx.TransportError as failed:
                error = failed
            await asyncio.sleep(attempts.after_failure(error, response))

    async def _auth(self) -> dict[str, str]:
        token = self._token() if callable(self._token) else self._token
        if inspect.isawaitable(token):
            token = await token
        return protocol.bearer(token)
