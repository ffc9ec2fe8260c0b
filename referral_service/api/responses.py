"""FHIR JSON responses: content type, _pretty, headers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Response, request

from ..fhir import jsonio
from ..fhir.store import Stored

FHIR_JSON = "application/fhir+json"


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(moment: datetime) -> str:
    """An RFC 9110 IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) of an aware datetime, as
    `email.utils.format_datetime(usegmt=True)` writes it, at a fifth of its cost."""
    t = moment.astimezone(UTC)
    return (f"{_DAYS[t.weekday()]}, {t.day:02d} {_MONTHS[t.month - 1]} {t.year:04d} "
            f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} GMT")


def version_headers(stored: Stored) -> dict[str, str]:
    """The headers naming the version served: ETag and Last-Modified."""
    return {"ETag": stored.etag, "Last-Modified": http_date(stored.last_updated)}


def fhir_response(
    body: dict[str, Any] | bytes, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """Serialise a resource (or pass stored JSON bytes through) as application/fhir+json."""
    if isinstance(body, bytes):
        data = body
        if request.args.get("_pretty") == "true":
            data = jsonio.dumps(jsonio.loads(body), pretty=True)
    else:
        data = jsonio.dumps(body, pretty=request.args.get("_pretty") == "true")
    response = Response(data, status=status, content_type=f"{FHIR_JSON}; charset=utf-8")
    if headers:
        response.headers.update(headers)
    return response


def no_type_without_body(response: Response) -> Response:
    """An empty FHIR answer (201 with return=minimal, 202, 204, OPTIONS) names no content type:
    Werkzeug's default text/html would tell a client to expect HTML."""
    if (
        request.path.startswith("/fhir")
        and response.mimetype == "text/html"
        and response.is_sequence
        and not response.get_data()
    ):
        del response.headers["Content-Type"]
    return response
