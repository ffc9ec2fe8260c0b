"""Parsing of FHIR search requests into a structured query (pure; no SQL here)."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..domain.errors import BadRequest, Problem
from .resources import RESOURCES, ResourceDef
from .search_params import SearchParam, parse_date_range

DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
RESULT_PARAMS = {
    "_count",
    "_sort",
    "_include",
    "_revinclude",
    "_summary",
    "_total",
    "_format",
    "_pretty",
    "_cursor",
    "_elements",
    "_contained",
    "_containedType",
}
SORTABLE = {"_id", "_lastUpdated"}


@dataclass(frozen=True)
class Clause:
    """One search parameter occurrence: values are OR-ed, occurrences AND-ed."""

    param: SearchParam
    modifier: str | None
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Include:
    """_include=Source:param[:Target] or _revinclude=Source:param[:Target]."""

    source: str
    param: str
    target: str | None


@dataclass
class SearchQuery:
    """A parsed search on one resource type."""

    rdef: ResourceDef
    clauses: list[Clause] = field(default_factory=list)
    count: int = 50
    sort: tuple[str, bool] = ("_pk", False)  # (key, descending)
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    summary_count: bool = False
    total: str = "accurate"
    cursor: dict[str, Any] | None = None
    raw: list[tuple[str, str]] = field(default_factory=list)  # what to repeat in paging links


def _bad(message: str, expression: str | None = None) -> BadRequest:
    return BadRequest(message, [Problem(message, expression=expression, code="invalid")])


def encode_cursor(data: dict[str, Any]) -> str:
    """Opaque paging token."""
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(token: str) -> dict[str, Any]:
    """Read a paging token; 400 when it was tampered with."""
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _bad("the paging cursor is not valid", "_cursor") from None
    if not isinstance(data, dict):
        raise _bad("the paging cursor is not valid", "_cursor")
    return data


def _split_values(raw: str) -> list[str]:
    """Comma-separated OR values; a backslash escapes a comma."""
    out, current, escape = [], "", False
    for ch in raw:
        if escape:
            current += ch
            escape = False
        elif ch == "\\":
            escape = True
        elif ch == ",":
            out.append(current)
            current = ""
        else:
            current += ch
    out.append(current)
    return out


def _parse_date_value(name: str, value: str) -> tuple[str, datetime, datetime]:
    prefix = value[:2] if value[:2] in DATE_PREFIXES and not value[:2].isdigit() else "eq"
    text = value[2:] if value[:2] in DATE_PREFIXES else value
    try:
        low, high = parse_date_range(text)
    except ValueError:
        raise _bad(f"{name}: {value!r} is not a FHIR date with an optional prefix", name) from None
    return prefix, low, high


def _parse_token_value(value: str) -> tuple[str | None, str | None]:
    """(system, code): `code` -> (None, code) any system; `|code` -> ('', code); `sys|` -> (sys, None)."""
    if "|" not in value:
        return None, value
    system, _, code = value.partition("|")
    return system, code or None


def _parse_reference_value(value: str, modifier: str | None, param: SearchParam) -> tuple[str | None, str]:
    if modifier and modifier[0].isupper():
        return modifier, value.rsplit("/", 1)[-1]
    parts = value.rstrip("/").split("/")
    if len(parts) >= 2:
        return parts[-2], parts[-1]
    if len(param.targets) == 1:
        return param.targets[0], value
    return None, value


def parse_search(
    resource_type: str, args: list[tuple[str, str]], default_count: int, max_count: int
) -> SearchQuery:
    """Parse query-string pairs (GET or POST _search) into a SearchQuery; 400 on anything unknown."""
    rdef = RESOURCES[resource_type]
    query = SearchQuery(rdef=rdef, count=default_count)
    for key, raw in args:
        name, _, modifier = key.partition(":")
        if name == "_count":
            try:
                query.count = max(0, min(int(raw), max_count))
            except ValueError:
                raise _bad(f"_count must be a whole number, not {raw!r}", "_count") from None
            query.raw.append((key, raw))
        elif name == "_sort":
            first = raw.split(",")[0].strip()
            desc = first.startswith("-")
            key_name = first.lstrip("-")
            if key_name not in SORTABLE:
                raise _bad(f"_sort by {key_name!r} is not supported (use _id or _lastUpdated)", "_sort")
            query.sort = (key_name, desc)
            query.raw.append((key, raw))
        elif name in ("_include", "_revinclude"):
            parts = raw.split(":")
            if len(parts) not in (2, 3) or parts[0] not in RESOURCES:
                raise _bad(f"{name}={raw!r}: expected Type:parameter[:TargetType]", name)
            source = RESOURCES[parts[0]]
            p = source.by_name.get(parts[1])
            if p is None or p.type != "reference":
                raise _bad(f"{name}={raw!r}: {parts[0]} has no reference parameter {parts[1]!r}", name)
            inc = Include(parts[0], parts[1], parts[2] if len(parts) == 3 else None)
            if name == "_include":
                if parts[0] != resource_type:
                    raise _bad(f"_include={raw!r} must start with {resource_type}", name)
                query.includes.append(inc)
            else:
                query.revincludes.append(inc)
            query.raw.append((key, raw))
        elif name == "_summary":
            if raw == "count":
                query.summary_count = True
            elif raw not in ("false",):
                raise _bad(f"_summary={raw!r} is not supported (count or false)", "_summary")
            query.raw.append((key, raw))
        elif name == "_total":
            if raw not in ("none", "estimate", "accurate"):
                raise _bad("_total must be none, estimate or accurate", "_total")
            query.total = raw
            query.raw.append((key, raw))
        elif name == "_cursor":
            query.cursor = decode_cursor(raw)
        elif name in RESULT_PARAMS:
            continue  # formatting parameters handled by the response layer
        else:
            query.clauses.append(_parse_clause(rdef, name, modifier or None, raw))
            query.raw.append((key, raw))
    return query


def _parse_clause(rdef: ResourceDef, name: str, modifier: str | None, raw: str) -> Clause:
    if name == "_id":
        return Clause(SearchParam("_id", "special", ()), None, tuple(_split_values(raw)))
    if name == "_lastUpdated":
        return Clause(
            SearchParam("_lastUpdated", "special", ()),
            None,
            tuple(_parse_date_value(name, v) for v in _split_values(raw)),
        )
    param = rdef.by_name.get(name)
    if param is None:
        raise _bad(f"unknown search parameter {name!r} for {rdef.type}", name)
    if modifier == "missing":
        if raw not in ("true", "false"):
            raise _bad(f"{name}:missing must be true or false", name)
        return Clause(param, "missing", (raw == "true",))
    values = [v for v in _split_values(raw)]
    if any(v == "" for v in values):
        raise _bad(f"{name}: empty value", name)
    if param.type == "string":
        if modifier not in (None, "exact", "contains"):
            raise _bad(f"modifier :{modifier} is not supported on string parameter {name}", name)
        return Clause(param, modifier, tuple(values))
    if param.type == "token":
        if modifier not in (None, "not"):
            raise _bad(f"modifier :{modifier} is not supported on token parameter {name}", name)
        return Clause(param, modifier, tuple(_parse_token_value(v) for v in values))
    if param.type == "date":
        if modifier:
            raise _bad(f"modifier :{modifier} is not supported on date parameter {name}", name)
        return Clause(param, None, tuple(_parse_date_value(name, v) for v in values))
    if param.type == "reference":
        if modifier and not (modifier[0].isupper() and modifier in RESOURCES):
            raise _bad(f"modifier :{modifier} is not supported on reference parameter {name}", name)
        return Clause(param, modifier, tuple(_parse_reference_value(v, modifier, param) for v in values))
    raise _bad(f"parameter {name} cannot be searched", name)
