"""The errors a caller can get, each rendered as RFC 9457 problem details.

    EventlogError                 base: HTTP status, a problem type, a message for the caller
    ├── InvalidRequest        400 malformed JSON, a bad event, a bad query parameter or header
    ├── Unauthorized          401 no token, or one that is malformed, badly signed or expired
    ├── Forbidden             403 a valid token without the right to this stream
    ├── PayloadTooLarge       413 a request body over EVENTLOG_MAX_REQUEST_BYTES
    ├── UnsupportedMediaType  415 a publish whose Content-Type is not JSON
    ├── IdempotencyConflict   422 an Idempotency-Key reused for a different request
    ├── QueryTooLong          503 an audit query over EVENTLOG_AUDIT_TIMEOUT_SECONDS
    ├── SchemaBehind          503 the database lacks a table or column: run eventlog db upgrade
    ├── DatabaseUnavailable   503 the database cannot answer now (down, cut off, a wait ran out)
    ├── StatementTimeout      503 a publish the database ended at EVENTLOG_STATEMENT_TIMEOUT_SECONDS
    ├── OutOfSpace            507 the database refused a write for lack of disk space
    └── ConfigError           a setting is missing or malformed, or the schema is not there;
                              raised at start-up, where it becomes a one-line error naming the
                              setting or the command to run

The message is shown to the caller as ``detail``, so it names the problem and never
carries configuration or other secrets.
"""

from __future__ import annotations

from typing import Any

PROBLEM_BASE = "tag:eventlog,2026:problem:"
REALM = "eventlog"  # the realm of the Bearer challenges


class EventlogError(Exception):
    """Base of every error eventlog reports to a caller."""

    status = 400
    slug = "bad-request"
    title = "Bad request"

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extensions = extensions

    def problem(self) -> dict[str, Any]:
        """The RFC 9457 problem-details object for this error."""
        return problem(self.status, self.title, self.detail, slug=self.slug, **self.extensions)

    def headers(self) -> dict[str, str]:
        """Response headers the caller needs to act on the error."""
        return {}


class InvalidRequest(EventlogError):
    slug = "invalid-request"
    title = "Invalid request"


class Unauthorized(EventlogError):
    """No usable token (RFC 6750 §3): ``missing`` says none was sent at all."""

    status = 401
    slug = "unauthorized"
    title = "Unauthorized"

    def __init__(self, detail: str, *, missing: bool = False) -> None:
        super().__init__(detail)
        self.missing = missing

    def headers(self) -> dict[str, str]:
        # Without any token the challenge carries no error code, as RFC 6750 §3.1 says.
        if self.missing:
            return {"WWW-Authenticate": f'Bearer realm="{REALM}"'}
        return {"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token"'}


class Forbidden(EventlogError):
    """A valid token that lacks the right (RFC 6750 ``insufficient_scope``)."""

    status = 403
    slug = "forbidden"
    title = "Forbidden"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": f'Bearer realm="{REALM}", error="insufficient_scope"'}


class PayloadTooLarge(EventlogError):
    status = 413
    slug = "payload-too-large"
    title = "Payload too large"


class UnsupportedMediaType(EventlogError):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class IdempotencyConflict(EventlogError):
    status = 422
    slug = "idempotency-key-reused"
    title = "Idempotency key reused"


class QueryTooLong(EventlogError):
    """No Retry-After: the same query would take as long again; a narrower one would not."""

    status = 503
    slug = "query-too-long"
    title = "Query took too long"


class StatementTimeout(EventlogError):
    """The database ran the statement and stopped it at its time limit: it is up, so not
    "unavailable", and the request was not too large (the limits are set to fit well within
    the timeout, README "Limits"), so not a 413. A 503 without Retry-After, like
    QueryTooLong: the database is overloaded, and an immediate retry would add to that."""

    status = 503
    slug = "statement-timeout"
    title = "Database statement timed out"


class OutOfSpace(EventlogError):
    """507 Insufficient Storage (RFC 4918 11.5): the server cannot store what the request
    needs. No Retry-After: space comes back when an operator or retention frees it."""

    status = 507
    slug = "out-of-space"
    title = "Insufficient storage"


class SchemaBehind(EventlogError):
    """The database lacks a table or column this version uses: nothing works until an
    operator migrates it, so no Retry-After."""

    status = 503
    slug = "schema-not-migrated"
    title = "Database schema not migrated"


class DatabaseUnavailable(EventlogError):
    """Unreachable, or a wait on it ran out: the same request may succeed in a moment."""

    status = 503
    slug = "database-unavailable"
    title = "Service unavailable"
    retry_after_seconds = 1

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


class ConfigError(EventlogError):
    status = 500
    slug = "configuration"
    title = "Configuration error"


def problem(
    status: int, title: str, detail: str, *, slug: str | None = None, **extensions: Any
) -> dict[str, Any]:
    """A problem-details object; without a ``slug`` the type is ``about:blank``."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug if slug else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    body.update(extensions)
    return body
