"""A consumer's position in a file, for scripts with no database of their own."""

from __future__ import annotations

import os
from pathlib import Path


class FilePosition:
    """The id of the last event a script finished with, kept in the file at ``path``.

    Each ``set`` replaces the file atomically (write, fsync, rename), so a crash leaves the
    old position or the new one, never a torn file. The position and the script's work are
    not one transaction: after a crash the last event may be handled again (at least once).
    For exactly once, keep the position in the database the work goes to
    (``eventlog.client.positions``).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def get(self, default: int | None = 0) -> int | None:
        """The stored position, or ``default`` if there is none yet."""
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return default
        if not (text.isascii() and text.isdigit()):
            raise ValueError(f"{self.path} does not hold an event id")
        return int(text)

    def set(self, event_id: int) -> None:
        """Store ``event_id`` as the position."""
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with temporary.open("w") as file:
            file.write(f"{event_id}\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
