"""FHIR JSON in and out with decimal precision kept (FHIR: 1.00 is not 1.0)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson


class JsonError(ValueError):
    """The bytes are not RFC 8259 JSON in UTF-8."""


def _no_constants(name: str) -> Any:
    raise JsonError(f"{name} is not allowed in JSON")


def loads(raw: bytes) -> Any:
    """Parse JSON; numbers with a fraction or exponent become Decimal with their exact digits."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonError(f"the body is not valid UTF-8 (byte {exc.start})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        return json.loads(text, parse_float=Decimal, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise JsonError(str(exc)) from None
    except RecursionError:
        raise JsonError("the JSON is nested too deeply") from None


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise TypeError("non-finite decimal")
        return orjson.Fragment(str(value).encode())
    raise TypeError(f"cannot serialise {type(value).__name__} as JSON")


def dumps(value: Any, *, pretty: bool = False, sort_keys: bool = False) -> bytes:
    """Serialise; Decimals are written with exactly their digits."""
    option = (orjson.OPT_INDENT_2 if pretty else 0) | (orjson.OPT_SORT_KEYS if sort_keys else 0)
    return orjson.dumps(value, default=_default, option=option)
