"""Control characters no URL, query or form can legitimately carry are refused before any handler runs.

PostgreSQL cannot store a NUL in text (a 500 once it reached SQL), and no name, search value or id
holds the other C0 controls either; tab, carriage return and line feed stay allowed (text areas).
JSON bodies are checked by the FHIR validation, which names the element.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from flask import request
from werkzeug.routing import IntegerConverter, Map

from .domain.base import MAX_INT_KEY
from .domain.errors import BadRequest, Problem

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


def reject_control_characters() -> None:
    """400 naming where a control character was found (the path, a query parameter, a form field)."""
    req = request._get_current_object()  # type: ignore[attr-defined]  # (once, not per attribute)
    if _CONTROL.search(req.path):
        _refuse("the URL path")
    if req.query_string:
        for key, value in req.args.items(multi=True):
            if _CONTROL.search(key) or _CONTROL.search(value):
                _refuse(f"the query parameter {_printable(key)!r}")
    if req.mimetype == _FORMS[0]:
        _require_utf8_form(req.get_data(cache=True))  # (cached: the form is parsed from it next)
    if req.mimetype in _FORMS:
        for key, value in req.form.items(multi=True):
            if _CONTROL.search(key) or _CONTROL.search(value):
                _refuse(f"the form field {_printable(key)!r}")


def _require_utf8_form(raw: bytes) -> None:
    """400 for a form body whose bytes, or percent-escapes, are not UTF-8. Werkzeug drops the whole
    form then (every field: a FHIR POST _search ran without any criteria and answered everything)."""
    try:
        parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        message = "the form body is not valid UTF-8 (its bytes or its %-escapes)"
        raise BadRequest(message, [Problem(message, code="structure")]) from None


def _printable(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii")[:80]


def _refuse(where: str) -> None:
    message = f"{where} holds a control character (such as NUL), which no value may contain"
    raise BadRequest(message, [Problem(message, code="value")])


class IntKeyConverter(IntegerConverter):
    """`<key:name>`: an integer key of a 32-bit column; a larger number does not match (404)."""

    def __init__(self, url_map: Map, *args: Any, **kwargs: Any) -> None:
        super().__init__(url_map, max=MAX_INT_KEY)
