"""The errors the client raises.

    ClientError                    base of every error below
    ├── TransportError             no answer from the server, after retrying for ``retry_for``
    ├── ResetError                 a resume point the server could not serve exactly (``.reset``)
    ├── PositionConflict           a consumer's position is already at or past this event
    └── ProblemError               the server answered with problem details (``.status``,
        │                          ``.type``, ``.title``, ``.detail``, ``.problem``)
        ├── InvalidRequest         400 a bad event, name, filter or header
        ├── Unauthorized           401 no token, or a bad or expired one (after a renewal)
        ├── Forbidden              403 the token lacks the right to this stream
        ├── NotFound               404 no such route (a wrong base URL)
        ├── PayloadTooLarge        413 an event or batch over the server's limits
        ├── UnsupportedMediaType   415
        ├── IdempotencyConflict    422 an Idempotency-Key reused for another request
        ├── QueryTooLong           503 an audit query over the server's time limit (not retried)
        ├── OutOfSpace             507 the server's database is out of disk space (not retried)
        ├── SchemaNotMigrated      503 the server's database needs `eventlog db upgrade`
        └── ServiceUnavailable     5xx the server or a proxy failed, after retrying
            └── StatementTimeout   503 the database stopped a publish at its time limit and
                                   stored nothing (it is overloaded: retried with backoff)

A problem raised before any request (a bad stream name, say) is the same class the server
would have answered with: the client checks with the server's own code and maps its errors.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .. import errors

if TYPE_CHECKING:
    from ._models import Reset


class ClientError(Exception):
    """Base of every error the client raises."""


class TransportError(ClientError):
    """The server could not be reached, or the connection failed, until the retries ran out."""


class ResetError(ClientError):
    """The stream could not continue exactly after the resume point: ``reset`` says what
    the server kept; subscribing again with ``after=reset.id`` goes on from there."""

    def __init__(self, reset: Reset) -> None:
        super().__init__(
            f"resume point {reset.requested} cannot be served exactly"
            f" (oldest kept: {reset.oldest}, head: {reset.head})"
        )
        self.reset = reset


class PositionConflict(ClientError):
    """A consumer's stored position is already at or past the event being recorded: another
    run has done this event's work. Roll the transaction back."""


class ProblemError(ClientError):
    """An answer with RFC 9457 problem details; ``problem`` is the whole object."""

    slug: str | None = None  # the problem type this class stands for

    def __init__(self, problem: dict[str, Any]) -> None:
        self.problem = problem
        self.status: int = problem.get("status", 0)
        self.type: str = problem.get("type", "about:blank")
        self.title: str = problem.get("title", "")
        self.detail: str = problem.get("detail", "")
        super().__init__(f"{self.status} {self.title}: {self.detail}")


class InvalidRequest(ProblemError):
    slug = errors.InvalidRequest.slug


class Unauthorized(ProblemError):
    slug = errors.Unauthorized.slug


class Forbidden(ProblemError):
    slug = errors.Forbidden.slug


class NotFound(ProblemError):
    """A 404: the routes exist on every server, so the base URL (or its prefix) is wrong."""


class PayloadTooLarge(ProblemError):
    slug = errors.PayloadTooLarge.slug


class UnsupportedMediaType(ProblemError):
    slug = errors.UnsupportedMediaType.slug


class IdempotencyConflict(ProblemError):
    slug = errors.IdempotencyConflict.slug


class QueryTooLong(ProblemError):
    slug = errors.QueryTooLong.slug


class OutOfSpace(ProblemError):
    slug = errors.OutOfSpace.slug


class SchemaNotMigrated(ProblemError):
    slug = errors.SchemaBehind.slug


class ServiceUnavailable(ProblemError):
    """A 5xx: the server or a proxy in front of it failed (retried first where safe)."""


class StatementTimeout(ServiceUnavailable):
    slug = errors.StatementTimeout.slug


def _every(cls: type[ProblemError]) -> list[type[ProblemError]]:
    return [cls, *(sub for direct in cls.__subclasses__() for sub in _every(direct))]


_BY_TYPE: dict[str, type[ProblemError]] = {
    errors.PROBLEM_BASE + cls.slug: cls
    for cls in _every(ProblemError)
    if cls.slug is not None
}
FINAL = (QueryTooLong, OutOfSpace, SchemaNotMigrated)
"""5xx problems that the same request would meet again at once: never retried."""


def problem_error(problem: dict[str, Any]) -> ProblemError:
    """The error for a problem-details object: by its type, else by its status."""
    cls = _BY_TYPE.get(str(problem.get("type")))
    if cls is None:
        status = problem.get("status")
        if status == 404:
            cls = NotFound
        elif isinstance(status, int) and status >= 500:
            cls = ServiceUnavailable
        else:
            cls = ProblemError
    return cls(problem)


def from_answer(status: int, content_type: str, body: bytes) -> ProblemError:
    """The error for an HTTP answer that is not a success; a body that is not problem
    details (a proxy's HTML page) becomes one with the status alone."""
    problem: Any = None
    if "json" in content_type:
        try:
            problem = json.loads(body)
        except ValueError:
            problem = None
    if not isinstance(problem, dict):
        problem = {"type": "about:blank", "title": "HTTP error", "status": status,
                   "detail": f"the server answered {status} without problem details"}
    problem.setdefault("status", status)
    return problem_error(problem)


def local(error: errors.EventlogError) -> ProblemError:
    """A problem found before sending (by the server's own checks), as the server's answer."""
    return problem_error(error.problem())
