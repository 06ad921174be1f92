"""The PyMySQL connection of eventlog's MySQL and MariaDB engines: every wait ends by the
request's deadline.

PyMySQL's ``read_timeout`` and ``write_timeout`` bound each wait on the socket, not a
request: a publish queued behind one stuck for the whole reply timeout, then given a new
connection, waited for its handshake and its answer each as long again (6 s answers for a
3 s reply timeout, under a black-holed link). Here each command, and a new connection,
waits no longer than what is left of the request's database work (``deadline.within``).
"""

from __future__ import annotations

from typing import Any

from pymysql.connections import Connection

from .. import deadline

UNBOUNDED_CONNECT = 31536000  # PyMySQL's largest connect_timeout, in seconds


class BoundedConnection(Connection):
    """A PyMySQL connection whose waits end after ``reply_timeout`` seconds, or at the
    deadline of the request's database work, whichever is first. A wait that times out
    closes the connection (PyMySQL's error 2013, which SQLAlchemy takes as a disconnect)."""

    def __init__(self, *args: Any, reply_timeout: float, connect_timeout: float, **kwargs: Any) -> None:
        """PyMySQL's arguments, but its read and write timeouts: ``reply_timeout`` (0: no
        bound) replaces them."""
        self.reply_timeout = reply_timeout
        limit = _limit(reply_timeout)
        kwargs.update(
            connect_timeout=deadline.wait_limit(connect_timeout) or UNBOUNDED_CONNECT,
            read_timeout=limit,
            write_timeout=limit,
        )
        super().__init__(*args, **kwargs)

    def _execute_command(self, command: int, sql: str | bytes) -> None:
        # Every command goes through this private method (a query, COMMIT, ROLLBACK, a
        # ping; the stubs leave it out): its writes and the reads of its answer wait within
        # what is left. The socket's timeout is only set again when this differs from the
        # last (PyMySQL compares), so without a deadline it costs nothing.
        self._read_timeout = self._write_timeout = _limit(self.reply_timeout)
        super()._execute_command(command, sql)  # type: ignore[misc]


def _limit(timeout: float) -> float | None:
    """PyMySQL's socket timeout for the next wait: None is no bound."""
    return deadline.wait_limit(timeout) or None
