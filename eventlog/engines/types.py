"""Column types that keep the seam's contract on every engine: exact names, whole data, and
times with microseconds in UTC.

MySQL and MariaDB need their own: their ``_bin`` collations of utf8mb4 are PAD SPACE on
MariaDB 10.11 and on MySQL 8 (``'orders' = 'orders '`` is true), their TEXT holds 64 KiB,
and their DATETIME drops the fraction of a second unless told to keep it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer, String, Text
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

MYSQL = ("mysql", "mariadb")  # SQLAlchemy's two names for the dialect
UTF8_MAX_BYTES = 4  # a character of UTF-8 takes at most this many bytes

TABLE_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
"""Options of every eventlog table: InnoDB for transactions and row locks, utf8mb4 for every
character (the server's "utf8" stops at three bytes). Other engines ignore them."""


class Name(TypeDecorator[str]):
    """A stream name, an event type or an idempotency key of at most ``length`` characters,
    compared exactly. On MySQL and MariaDB a VARBINARY: bytes compare as bytes, trailing
    spaces and case included, on every server version."""

    impl = String
    cache_ok = True

    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in MYSQL:
            return dialect.type_descriptor(mysql.VARBINARY(self.length * UTF8_MAX_BYTES))
        return dialect.type_descriptor(String(self.length))

    def process_bind_param(self, value: str | None, dialect: Dialect) -> Any:
        # Also how a literal is rendered (``literal_binds``): bytes on MySQL only.
        return value.encode() if value is not None and dialect.name in MYSQL else value

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        return value.decode() if isinstance(value, bytes) else value

    # Elsewhere the text goes as it is: no call per value (replays read millions of names).
    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name in MYSQL:
            return super().bind_processor(dialect)
        return self.impl_instance.bind_processor(dialect)

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        if dialect.name in MYSQL:
            return super().result_processor(dialect, coltype)
        return self.impl_instance.result_processor(dialect, coltype)


Id = BigInteger().with_variant(Integer(), "sqlite")
"""An event id (SQLite only auto-increments INTEGER; ids here come from the counter anyway)."""

Data = Text().with_variant(mysql.LONGTEXT(), *MYSQL)
"""An event's JSON text (LONGTEXT on MySQL, whose TEXT stops at 64 KiB)."""


class Time(TypeDecorator[datetime]):
    """A moment with microseconds. MySQL's DATETIME has no zone: it holds UTC, given and
    read back naive (the driver would drop any zone silently)."""

    impl = DateTime
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(timezone=True)

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in MYSQL:
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is not None and value.tzinfo is not None:
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name in MYSQL:
            return super().bind_processor(dialect)
        return self.impl_instance.bind_processor(dialect)
