"""FHIR JSON responses: content type, _pretty, headers."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from flask import Response, request
from werkzeug.http import parse_date

from ..fhir import jsonio
from ..fhir.store import Stored

FHIR_JSON = "application/fhir+json"
# What an Accept header or _format may name for our answers (FHIR http.html#mime-type; the last is
# DSTU2's name, still sent by some clients), besides the wildcards and _format's short `json`.
JSON_TYPES = frozenset({FHIR_JSON, "application/json", "application/json+fhir"})
_ANY_JSON = JSON_TYPES | {"*/*", "application/*"}


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(moment: datetime) -> str:
    """An RFC 9110 IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) of an aware datetime, as
    `email.utils.format_datetime(usegmt=True)` writes it, at a fifth of its cost."""
    t = moment.astimezone(UTC)
    return (f"{_DAYS[t.weekday()]}, {t.day:02d} {_MONTHS[t.month - 1]} {t.year:04d} "
            f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} GMT")


@lru_cache(maxsize=256)
@lru_cache(maxsize=512)  # (clients send the same few headers: parse each once)
def accepts_json(accept: str) -> bool:
    """Whether an Accept header admits a JSON answer (RFC 9110 12.5.1): no header, or a media range
    `*/*`, `application/*` or a JSON type with q above 0; parameters such as `fhirVersion=4.0` or
    `charset` do not matter, but a fhirVersion other than R4's (`fhirVersion=5.0`) is a format this
    server does not answer in (FHIR http.html#version-parameter). False for XML
    (`application/fhir+xml`) and others alone: 406."""
    if not accept.strip():
        return True
    for element in accept.split(","):
        media, *params = (part.strip() for part in element.split(";"))
        if media.lower() not in _ANY_JSON or not is_r4(params):
            continue
        weight = next((p[2:].strip() for p in params if p[:2].lower() == "q="), "1")
        try:
            if float(weight) > 0:
                return True
        except ValueError:
            continue
    return False


def is_r4(params: list[str]) -> bool:
    """Whether a media type's parameters name no FHIR version, or R4's (4.0 or 4.0.x)."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "fhirversion":
            version = value.strip().strip('"')
            if version != "4.0" and not version.startswith("4.0."):
                return False
    return True


def format_is_json(fmt: str) -> bool:
    """Whether a `_format` value names JSON (`json`, or a JSON type; a `+` decoded to a space counts)."""
    media = fmt.split(";")[0].strip().replace(" ", "+").lower()
    return media == "json" or media in JSON_TYPES


def none_match(header: str | None, etag: str) -> bool:
    """Whether If-None-Match (RFC 9110 13.1.2) holds for a read whose current ETag is `etag`: `*`, or
    a list naming that version (weak comparison: `W/"2"` and `"2"` are the same version)."""
    if not header:
        return False
    if header.strip() == "*":
        return True
    tag = etag.removeprefix("W/")
    return any(candidate.strip().removeprefix("W/") == tag for candidate in header.split(","))


def not_modified(if_none_match: str | None, if_modified_since: str | None, stored: Stored) -> bool:
    """Whether a read answers 304 (RFC 9110 13.1.2-13.1.3, FHIR http.html#cread): If-None-Match
    names the version served (`none_match`); without it, If-Modified-Since is a valid HTTP date at or
    after the version's Last-Modified (which has whole seconds)."""
    if if_none_match:
        return none_match(if_none_match, stored.etag)
    since = parse_date(if_modified_since) if if_modified_since else None
    return since is not None and stored.last_updated.replace(microsecond=0) <= since


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
