"""FHIR JSON responses: content type, _pretty, headers."""

from __future__ import annotations

from typing import Any

from flask import Response, request

from ..fhir import jsonio

FHIR_JSON = "application/fhir+json"


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
