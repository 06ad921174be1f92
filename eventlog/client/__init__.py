"""A Python client of an eventlog server: publish with safe retries, follow streams with
resume, query the audit log. Sync (``Client``) and asyncio (``AsyncClient``), over httpx.

Importing it loads neither Flask nor SQLAlchemy nor redis. Consumer positions kept in the
consumer's own SQL database, committed with its work, are in ``eventlog.client.positions``
(which needs SQLAlchemy); ``FilePosition`` keeps one in a file.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Names are imported when first used (PEP 562): the server's command line needs the errors
# (``_errors``) at start, and httpx (with what it brings, some 18 MB) only for --url, which
# every worker the server forks would otherwise carry.
_MODULES = {
    "AsyncClient": "_async",
    "Client": "_sync",
    "Event": "_models",
    "FilePosition": "_file_position",
    "Reset": "_models",
}  # every other name of __all__ is an error class, from _errors

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


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_MODULES.get(name, '_errors')}", __name__), name)
    globals()[name] = value  # once: later lookups do not come back here
    return value
