"""FHIR JSON in and out with decimal precision kept (FHIR: 1.00 is not 1.0)."""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

# Deeper than any FHIR resource (Bundle > entry > resource > contained > ... nests some 20 levels) and
# far below what the recursive code after parsing (validation, profiles, orjson's 255) can follow.
MAX_DEPTH = 100

# A backslash escape that may decode to a character no FHIR string may hold: \u0000-\u001f (tab, LF and
# CR among them: told apart after parsing), \b, \f, or half of a UTF-16 surrogate pair. Raw control
# characters never get this far (json.loads refuses them) and raw surrogates are not UTF-8.
_SUSPECT_ESCAPE = re.compile(r"\\(?:u00[01]|u[dD][89a-fA-F]|[bf])")
# What such an escape decoded to, when it is not allowed: C0 controls but tab, LF and CR, and a lone
# surrogate (json.loads joins a high and a low one into one character).
_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")


class JsonError(ValueError):
    """The bytes are not RFC 8259 JSON in UTF-8 (or hold what no FHIR string may): `expression` says where."""

    def __init__(self, message: str, expression: str | None = None) -> None:
        super().__init__(message)
        self.expression = expression


def _no_constants(name: str) -> Any:
    raise JsonError(f"{name} is not allowed in JSON")


def _decode(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonError(f"the body is not valid UTF-8 (byte {exc.start})") from None
    return text[1:] if text.startswith("\ufeff") else text


def _int(text: str) -> int | Decimal:
    """A JSON integer: an int, or beyond 64 bits (what orjson writes) a Decimal with its digits."""
    value = int(text)  # ValueError beyond sys.get_int_max_str_digits()
    return value if -(2**63) <= value < 2**63 else Decimal(text)


def _parse(text: str) -> Any:
    try:
        return json.loads(text, parse_float=Decimal, parse_int=_int, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise JsonError(str(exc)) from None
    except RecursionError:
        raise JsonError("the JSON is nested too deeply") from None
    except JsonError:
        raise  # NaN or Infinity (`_no_constants`)
    except ValueError as exc:  # an integer of more than sys.get_int_max_str_digits() digits
        raise JsonError(f"a number is too long: {exc}") from None
    except InvalidOperation:  # an exponent beyond what Decimal holds (1e99999999999999999999)
        raise JsonError("a number's exponent is beyond what can be held (at most 18 digits)") from None


def loads(raw: bytes) -> Any:
    """Parse JSON; numbers with a fraction or exponent become Decimal with their exact digits.

    For JSON this service wrote itself (stored resources); request bodies go through `loads_body`.
    """
    return _parse(_decode(raw))


def loads_body(raw: bytes) -> Any:
    """Parse a request body as `loads` does, then refuse what would fail later on: JsonError (400).

    Refused: nesting deeper than MAX_DEPTH, and keys or strings holding a lone surrogate escape
    (\\ud800: no Unicode character, UTF-8 cannot encode it) or a control character other than tab,
    LF and CR (FHIR strings may not hold those; PostgreSQL cannot store NUL). This is the parser of
    every write, so the usual body costs one regex search and a bracket count on top of json.loads;
    only a body with a suspect escape (valid surrogate pairs and \\n, \\t, \\r included) is walked.
    """
    text = _decode(raw)
    suspect = _SUSPECT_ESCAPE.search(text) is not None
    data = _parse(text)
    if text.count("{") + text.count("[") > MAX_DEPTH and _too_deep(data):
        raise JsonError(f"the JSON is nested more than {MAX_DEPTH} levels deep")
    if suspect:
        root = data.get("resourceType") if isinstance(data, dict) else None
        found = _forbidden_text(data, root if isinstance(root, str) and root.isalnum() else "$")
        if found is not None:
            path, char, in_key = found
            what = "an element name" if in_key else "the string"
            if 0xD800 <= ord(char) <= 0xDFFF:
                reason = f"holds a lone UTF-16 surrogate (\\u{ord(char):04x}), which is no Unicode character"
            else:
                reason = (f"holds the control character U+{ord(char):04X}; FHIR strings allow no control "
                          "characters but tab, line feed and carriage return")
            raise JsonError(f"{path}: {what} {reason}", path)
    return data


def _too_deep(data: Any) -> bool:
    """Whether objects and arrays nest more than MAX_DEPTH levels (level by level, no recursion)."""
    level = [data] if isinstance(data, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            return True
        below: list[Any] = []
        for node in level:
            for child in node.values() if isinstance(node, dict) else node:
                if isinstance(child, dict | list):
                    below.append(child)
        level = below
    return False


def _forbidden_text(node: Any, path: str) -> tuple[str, str, bool] | None:
    """(path, character, in a key) of the first key or string holding a forbidden character."""
    if isinstance(node, str):
        hit = _FORBIDDEN.search(node)
        return (path, hit.group(), False) if hit else None
    if isinstance(node, dict):
        for key, value in node.items():
            hit = _FORBIDDEN.search(key)
            if hit:
                return (path, hit.group(), True)
            found = _forbidden_text(value, f"{path}.{key}")
            if found is not None:
                return found
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found = _forbidden_text(value, f"{path}[{index}]")
            if found is not None:
                return found
    return None


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
