"""Bundles built around stored JSON bytes (no re-serialisation of the resources)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson

from ..domain.errors import BadRequest, Problem
from .search import SearchQuery, decode_cursor, encode_cursor
from .search_params import parse_date_range
from .store import SearchPage, Stored, instant
from .subset import Subset, cut_json


def _now() -> str:
    return instant(datetime.now(UTC))


def _link(relation: str, url: str) -> bytes:
    return orjson.dumps({"relation": relation, "url": url})


def _entry(base: str, stored: Stored, mode: str, query: SearchQuery) -> bytes:
    full_url = orjson.dumps(f"{base}/{stored.res_type}/{stored.res_id}")
    content = stored.content
    if query.subset is not None:
        included = stored.res_type if mode == "include" else None
        content = cut_json(content, query.subset, query.rdef.type, included=included)
    return (
        b'{"fullUrl":'
        + full_url
        + b',"resource":'
        + content
        + b',"search":{"mode":"'
        + mode.encode()
        + b'"}}'
    )


def searchset(base: str, resource_type: str, query: SearchQuery, page: SearchPage) -> bytes:
    """A searchset Bundle with self and next links (keyset cursor); never an empty next page."""
    params = [(k, v) for k, v in query.raw]
    here = [*params, ("_cursor", query.cursor_token)] if query.cursor_token else params
    self_url = f"{base}/{resource_type}" + (f"?{urlencode(here)}" if here else "")
    links = [_link("self", self_url)]
    if page.next_cursor:
        nxt = [*params, ("_cursor", page.next_cursor)]
        if not any(k == "_count" for k, _ in params):
            nxt.append(("_count", str(query.count)))
        links.append(_link("next", f"{base}/{resource_type}?{urlencode(nxt)}"))
    parts = [b'{"resourceType":"Bundle","type":"searchset","timestamp":"', _now().encode(), b'"']
    if page.total is not None:
        parts.append(b',"total":' + str(page.total).encode())
    parts.append(b',"link":[' + b",".join(links) + b"]")
    entries = [_entry(base, s, "match", query) for s in page.matches] + [
        _entry(base, s, "include", query) for s in page.included
    ]
    issues = [{"severity": "warning", "code": "incomplete", "diagnostics": w} for w in page.warnings]
    issues += [
        {"severity": "warning", "code": "not-supported",
         "diagnostics": f"unknown search parameter {name!r} for {resource_type} was ignored "
                        "(Prefer: handling=lenient)"}
        for name in query.ignored
    ]
    if issues:
        outcome = {"resourceType": "OperationOutcome", "issue": issues}
        entries.append(orjson.dumps({"resource": outcome, "search": {"mode": "outcome"}}))
    if entries:
        parts.append(b',"entry":[' + b",".join(entries) + b"]")
    parts.append(b"}")
    return b"".join(parts)


def compartment_set(
    base: str,
    path: str,
    args: list[tuple[str, str]],
    matches: list[Stored],
    included: list[Stored],
    next_cursor: str | None,
    *,
    total: int | None = None,
) -> bytes:
    """A searchset of a patient's record (`Patient/{id}/$everything`): the record's resources as
    matches, the directory resources they refer to as includes, and a next link while more follow."""
    server = base.rsplit("/fhir", 1)[0]
    links = [_link("self", server + path + (f"?{urlencode(args)}" if args else ""))]
    if next_cursor is not None:
        rest = [(k, v) for k, v in args if k != "_cursor"] + [("_cursor", next_cursor)]
        links.append(_link("next", server + path + "?" + urlencode(rest)))
    parts = [b'{"resourceType":"Bundle","type":"searchset","timestamp":"', _now().encode(), b'"']
    if total is not None:
        parts.append(b',"total":' + str(total).encode())
    parts.append(b',"link":[' + b",".join(links) + b"]")
    entries = [
        b'{"fullUrl":' + orjson.dumps(f"{base}/{s.res_type}/{s.res_id}") + b',"resource":' + s.content
        + b',"search":{"mode":"' + mode + b'"}}'
        for group, mode in ((matches, b"match"), (included, b"include"))
        for s in group
    ]
    if entries:
        parts.append(b',"entry":[' + b",".join(entries) + b"]")
    parts.append(b"}")
    return b"".join(parts)


def searchset_from_dicts(
    base: str, resource_type: str, resources: list[dict[str, Any]], self_url: str
) -> dict[str, Any]:
    """A searchset of resources that are not in the store (conformance resources)."""
    query = self_url.partition("?")[2]
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "link": [{"relation": "self", "url": f"{base}/{resource_type}" + (f"?{query}" if query else "")}],
    }
    if resources:  # (a FHIR array is never empty)
        bundle["entry"] = [
            {"fullUrl": f"{base}/{resource_type}/{r.get('id')}", "resource": r, "search": {"mode": "match"}}
            for r in resources
        ]
    return bundle


def parse_since(value: str | None) -> datetime | None:
    """The _since instant of a history request."""
    if not value:
        return None
    try:  # A '+' of a zone offset that was not URL-encoded arrives as a space (as for _at).
        return parse_date_range(value.strip().replace(" ", "+"))[0]
    except ValueError:
        message = f"_since={value[:100]!r} is not a FHIR instant"
        raise BadRequest(message, [Problem(message, expression="_since")]) from None


def parse_at(value: str | None) -> tuple[datetime, datetime] | None:
    """The period of a history's _at (a FHIR date, dateTime or instant, no prefix)."""
    if not value:
        return None
    try:
        return parse_date_range(value.strip().replace(" ", "+"))
    except ValueError:
        raise BadRequest(f"_at={value!r} is not a FHIR date or instant") from None


