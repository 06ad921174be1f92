"""A Python client of an eventlog server: publish with safe retries, follow streams with
resume, query the audit log. Sync (``Client``) and asyncio (``AsyncClient``), over httpx.

Importing it loads neither Flask nor SQLAlchemy nor redis. Consumer positions kept in the
consumer's own SQL database, committed with its work, are in ``eventlog.client.positions``
(which needs SQLAlchemy); ``FilePosition`` keeps one in a file.
"""

from __future__ import annotations

from ._async import AsyncClient
from ._errors import (
    ClientError,
    Forbidden,
    IdempotencyConflict,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PositionConflict,
    ProblemError,
    OutOfSpace,
    QueryTooLong,
    ResetError,
    SchemaNotMigrated,
    ServiceUnavailable,
    StatementTimeout,
    TransportError,
    Unauthorized,
    UnsupportedMediaType,
)
from ._file_position import FilePosition
from ._models import Event, Reset
from ._sync import Client

__all__ = [
    "AsyncClient",
    "Client",
    "ClientError",
    "Event",
    "FilePosition",
    "Forbidden",
    "IdempotencyConflict",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "PositionConflict",
    "ProblemError",
    "OutOfSpace",
    "QueryTooLong",
    "Reset",
    "ResetError",
    "SchemaNotMigrated",
    "ServiceUnavailable",
    "StatementTimeout",
    "TransportError",
    "Unauthorized",
    "UnsupportedMediaType",
]
