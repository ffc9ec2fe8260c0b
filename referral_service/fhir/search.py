"""Parsing of FHIR search requests into a structured query (pure; no SQL here)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from ..domain import resident_id
from ..domain.errors import BadRequest, Problem
from . import codes
from .resources import RESOURCES, ResourceDef
from .search_params import (
    MAX_QUANTITY_DIGITS,
    MAX_QUANTITY_EXPONENT,
    SearchParam,
    in_quantity_range,
    parse_date_range,
    quantity_bounds,
)
from .subset import Subset, parse_subset

DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_SEARCH_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
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
SORTABLE_TYPES = {"date", "string", "token", "reference"}
MAX_PK = 2**63 - 1
MAX_SORT_KEYS = 5
MAX_CHAIN_LINKS = 3  # references a chained parameter follows (`a.b.c.name`)
MAX_HAS_LEVELS = 2  # `_has` within `_has`
SORT_TEXT_MAX = 200  # the longest value a string, token or reference index row holds
_CURSOR_SALT = b"referral-service search cursor v1"


def sort_kind(rdef: ResourceDef, key: str) -> str | None:
    """How a search of the type sorts by `key` (FHIR search.html#_sort): `_pk` (insertion order),
    `_id`, `instant` (_lastUpdated), or the type of the search parameter (date, string, token,
    reference); None when it cannot."""
    if key == "_pk":
        return "_pk"
    if key in SORTABLE:
        return "_id" if key == "_id" else "instant"
    param = rdef.by_name.get(key)
    return param.type if param is not None and param.type in SORTABLE_TYPES else None


def sorts_by(rdef: ResourceDef, key: str) -> bool:
    """Whether a search of the type may be sorted by the key."""
    return sort_kind(rdef, key) is not None


@dataclass(frozen=True)
class Clause:
    """One search parameter occurrence: values are OR-ed, occurrences AND-ed."""

    param: SearchParam
    modifier: str | None
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Include:
    """_include=Source:param[:Target] or _revinclude=Source:param[:Target]; `iterate` (:iterate):
    followed from the included resources too, not only from the matches."""

    source: str
    param: str
    target: str | None
    iterate: bool = False


@dataclass
class SearchQuery:
    """A parsed search on one resource type."""

    rdef: ResourceDef
    clauses: list[Clause] = field(default_factory=list)
    count: int = 50
    sort: tuple[tuple[str, bool], ...] = (("_pk", False),)  # (key, descending) in order
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    summary_count: bool = False
    total: str = "accurate"
    cursor: dict[str, Any] | None = None  # {"v": [a value per sort key (str, datetime)], "pk": int}
    raw: list[tuple[str, str]] = field(default_factory=list)  # what to repeat in paging links
    cursor_token: str | None = None  # the _cursor as received (for the page's self link)
    subset: Subset | None = None  # _summary=true|text|data or _elements: parts of each resource
    ignored: list[str] = field(default_factory=list)  # unknown parameters left out (lenient handling)

    @property
    def sort_name(self) -> str:
        """The sort as written in _sort (`_pk` is the default order by insertion)."""
        return ",".join(f"-{key}" if desc else key for key, desc in self.sort)


def _bad(message: str, expression: str | None = None) -> BadRequest:
    return BadRequest(message, [Problem(message, expression=expression, code="invalid")])


def _checksum(payload: bytes) -> str:
    return hmac.new(_CURSOR_SALT, payload, hashlib.sha256).hexdigest()[:16]


def encode_cursor(data: dict[str, Any]) -> str:
    """Opaque paging token: the position as JSON plus a checksum, so an edited token is refused."""
    payload = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + _checksum(payload)


def decode_cursor(token: str) -> dict[str, Any]:
    """Read a paging token; 400 when it was tampered with."""
    body, _, check = token.partition(".")
    try:
        payload = base64.urlsafe_b64decode((body + "=" * (-len(body) % 4)).encode("ascii"))
        data = json.loads(payload)
    except (binascii.Error, ValueError, UnicodeError):
        raise _bad("the paging cursor is not valid", "_cursor") from None
    if not hmac.compare_digest(check.encode("ascii", "replace"), _checksum(payload).encode()):
        raise _bad("the paging cursor is not valid", "_cursor")
    if base64.urlsafe_b64encode(payload).decode().rstrip("=") != body:
        # The same payload in another spelling (spare bits of the last character set): not ours.
        raise _bad("the paging cursor is not valid", "_cursor")
    if not isinstance(data, dict):
        raise _bad("the paging cursor is not valid", "_cursor")
    return data


def _search_cursor(data: dict[str, Any], query: SearchQuery) -> dict[str, Any]:
    """The typed position of a search cursor; 400 unless it was made for this sort."""
    pk, raw = data.get("pk"), data.get("v")
    values: list[Any] = []
    valid = data.get("s") == query.sort_name and type(pk) is int and 0 <= pk <= MAX_PK
    if valid and query.sort == (("_pk", False),):
        valid = raw is None
    elif valid:
        given: list[Any] = raw if isinstance(raw, list) else []
        valid = len(given) == len(query.sort)
        for (key, _), value in zip(query.sort, given, strict=True) if valid else ():
            kind = sort_kind(query.rdef, key)
            if kind in ("instant", "date"):
                try:
                    value = datetime.fromisoformat(value) if isinstance(value, str) else None
                except ValueError:
                    value = None
                valid = valid and value is not None and value.tzinfo is not None
            else:  # _id, string, token, reference
                limit = 64 if kind == "_id" else SORT_TEXT_MAX
                valid = valid and isinstance(value, str) and len(value) <= limit
            values.append(value)
    if not valid:
        raise _bad("the paging cursor is not valid for this search", "_cursor")
    return {"v": values, "pk": pk}


def _parse_sort(rdef: ResourceDef, raw: str) -> tuple[tuple[str, bool], ...]:
    """`_sort=a,-b`: keys in order, each ascending or (with `-`) descending; 400 for a key that
    cannot be sorted by, a repeated key, or more than MAX_SORT_KEYS keys."""
    keys = [k.strip() for k in raw.split(",")]
    names = [k.removeprefix("-") for k in keys]
    for k, name in zip(keys, names, strict=True):
        if name == "_pk" or not sorts_by(rdef, name):
            raise _bad(f"_sort by {k!r} is not supported (use _id, _lastUpdated or a date, string, "
                       f"token or reference parameter of {rdef.type})", "_sort")
    if len(set(names)) != len(names):
        raise _bad(f"_sort={raw!r} names a parameter twice", "_sort")
    if len(keys) > MAX_SORT_KEYS:
        raise _bad(f"_sort takes at most {MAX_SORT_KEYS} keys", "_sort")
    return tuple((name, k.startswith("-")) for k, name in zip(keys, names, strict=True))


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
    prefix = value[:2] if value[:2] in DATE_PREFIXES else "eq"
    # A '+' of a zone offset that was not URL-encoded arrives as a space.
    text = (value[2:] if value[:2] in DATE_PREFIXES else value).strip().replace(" ", "+")
    try:
        low, high = parse_date_range(text)
    except ValueError:
        raise _bad(f"{name}: {value!r} is not a FHIR date with an optional prefix", name) from None
    return prefix, low, high


def _parse_quantity_value(
    name: str, value: str
) -> tuple[str, tuple[Decimal, ...], str | None, str | None]:
    """(prefix, bounds, system, code) of `[prefix]number`, `[prefix]number|system|code` or
    `[prefix]number||code` (FHIR search.html#quantity); system and code None when not given (`||code`:
    no system, the code matches a unit's code or its human-readable unit). 400 when malformed."""
    shape = "[prefix]number, [prefix]number|system|code or [prefix]number||code"
    number_text, *unit = value.split("|")
    if len(unit) not in (0, 2):
        raise _bad(f"{name}: {value!r} is not {shape}", name)
    prefix = "eq"
    if number_text[:2].isalpha():
        prefix, number_text = number_text[:2], number_text[2:]
        if prefix not in DATE_PREFIXES:
            raise _bad(f"{name}: unknown prefix {prefix!r} in {value!r} (eq, ne, gt, lt, ge, le, sa, eb "
                       "or ap)", name)
    # A '+' of an exponent that was not URL-encoded arrives as a space.
    number_text = number_text.strip().replace(" ", "+")
    if len(number_text) > 200 or not _SEARCH_NUMBER.fullmatch(number_text):
        raise _bad(f"{name}: {value!r} is not {shape} (a decimal number such as 5.4, -1 or 1e2)", name)
    try:
        number = Decimal(number_text)
    except InvalidOperation:  # an exponent beyond what Decimal holds (1e99999999999999999999)
        number = Decimal("NaN")  # (beyond the range searched)
    if not in_quantity_range(number):
        raise _bad(f"{name}: {number_text!r} is beyond the numbers searched (at most "
                   f"{MAX_QUANTITY_DIGITS} significant digits, between 1e-{MAX_QUANTITY_EXPONENT} and "
                   f"1e{MAX_QUANTITY_EXPONENT})", name)
    system, code = (unit[0] or None, unit[1] or None) if unit else (None, None)
    return prefix, quantity_bounds(prefix, number), system, code


def _parse_token_value(value: str) -> tuple[str | None, str | None]:
    """(system, code): `code` -> (None, code) any system; `|code` -> ('', code); `sys|` -> (sys, None)."""
    if "|" not in value:
        return None, value
    system, _, code = value.partition("|")
    if code and system == codes.RESIDENT_ID_SYSTEM:
        code = resident_id.normalise(code)  # stored upper-case: a lower-case x finds it too
    return system, code or None


def _token_values(value: str) -> tuple[tuple[str | None, str | None], ...]:
    """The (system, code) alternatives a token value searches for: a resident identity number with a
    lower-case x and no system also finds the stored upper-case one (as `system|value` does)."""
    parsed = _parse_token_value(value)
    if parsed[0] is None and len(value) == 18 and value.endswith("x") and value[:17].isdigit():
        return parsed, (codes.RESIDENT_ID_SYSTEM, resident_id.normalise(value))
    return (parsed,)


def _parse_reference_value(value: str, modifier: str | None, param: SearchParam) -> tuple[str | None, str]:
    if modifier and modifier[0].isupper():
        return modifier, value.rsplit("/", 1)[-1]
    if value.startswith(("http://", "https://", "urn:")):
        # Absolute references are external (never indexed as ours): such a value matches nothing.
        return "(external)", value
    parts = value.rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]  # a versioned reference searches for the resource
    if len(parts) >= 2:
        return parts[-2], parts[-1]
    if len(param.targets) == 1:
        return param.targets[0], value
    return None, value


def _split_condition(query: str) -> tuple[str, str]:
    """(what precedes the criteria, the criteria) of a conditional create's query: `identifier=s|v`,
    `?identifier=s|v`, or, as HAPI takes them too, `Patient?identifier=s|v` and a full URL to it."""
    head, mark, rest = query.strip().partition("?")
    return (head, rest) if mark and "=" not in head else ("", query.strip())


def is_empty_condition(query: str) -> bool:
    """Whether a conditional create's query (If-None-Exist, a Bundle entry's ifNoneExist) names no
    criteria: empty, or only `?` and `&` (after any `Type?`). As a search it would match every
    resource of the type, so it is refused (400) rather than read as "no condition" or "any
    resource" (HAPI refuses it too)."""
    return not _split_condition(query)[1].strip("&").strip()


def condition_criteria(resource_type: str, query: str) -> list[tuple[str, str]]:
    """The search parameters of a conditional create's query; 400 when it names another type."""
    head, criteria = _split_condition(query)
    named = head.rstrip("/").rsplit("/", 1)[-1]
    if head and named != resource_type:
        raise _bad(f"the condition {query[:200]!r} searches {named}, not {resource_type}", "If-None-Exist")
    return parse_qsl(criteria, keep_blank_values=True)


def _names_a_parameter(rdef: ResourceDef, name: str) -> bool:
    """Whether a search parameter name (before any modifier) is one this type knows: its own, a
    chain from one of its reference parameters, `_has`, `_id` or `_lastUpdated`."""
    return name in ("_id", "_lastUpdated", "_has") or name.partition(".")[0] in rdef.by_name


def parse_search(
    resource_type: str,
    args: list[tuple[str, str]],
    default_count: int,
    max_count: int,
    *,
    lenient: bool = False,
) -> SearchQuery:
    """Parse query-string pairs (GET or POST _search) into a SearchQuery; 400 on anything unknown,
    unless `lenient` (`Prefer: handling=lenient`, FHIR search.html#errors): then a parameter the type
    does not have is left out (`query.ignored`), as are its self and next links."""
    rdef = RESOURCES[resource_type]
    query = SearchQuery(rdef=rdef, count=default_count)
    cursor: dict[str, Any] | None = None
    for key, raw in args:
        if "\x00" in key or "\x00" in raw:
            raise _bad(f"{key}: a search parameter must not contain NUL characters", key.replace("\x00", ""))
        name, _, modifier = key.partition(":")
        if name == "_count":
            digits = raw.strip()
            if not (digits.isascii() and digits.isdigit()):
                raise _bad(f"_count must be a whole number (0 or more), not {raw!r}", "_count")
            query.count = min(int(digits), max_count) if len(digits) <= 9 else max_count
            query.raw.append((key, raw))
        elif name == "_sort":
            query.sort = _parse_sort(rdef, raw)
            query.raw.append((key, raw))
        elif name in ("_include", "_revinclude"):
            if modifier not in ("", "iterate"):
                raise _bad(f"{key} is not supported (the modifier :iterate is the only one known)", name)
            if raw.strip() == "*" or raw.split(":")[1:2] == ["*"]:
                raise _bad(f"{key}={raw!r} is not supported: wildcard includes are not; name each "
                           "reference as Type:parameter[:TargetType]", name)
            parts = raw.split(":")
            if len(parts) not in (2, 3) or parts[0] not in RESOURCES:
                raise _bad(f"{name}={raw!r}: expected Type:parameter[:TargetType]", name)
            if len(parts) == 3 and parts[2] not in RESOURCES:
                raise _bad(f"{name}={raw!r}: {parts[2]!r} is not a resource type", name)
            source = RESOURCES[parts[0]]
            if source.audit_log:
                raise _bad(f"{name}={raw!r} is not supported: AuditEvents are served from the audit log, "
                           "by their own search only", name)
            p = source.by_name.get(parts[1])
            if p is None or p.type != "reference":
                raise _bad(f"{name}={raw!r}: {parts[0]} has no reference parameter {parts[1]!r}", name)
            target = parts[2] if len(parts) == 3 else None
            if target is not None and p.targets and target not in p.targets:
                raise _bad(f"{name}={raw!r}: {parts[0]}.{parts[1]} does not refer to {target}", name)
            inc = Include(parts[0], parts[1], target, iterate=modifier == "iterate")
            if name == "_include":
                if parts[0] != resource_type and not inc.iterate:
                    raise _bad(f"_include={raw!r} must start with {resource_type} (or use "
                               f"_include:iterate to follow references of included resources)", name)
                query.includes.append(inc)
            else:
                refers_to = (target,) if target else p.targets  # (): any type
                if not inc.iterate and refers_to and resource_type not in refers_to:
                    raise _bad(f"_revinclude={raw!r}: {parts[0]}.{parts[1]} does not refer to "
                               f"{resource_type} (or use _revinclude:iterate)", name)
                query.revincludes.append(inc)
            query.raw.append((key, raw))
        elif name == "_summary":
            query.summary_count = raw == "count"  # (true, text, data: `query.subset`)
            query.raw.append((key, raw))
        elif name == "_elements":
            query.raw.append((key, raw))
        elif name == "_total":
            if raw not in ("none", "estimate", "accurate"):
                raise _bad("_total must be none, estimate or accurate", "_total")
            query.total = raw
            query.raw.append((key, raw))
        elif name == "_cursor":
            cursor = decode_cursor(raw)
            query.cursor_token = raw
        elif name in RESULT_PARAMS:
            continue  # formatting parameters handled by the response layer
        elif lenient and not _names_a_parameter(rdef, name):
            query.ignored.append(key)
        else:
            query.clauses.append(_parse_clause(rdef, name, modifier or None, raw))
            query.raw.append((key, raw))
    if cursor is not None:
        query.cursor = _search_cursor(cursor, query)
    query.subset = parse_subset(args, search=True)
    return query


def _parse_chain(rdef: ResourceDef, name: str, modifier: str | None, raw: str) -> Clause:
    """A chained parameter (FHIR search.html#chaining): `patient.identifier=...`,
    `subject:Patient.identifier=...`, up to MAX_CHAIN_LINKS references deep
    (`encounter.service-provider.name=...`, `subject:Patient.organization.name=...`). Its values
    are (target type, the clause on that type) for each type the reference may point at that has
    the next parameter; that clause is itself a chain when more links follow."""
    expression = f"{name}:{modifier}" if modifier else name
    links = expression.split(".")
    if len(links) - 1 > MAX_CHAIN_LINKS:
        raise _bad(f"{expression}: chains of at most {MAX_CHAIN_LINKS} links are supported "
                   "(reference.reference.reference.parameter)", expression)
    return _parse_links(rdef, links, raw, expression)


def _parse_links(rdef: ResourceDef, links: list[str], raw: str, expression: str) -> Clause:
    """The chain `links` (`reference[:Type]`, ..., `parameter[:modifier]`) from a resource of `rdef`.

    A link whose reference may point at several types must name one (`subject:Patient`) when more
    than one of them has the next reference parameter (FHIR search.html#chaining); the last link
    is searched on every type that has its parameter, as a one-link chain is."""
    ref_name, typed, target = links[0].partition(":")
    param = rdef.by_name.get(ref_name)
    if param is None or param.type != "reference":
        raise _bad(f"{expression}: {rdef.type} has no reference parameter {ref_name!r} to chain from",
                   expression)
    if typed and not target:
        raise _bad(f"{expression}: the ':' after {ref_name} names no type", expression)
    if target and (target not in RESOURCES or RESOURCES[target].audit_log
                   or (param.targets and target not in param.targets)):
        raise _bad(f"{expression}: {rdef.type}.{ref_name} does not refer to {target!r}", expression)
    following, _, following_modifier = links[1].partition(":")
    if not following or following.startswith("_has"):
        raise _bad(f"{expression}: a chain ends in a search parameter of the type it reaches "
                   "(not _has, not empty)", expression)
    candidates = [target] if target else sorted(
        t for t in (param.targets or RESOURCES) if not RESOURCES[t].audit_log
    )
    last = len(links) == 2
    if last:
        types = [t for t in candidates
                 if following in RESOURCES[t].by_name or following in ("_id", "_lastUpdated")]
    else:
        types = [t for t in candidates
                 if getattr(RESOURCES[t].by_name.get(following), "type", None) == "reference"]
    if not types:
        kind = "search" if last else "reference"
        raise _bad(f"{expression}: no resource {rdef.type}.{ref_name} refers to has a {kind} "
                   f"parameter {following!r}", expression)
    if last:
        if following_modifier == "missing":
            raise _bad(f"{expression}: :missing is not supported in a chain", expression)
        inner = tuple((t, _parse_clause(RESOURCES[t], following, following_modifier or None, raw))
                      for t in types)
        return Clause(param, "chain", inner)
    if len(types) > 1:
        raise _bad(f"{expression}: {rdef.type}.{ref_name} may refer to {', '.join(types)}, which all have "
                   f"{following!r}: name the type ({ref_name}:{types[0]}.{following}...)", expression)
    (reached,) = types
    return Clause(param, "chain", ((reached, _parse_links(RESOURCES[reached], links[1:], raw, expression)),))


def _parse_has(rdef: ResourceDef, modifier: str | None, raw: str, level: int = 1) -> Clause:
    """Reverse chaining (FHIR search.html#has): `_has:Observation:patient:code=8867-4` finds the
    resources that a live Observation matching `code=8867-4` refers to by its `patient` parameter.
    Up to MAX_HAS_LEVELS levels (`_has:Encounter:patient:_has:Observation:encounter:code=...`: an
    encounter of the patient that an observation with the code refers to); the final parameter may
    be chained (`_has:Observation:patient:encounter.status=finished`). Its value: ((source type,
    reference parameter, the clause on the source type),), that clause a `_has` one for a nested one."""
    parts = (modifier or "").split(":")
    key = ":".join(["_has", *parts])
    if len(parts) < 3 or parts[0] not in RESOURCES or not parts[2]:
        raise _bad(f"{key}: expected _has:Type:reference:parameter", "_has")
    source_type, ref_name, param_name = parts[:3]
    source = RESOURCES[source_type]
    if source.audit_log:
        raise _bad(f"{key}: AuditEvents are searched by their own search only", "_has")
    ref = source.by_name.get(ref_name)
    if ref is None or ref.type != "reference" or (ref.targets and rdef.type not in ref.targets):
        raise _bad(f"{key}: {source_type} has no reference parameter {ref_name!r} to {rdef.type}", "_has")
    if param_name == "_has":
        if level >= MAX_HAS_LEVELS:
            raise _bad(f"{key}: at most {MAX_HAS_LEVELS} levels of _has are supported", "_has")
        inner = _parse_has(source, ":".join(parts[3:]), raw, level + 1)
    elif param_name.startswith("_has"):
        raise _bad(f"{key}: expected _has:Type:reference:parameter", "_has")
    else:
        inner = _parse_clause(source, param_name, ":".join(parts[3:]) or None, raw)
    return Clause(SearchParam("_has", "special", ()), "has", ((source_type, ref_name, inner),))


def _parse_clause(rdef: ResourceDef, name: str, modifier: str | None, raw: str) -> Clause:
    if name == "_has":
        return _parse_has(rdef, modifier, raw)
    if "." in name or (modifier and "." in modifier):
        return _parse_chain(rdef, name, modifier, raw)
    if name in ("_id", "_lastUpdated") and modifier:
        raise _bad(f"modifier :{modifier} is not supported on {name}", name)
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
        if modifier == "text":  # the texts and displays of its codes (`search_params.texts_of`)
            return Clause(param, modifier, tuple(values))
        if modifier not in (None, "not"):
            raise _bad(f"modifier :{modifier} is not supported on token parameter {name}", name)
        return Clause(param, modifier, tuple(t for v in values for t in _token_values(v)))
    if param.type == "date":
        if modifier:
            raise _bad(f"modifier :{modifier} is not supported on date parameter {name}", name)
        return Clause(param, None, tuple(_parse_date_value(name, v) for v in values))
    if param.type == "quantity":
        if modifier:
            raise _bad(f"modifier :{modifier} is not supported on quantity parameter {name}", name)
        return Clause(param, None, tuple(_parse_quantity_value(name, v) for v in values))
    if param.type == "reference":
        if modifier and not (modifier[0].isupper() and modifier in RESOURCES):
            raise _bad(f"modifier :{modifier} is not supported on reference parameter {name}", name)
        return Clause(param, modifier, tuple(_parse_reference_value(v, modifier, param) for v in values))
    raise _bad(f"parameter {name} cannot be searched", name)
