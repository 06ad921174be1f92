"""What the client tests share: one interface over the sync and the async client, and a
proxy that lets a request through but loses its answer."""

from __future__ import annotations

import asyncio
import select
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from helpers import POLL, _reset

from eventlog.client import AsyncClient, Client, Event

TIMEOUT = 60.0  # no single step of a test waits longer than this


class SyncDriver:
    """The sync client, as the tests call it."""

    def __init__(self, url: str, **options: Any) -> None:
        self.client = Client(url, **options)

    def publish(self, stream: str, data: Any, **kw: Any) -> Event:
        return self.client.publish(stream, data, **kw)

    def publish_batch(self, stream: str, events: list[dict[str, Any]]) -> list[Event]:
        return self.client.publish_batch(stream, events)

    def query(self, *args: Any, **kw: Any) -> list[Event]:
        return list(self.client.query(*args, **kw))

    def subscribe(self, *args: Any, **kw: Any) -> Iterator[Any]:
        return self.client.subscribe(*args, **kw)

    def close(self) -> None:
        self.client.close()


class AsyncDriver:
    """The async client on an event loop of its own thread, with the sync driver's interface."""

    def __init__(self, url: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def make() -> AsyncClient:
            return AsyncClient(url, **options)

        self.client = self._run(make())
        self._iterators: list[AsyncIterator[Any]] = []

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(TIMEOUT)

    def publish(self, stream: str, data: Any, **kw: Any) -> Event:
        return self._run(self.client.publish(stream, data, **kw))  # type: ignore[no-any-return]

    def publish_batch(self, stream: str, events: list[dict[str, Any]]) -> list[Event]:
        return self._run(self.client.publish_batch(stream, events))  # type: ignore[no-any-return]

    def query(self, *args: Any, **kw: Any) -> list[Event]:
        async def collect() -> list[Event]:
            return [event async for event in self.client.query(*args, **kw)]

        return self._run(collect())  # type: ignore[no-any-return]

    def subscribe(self, *args: Any, **kw: Any) -> Iterator[Any]:
        iterator = self.client.subscribe(*args, **kw)
        self._iterators.append(iterator)
        while True:
            try:
                yield self._run(iterator.__anext__())
            except StopAsyncIteration:
                return

    def close(self) -> None:
        for iterator in self._iterators:
            self._run(iterator.aclose())  # type: ignore[attr-defined]
        self._run(self.client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


Driver = SyncDriver | AsyncDriver
DRIVERS: dict[str, Callable[..., Driver]] = {"sync": SyncDriver, "async": AsyncDriver}

GATEWAY_TIMEOUT = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 19\r\n"
    b"Connection: close\r\n\r\nService Unavailable"
)


class AnswerDropper:
    """A TCP proxy that forwards each request to the server, then loses the answer to the
    next ``drop(n)`` of them: the connection is reset (``answer=None``), or the client gets
    ``answer`` instead (a proxy's 503). The server did the work; the client cannot know."""

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(POLL)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._to_drop = 0
        self.answer: bytes | None = None
        self.dropped = threading.Event()  # set at each lost answer
        self.drops = 0
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def drop(self, count: int, answer: bytes | None = None) -> None:
        with self._lock:
            self._to_drop, self.answer = count, answer

    def close(self) -> None:
        self._closed.set()
        self._acceptor.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._pump, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _take_drop(self) -> bool:
        with self._lock:
            if self._to_drop == 0:
                return False
            self._to_drop -= 1
            return True

    def _pump(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._target, timeout=10)
        except OSError:
            _reset(client)
            return
        lost = False
        try:
            while not self._closed.is_set():
                readable, _, _ = select.select([client, upstream], [], [], POLL)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        upstream.sendall(data)
                    elif self._take_drop():
                        if self.answer is not None:
                            client.sendall(self.answer)
                        self.drops += 1
                        self.dropped.set()
                        lost = True
                        return
                    else:
                        client.sendall(data)
        except OSError:
            pass
        finally:
            if lost and self.answer is None:
                _reset(client)
            else:
                client.close()
            upstream.close()
