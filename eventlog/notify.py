"""Doorbells: after a commit, tell every process's hub that the log has grown.

A notification carries only ids (``{"first": 41, "last": 43}``); the hub reads the events
themselves from SQL. So a lost notification delays delivery (until the hub's periodic
head check) and never loses an event.

    LocalNotifier   one process: rings the hub directly (the embedded default)
    RedisNotifier   many processes: rings the local hub, and PUBLISHes for the others;
                    ``listen`` holds the process's one Redis subscription
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from typing import Protocol

import redis

from . import metrics

log = logging.getLogger(__name__)

Ring = Callable[[int | None], None]
"""Called with the newest id announced, or None for "something may have been missed"."""


class Notifier(Protocol):
    def announce(self, first_id: int, last_id: int) -> None:
        """Announce ids that have just committed. Never raises: delivery does not depend on it."""

    def listen(self, ring: Ring, stop: threading.Event) -> None:
        """Call ``ring`` for every announcement, from any process, until ``stop`` is set."""

    def ping(self) -> bool:
        """Whether the notifier's transport answers (for readiness)."""

    def close(self) -> None:
        """Send what is still waiting, then release connections and threads."""


class LocalNotifier:
    """In-process notifications, for a single server process."""

    def __init__(self) -> None:
        self._rings: list[Ring] = []
        self._connected = metrics.get().notifier_connected
        self._connected.set(1)  # in-process, every announcement is heard

    def announce(self, first_id: int, last_id: int) -> None:
        for ring in list(self._rings):
            ring(last_id)

    def listen(self, ring: Ring, stop: threading.Event) -> None:
        self._rings.append(ring)
        try:
            stop.wait()
        finally:
            self._rings.remove(ring)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass


class RedisNotifier(LocalNotifier):
    """Redis pub/sub notifications, shared by every process that uses the same channel."""

    def __init__(
        self,
        url: str,
        channel: str,
        *,
        retry_seconds: float = 1.0,
        max_retry_seconds: float = 30.0,
        gather_seconds: float = 0.005,
    ) -> None:
        super().__init__()
        self.channel = channel
        # While Redis is down, each worker waits longer before each new attempt (up to the
        # cap): the periodic reads deliver meanwhile, and the log gets a line per attempt.
        self.retry_seconds = retry_seconds
        self.max_retry_seconds = max_retry_seconds
        self._failed_subscribes = 0
        self._failed_publishes = 0
        # The least time between two PUBLISHes: what is announced meanwhile shares the next.
        # Each PUBLISH cost the publishing worker half as much CPU as storing its batch did;
        # while it publishes often, other processes hear of events up to this much later
        # (this one at once). After a quiet spell the first announcement goes out at once.
        self.gather_seconds = gather_seconds
        self._sent_at = -math.inf  # time.monotonic() of the last PUBLISH
        self._client = redis.Redis.from_url(
            url, socket_connect_timeout=1.0, socket_timeout=1.0, health_check_interval=10
        )
        self._publish_paused_until = 0.0
        # Announcements waiting for the sender: the range they cover, merged.
        self._lock = threading.Lock()
        self._unsent: tuple[int, int] | None = None
        self._wake = threading.Event()
        self._closed = False
        self._sender: threading.Thread | None = None
        self._connected.set(0)  # until the subscription is confirmed

    def announce(self, first_id: int, last_id: int) -> None:
        """Ring the local hub now; PUBLISH from a background sender, off the caller's path.

        The first announcement after ``gather_seconds`` without a PUBLISH goes out at once;
        those that follow within ``gather_seconds`` of that PUBLISH, or while the sender is
        busy, go out as one message covering all their ids: a doorbell only needs the newest id.
        """
        with self._lock:
            unsent = self._unsent
            self._unsent = (first_id if unsent is None else unsent[0], last_id)
            if self._sender is None:
                self._sender = threading.Thread(
                    target=self._send, name="eventlog-announcer", daemon=True
                )
                self._sender.start()
        # The sender first: under gevent, woken greenlets run in the order they were woken,
        # and the other processes' way (PUBLISH, then their read) is the longer one; the
        # local hub's fan-out would hold the PUBLISH back for a slice of pushes.
        self._wake.set()
        super().announce(first_id, last_id)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._sender is not None:
            self._sender.join(timeout=5)
        self._client.close()

    def _send(self) -> None:
        # Runs until closed and drained: what was announced before close() still goes out,
        # so a short-lived publisher (``eventlog publish``) is heard by the other processes.
        while True:
            if not self._closed:
                self._wake.wait()
                # Coalesce only while busy: an idle sender publishes at once.
                pause = self._sent_at + self.gather_seconds - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            self._wake.clear()
            with self._lock:
                unsent, self._unsent = self._unsent, None
            if unsent is None:
                if self._closed:
                    return
                continue
            if time.monotonic() < self._publish_paused_until:
                continue  # Redis failed a moment ago; the other hubs' periodic reads cover it
            try:
                self._sent_at = time.monotonic()
                self._client.publish(self.channel, json.dumps({"first": unsent[0], "last": unsent[1]}))
                self._failed_publishes = 0
            except redis.RedisError as error:
                pause = self._backoff(self._failed_publishes)
                self._failed_publishes += 1
                self._publish_paused_until = time.monotonic() + pause
                log.warning(
                    "redis publish failed (%s); other processes will poll; next try in %.1f s",
                    type(error).__name__, pause,
                )

    def listen(self, ring: Ring, stop: threading.Event) -> None:
        self._rings.append(ring)
        try:
            while not stop.is_set():
                try:
                    self._subscribe(ring, stop)
                except redis.RedisError as error:
                    pause = self._backoff(self._failed_subscribes)
                    self._failed_subscribes += 1
                    log.warning("redis subscription lost (%s); retrying in %.1f s", type(error).__name__, pause)
                    stop.wait(pause)
        finally:
            self._rings.remove(ring)

    def _backoff(self, failures: int) -> float:
        return backoff(failures, self.retry_seconds, self.max_retry_seconds)

    def ping(self) -> bool:
        """Whether Redis answers (for readiness checks)."""
        try:
            return bool(self._client.ping())
        except redis.RedisError:
            return False

    def _subscribe(self, ring: Ring, stop: threading.Event) -> None:
        pubsub = self._client.pubsub()
        try:
            pubsub.subscribe(self.channel)
            while not stop.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    # Confirmed, now or after redis-py reconnected by itself: whatever was
                    # announced while we were not listening is in SQL, so re-read once.
                    self._connected.set(1)
                    self._failed_subscribes = 0
                    ring(None)
                elif message["type"] == "message":
                    ring(_last_id(message["data"]))
        finally:
            self._connected.set(0)
            pubsub.close()


def backoff(failures: int, base: float, cap: float, draw: Callable[[], float] = random.random) -> float:
    """The wait after ``failures`` failed attempts in a row (0 after the first): ``base``
    doubled per failure up to ``cap``, then "equal jitter" (a random point in the upper
    half), so that workers cut off together do not all come back at the same moment."""
    ceiling = min(cap, base * 2.0 ** min(failures, 30))
    return ceiling / 2 + draw() * ceiling / 2


def _last_id(payload: bytes) -> int | None:
    try:
        return int(json.loads(payload)["last"])
    except (ValueError, KeyError, TypeError):
        return None
