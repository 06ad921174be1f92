"""The psycopg connection of eventlog's PostgreSQL engines: it bounds the wait for an answer.

Imported by ``postgresql.py`` only when it builds an engine: psycopg picks
its wait function at import, and must do so after gevent has patched the process.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import errors

from .. import deadline


class BoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection that gives up on an answer after ``reply_timeout`` seconds, or
    at the deadline of the request's database work (``deadline.within``), whichever is first.

    Neither the server's timeouts nor TCP's end a wait when the network in between drops
    every packet after the request was acknowledged, or when a middlebox or a stuck host
    accepts bytes and never answers: only this side can. A connection that timed out is
    closed (its state is unknown), which SQLAlchemy takes as a disconnect.
    """

    reply_timeout: float = 0

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        # Within the request's deadline too (deadline.py), when one is set.
        limit = deadline.wait_limit(self.reply_timeout)
        if timeout is not None or not limit:
            return super().wait(gen, interval, timeout)
        try:
            return super().wait(gen, interval, limit)
        except errors._WaitTimeout:
            self.pgconn.finish()
            raise errors.OperationalError(
                f"no answer from the database within {limit:g} s"
            ) from None
