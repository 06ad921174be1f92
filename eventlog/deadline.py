"""One deadline for a request's database work (``EVENTLOG_REPLY_TIMEOUT_SECONDS``).

A timeout per wait is not a bound per request: a publish may queue behind the publish
being written, then need a new connection, then wait for an answer, each within its own
timeout and all of them in a row. ``within`` sets a moment by which the current thread's
(or greenlet's) database work must be over; every wait of the driver then ends by it
(``engines/psycopg.py`` and ``engines/pymysql.py``), a new connection is only begun with
time left for it (on PostgreSQL, libpq's whole-second ``connect_timeout``), and a publish
gives up its place in the writer's queue (``writer.py``). The pool's wait for a free
connection is not covered: SQLAlchemy's ``pool_timeout`` is one number per pool.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from contextvars import ContextVar

MIN_CONNECT_SECONDS = 2  # libpq takes any connect_timeout below 2 s as 2 s

_deadline: ContextVar[float | None] = ContextVar("eventlog_database_deadline", default=None)


@contextlib.contextmanager
def within(seconds: float) -> Iterator[float | None]:
    """Bound the database work inside the block to ``seconds`` from now (0: no bound);
    yields the deadline (``time.monotonic()`` time), or None. An outer, earlier deadline
    stays in force."""
    if not seconds:
        yield _deadline.get()
        return
    outer = _deadline.get()
    moment = time.monotonic() + seconds
    token = _deadline.set(moment if outer is None else min(outer, moment))
    try:
        yield _deadline.get()
    finally:
        _deadline.reset(token)


def current() -> float | None:
    """The deadline in force here, or None."""
    return _deadline.get()


def wait_limit(timeout: float) -> float:
    """How long the next wait may take: ``timeout`` (0: no bound), cut to what is left
    before the deadline; 0.0 means no bound, and a deadline already past leaves 1 ms."""
    moment = _deadline.get()
    if moment is None:
        return timeout
    left = max(moment - time.monotonic(), 0.001)
    return min(timeout, left) if timeout else left


def connect_limit(timeout: float) -> int | None:
    """The whole seconds a new connection may take (libpq's ``connect_timeout``; 0 is no
    bound), or None when the deadline leaves less than libpq's shortest, 2 s."""
    moment = _deadline.get()
    whole = math.ceil(timeout)
    if moment is None:
        return whole
    left = math.floor(moment - time.monotonic())
    if left < MIN_CONNECT_SECONDS:
        return None
    return min(whole, left) if whole else left