def parse_history_cursor(value: str | None) -> tuple[datetime, int, int] | None:
    """The position after which the next history page starts."""
    if not value:
        return None
    data = decode_cursor(value)
    ts, pk, vid = data.get("t"), data.get("pk"), data.get("v")
    try:
        at = datetime.fromisoformat(ts) if isinstance(ts, str) else None
    except ValueError:
        at = None
    if (
        at is None
        or at.tzinfo is None
        or not (isinstance(pk, int) and isinstance(vid, int))
        or not (0 <= pk < 2**63 and 0 <= vid < 2**31)
    ):
        raise BadRequest("the paging cursor is not valid")
    return at, pk, vid


def history_bundle(
    base: str,
    path: str,
    args: dict[str, str],
    page: list[Stored],
    nxt: tuple[datetime, int, int] | None,
    *,
    total: int | None = None,
    subset: Subset | None = None,
) -> bytes:
    """A history Bundle, newest first, with a next link when there is more, and `total` (the number
    of versions on every page together) when the caller knows it exactly; `subset`: the part of
    each version asked for (`_summary`, `_elements`)."""
    args = {k: v for k, v in args.items() if k != "_cursor"}
    server = base.rsplit("/fhir", 1)[0]
    self_url = server + path + (f"?{urlencode(args)}" if args else "")
    links = [_link("self", self_url)]
    if nxt is not None:
        cursor = encode_cursor({"t": nxt[0].isoformat(), "pk": nxt[1], "v": nxt[2]})
        links.append(_link("next", server + path + "?" + urlencode({**args, "_cursor": cursor})))
    entries = []
    for s in page:
        full_url = orjson.dumps(f"{base}/{s.res_type}/{s.res_id}")
        request = orjson.dumps(
            {
                "method": "DELETE" if s.deleted else ("POST" if s.version_id == 1 else "PUT"),
                "url": f"{s.res_type}/{s.res_id}" if s.version_id > 1 or s.deleted else s.res_type,
            }
        )
        response = orjson.dumps(
            {
                "status": "204" if s.deleted else ("201" if s.version_id == 1 else "200"),
                "etag": s.etag,
                "lastModified": instant(s.last_updated),
            }
        )
        content = s.content if subset is None else cut_json(s.content, subset)
        body = b"" if s.deleted else b',"resource":' + content
        entries.append(
            b'{"fullUrl":' + full_url + body + b',"request":' + request + b',"response":' + response + b"}"
        )
    out = [
        b'{"resourceType":"Bundle","type":"history","timestamp":"',
        _now().encode(),
        b'"',
        b"" if total is None else b',"total":' + str(total).encode(),
        b',"link":[' + b",".join(links) + b"]",
    ]
    if entries:
        out.append(b',"entry":[' + b",".join(entries) + b"]")
    out.append(b"}")
    return b"".join(out)
