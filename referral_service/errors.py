"""One handler per exception kind; FHIR callers always get an OperationOutcome."""

from __future__ import annotations

import logging

from flask import Flask, Response, g, jsonify, request
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from .domain.errors import DomainError, InvalidToken, Problem
from .fhir.outcome import operation_outcome

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json; charset=utf-8"

_HTTP_ISSUE_CODES = {
    400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
    406: "not-supported", 409: "conflict", 410: "deleted", 412: "conflict", 413: "too-costly",
    415: "not-supported", 422: "processing", 429: "throttled", 503: "transient",
}


def _is_fhir() -> bool:
    return request.path == "/fhir" or request.path.startswith("/fhir/")


def _answer(status: int, problems: list[Problem]) -> Response:
    rid = g.get("request_id")
    if _is_fhir():
        response = jsonify(operation_outcome(problems, rid))
        response.mimetype = "application/fhir+json"
    else:
        response = jsonify(
            error=problems[0].code, message="; ".join(p.message for p in problems), request_id=rid
        )
    response.status_code = status
    if status == 401:
        err = g.get("auth_error")
        response.headers["WWW-Authenticate"] = (
            'Bearer error="invalid_token"' if isinstance(err, InvalidToken) else 'Bearer realm="fhir"'
        )
    return response


def _is_connection_error(exc: DBAPIError) -> bool:
    return bool(exc.connection_invalidated) or (isinstance(exc, OperationalError) and _looks_unreachable(exc))


def _looks_unreachable(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return any(
        marker in text
        for marker in ("connection", "could not connect", "server closed", "terminating", "timeout",
                       "unable to open database", "refused")
    )


def _is_busy(exc: DBAPIError) -> bool:
    """Another writer held the database longer than the busy timeout (SQLite's single write lock)."""
    return isinstance(exc, OperationalError) and "database is locked" in str(exc.orig).lower()


def register_error_handlers(app: Flask) -> None:
    """Install the handlers."""

    @app.errorhandler(DomainError)
    def _domain(exc: DomainError) -> Response:
        if exc.status == 401:
            g.auth_error = exc
        return _answer(exc.status, exc.problems)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            message = "the request body is larger than the configured limit"
        elif status == 404 and _is_fhir():
            message = f"unknown FHIR endpoint {request.path}"
        else:
            message = exc.description or exc.name
        response = _answer(status, [Problem(message, code=_HTTP_ISSUE_CODES.get(status, "exception"))])
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(DBAPIError)
    def _database(exc: DBAPIError) -> Response:
        if _is_connection_error(exc):
            log.warning("database unavailable: %s", exc.__class__.__name__)
            return _answer(503, [Problem("the database is unavailable; try again shortly", code="transient")])
        if _is_busy(exc):
            log.warning("database busy: %s", exc.orig)
            return _answer(503, [Problem("the database is busy; try again shortly", code="transient")])
        log.exception("database error")
        return _answer(500, [Problem(f"internal error (request {g.get('request_id')})", code="exception")])

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error")
        return _answer(500, [Problem(f"internal error (request {g.get('request_id')})", code="exception")])
