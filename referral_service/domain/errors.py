"""Domain errors; the web and API layers map each kind to one status code."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Problem:
    """One problem found in a request: where (element path) and what."""

    message: str
    expression: str | None = None
    code: str = "invalid"  # FHIR issue-type code
    severity: str = "error"


@dataclass
class DomainError(Exception):
    """Base of every expected failure; carries one or more problems."""

    message: str
    problems: list[Problem] = field(default_factory=list)
    status = 400
    issue_code = "invalid"

    def __post_init__(self) -> None:
        super().__init__(self.message)
        if not self.problems:
            self.problems = [Problem(self.message, code=self.issue_code)]


class BadRequest(DomainError):
    """Malformed or structurally invalid input (400)."""

    status = 400
    issue_code = "structure"


class Unauthorized(DomainError):
    """No or bad credentials (401)."""

    status = 401
    issue_code = "login"


class InvalidToken(Unauthorized):
    """A bearer token was sent but is expired, forged or malformed (401, error=invalid_token)."""


class Forbidden(DomainError):
    """Authenticated but not allowed (403)."""

    status = 403
    issue_code = "forbidden"


class NotFound(DomainError):
    """Unknown type or id, or a record the caller may not see (404)."""

    status = 404
    issue_code = "not-found"


class Conflict(DomainError):
    """Duplicate business key or a state that forbids the change (409)."""

    status = 409
    issue_code = "duplicate"


class Gone(DomainError):
    """The resource was deleted (410)."""

    status = 410
    issue_code = "deleted"


class PreconditionFailed(DomainError):
    """Stale If-Match, or a conditional request matching several (412)."""

    status = 412
    issue_code = "conflict"


class UnsupportedMediaType(DomainError):
    """A body in a format the server does not take (415), e.g. a Bundle entry's FHIRPath Patch."""

    status = 415
    issue_code = "not-supported"


class Unprocessable(DomainError):
    """A business rule or profile refuses the content (422)."""

    status = 422
    issue_code = "business-rule"


class ServiceUnavailable(DomainError):
    """A dependency (the database) does not answer (503)."""

    status = 503
    issue_code = "transient"
