"""FHIR REST blueprint: /fhir (thin handlers over the FHIR machinery)."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType

from ..domain.errors import BadRequest, Problem
from ..extensions import csrf
from .responses import fhir_response

bp = Blueprint("fhir", __name__, url_prefix="/fhir")
csrf.exempt(bp)

FHIR_MIME_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")


@bp.before_request
def _check_body() -> None:
    """413 before parsing; 415 for a body that is not FHIR JSON."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge()
    has_body = request.method in ("POST", "PUT", "PATCH") and bool(request.content_length)
    if has_body and request.mimetype not in FHIR_MIME_TYPES and not request.path.endswith("/_search"):
        raise UnsupportedMediaType(
            f"Content-Type {request.mimetype or '(none)'} is not supported; send application/fhir+json"
        )


def read_json_body() -> dict[str, Any]:
    """The request body as a JSON object; 400 for anything that is not RFC 8259 JSON in UTF-8."""
    raw = request.get_data(cache=True)
    if not raw:
        raise BadRequest("the request body is empty")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        message = f"the body is not valid JSON: {exc}"
        raise BadRequest(message, [Problem(message, code="structure")]) from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object (a FHIR resource)")
    return body


@bp.get("/metadata")
def metadata() -> Response:
    """The CapabilityStatement (no token needed)."""
    from ..fhir.capability import capability_statement

    return fhir_response(capability_statement(request.url_root.rstrip("/")))
