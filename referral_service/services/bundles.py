"""transaction and batch Bundles: ordering, urn:uuid rewriting, all-or-nothing, hooks after all entries."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from sqlalchemy.orm import Session

from ..domain.actor import Actor
from ..domain.db import Database
from ..domain.errors import BadRequest, DomainError, Forbidden, NotFound, Problem
from ..fhir.outcome import operation_outcome
from ..fhir.resources import RESOURCES
from ..fhir.search import parse_search
from ..fhir.store import ResourceStore, Stored, instant
from . import resources as service

METHOD_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
PERMISSION = {"DELETE": "d", "POST": "c", "PUT": "u", "GET": "r"}
STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}

Authorise = Callable[[str, str], bool]


@dataclass
class _Entry:
    index: int
    method: str
    url: str
    resource: dict[str, Any] | None
    full_url: str | None
    if_none_exist: str | None
    if_match: str | None


def _parse_entries(bundle: dict[str, Any]) -> list[_Entry]:
    entries = []
    for i, raw in enumerate(bundle.get("entry") or []):
        if not isinstance(raw, dict):
            raise BadRequest(f"Bundle.entry[{i}] is not an object")
        req = raw.get("request") or {}
        method = str(req.get("method") or "").upper()
        url = str(req.get("url") or "")
        if method not in METHOD_ORDER or not url:
            raise BadRequest(
                f"Bundle.entry[{i}].request needs a method and url",
                [
                    Problem(
                        "request.method and request.url are required",
                        expression=f"Bundle.entry[{i}].request",
                        code="required",
                    )
                ],
            )
        resource = raw.get("resource")
        if method in ("POST", "PUT") and not isinstance(resource, dict):
            raise BadRequest(f"Bundle.entry[{i}] ({method}) has no resource")
        entries.append(
            _Entry(i, method, url, resource, raw.get("fullUrl"), req.get("ifNoneExist"), req.get("ifMatch"))
        )
    return entries


def _rewrite(node: Any, ids: dict[str, str]) -> Any:
    """Replace references to urn:uuid full URLs with the assigned Type/id."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "reference" and isinstance(v, str) and v in ids:
                out[k] = ids[v]
            else:
                out[k] = _rewrite(v, ids)
        return out
    if isinstance(node, list):
        return [_rewrite(v, ids) for v in node]
    return node


def _split_url(url: str) -> tuple[str, str | None, str]:
    parts = urlsplit(url)
    segments = [s for s in parts.path.strip("/").split("/") if s]
    if not segments or segments[0] not in RESOURCES:
        raise NotFound(f"unknown resource type in {url!r}")
    return segments[0], segments[1] if len(segments) > 1 else None, parts.query


def _entry_response(status: int, stored: Stored | None, base: str, *, body: bool = True) -> dict[str, Any]:
    response: dict[str, Any] = {"status": STATUS_TEXT.get(status, str(status))}
    out: dict[str, Any] = {}
    if stored is not None and not stored.deleted:
        response["location"] = f"{stored.res_type}/{stored.res_id}/_history/{stored.version_id}"
        response["etag"] = stored.etag
        response["lastModified"] = instant(stored.last_updated)
        out["fullUrl"] = f"{base}/{stored.res_type}/{stored.res_id}"
        if body:
            out["resource"] = orjson.loads(stored.content)
    out["response"] = response
    return out


def _run_entry(
    session: Session,
    actor: Actor,
    entry: _Entry,
    authorise: Authorise,
    base: str,
    written: list[service.WriteResult],
    known: frozenset[tuple[str, str]] = frozenset(),
) -> dict[str, Any]:
    res_type, res_id, query = _split_url(entry.url)
    if not authorise(res_type, PERMISSION.get(entry.method, "r")):
        raise Forbidden(f"the token's scopes do not allow {entry.method} on {res_type}")
    if entry.method == "POST":
        assert entry.resource is not None
        result = service.create(
            session,
            actor,
            res_type,
            entry.resource,
            if_none_exist=entry.if_none_exist,
            hooks=False,
            assigned_id=entry.resource.get("id"),
            known_refs=known,
        )
        if not result.matched_existing:
            written.append(result)
        return _entry_response(201 if result.created else 200, result.stored, base)
    if entry.method == "PUT":
        assert entry.resource is not None
        if res_id is None:
            raise BadRequest(f"PUT {entry.url}: conditional update is not supported; give the id")
        result = service.update(
            session, actor, res_type, res_id, entry.resource, if_match=entry.if_match, hooks=False,
            known_refs=known,
        )
        written.append(result)
        return _entry_response(201 if result.created else 200, result.stored, base)
    if entry.method == "DELETE":
        if res_id is None:
            raise BadRequest(f"DELETE {entry.url}: conditional delete is not supported")
        service.delete(session, actor, res_type, res_id)
        return {"response": {"status": "204 No Content"}}
    if res_id is not None:
        stored = service.read(session, actor, res_type, res_id)
        return _entry_response(200, stored, base)
    search = parse_search(res_type, parse_qsl(query), 50, 1000)
    page = service.search(session, actor, search, query_text=query)
    from ..fhir.bundle_json import searchset

    return {
        "resource": orjson.loads(searchset(base, res_type, search, page)),
        "response": {"status": "200 OK"},
    }


def _assign_ids(session: Session, entries: list[_Entry]) -> dict[str, str]:
    """urn:uuid full URLs of created entries -> Type/id (a conditional create maps to its match)."""
    ids: dict[str, str] = {}
    store = ResourceStore(session)
    from ..domain.actor import SYSTEM

    for e in entries:
        if e.method != "POST" or e.resource is None:
            continue
        res_type = _split_url(e.url)[0]
        new_id = None
        if e.if_none_exist:
            found = store.find_ids(
                parse_search(res_type, parse_qsl(e.if_none_exist.lstrip("?")), 2, 2), SYSTEM
            )
            if len(found) == 1:
                new_id = found[0]
        new_id = new_id or uuid.uuid4().hex
        e.resource = {**e.resource, "id": new_id}
        if e.full_url:
            ids[e.full_url] = f"{res_type}/{new_id}"
    return ids


def _outcome_entry(exc: DomainError) -> dict[str, Any]:
    return {"response": {"status": str(exc.status), "outcome": operation_outcome(exc.problems)}}


def process(
    bundle: dict[str, Any], authorise: Authorise, actor: Actor, base: str, database: Database
) -> tuple[dict[str, Any], int]:
    """Run a transaction (all or nothing) or a batch (each entry on its own)."""
    if bundle.get("resourceType") != "Bundle":
        raise BadRequest(
            "POST /fhir takes a Bundle",
            [Problem("resourceType must be Bundle", expression="resourceType", code="structure")],
        )
    kind = bundle.get("type")
    if kind not in ("transaction", "batch"):
        raise BadRequest(
            f"Bundle.type must be transaction or batch, not {kind!r}",
            [Problem("Bundle.type must be transaction or batch", expression="Bundle.type", code="value")],
        )
    entries = _parse_entries(bundle)
    ordered = sorted(entries, key=lambda e: (METHOD_ORDER[e.method], e.index))
    responses: dict[int, dict[str, Any]] = {}
    written: list[service.WriteResult] = []
    if kind == "transaction":
        with database.unit_of_work() as session:
            ids = _assign_ids(session, entries)
            for e in entries:
                e.resource = _rewrite(e.resource, ids) if e.resource is not None else None
            known = frozenset((v.split("/", 1)[0], v.split("/", 1)[1]) for v in ids.values())
            known |= frozenset(
                (_split_url(e.url)[0], str(_split_url(e.url)[1])) for e in entries
                if e.method == "PUT" and _split_url(e.url)[1] is not None
            )
            for e in ordered:
                try:
                    responses[e.index] = _run_entry(session, actor, e, authorise, base, written, known)
                except DomainError as exc:
                    for p in exc.problems:
                        p.message = f"Bundle.entry[{e.index}] ({e.method} {e.url}): {p.message}"
                    raise
            for result in written:
                service.run_hooks(session, actor, result)
        return {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [responses[i] for i in range(len(entries))],
        }, 200
    for e in ordered:
        try:
            with database.unit_of_work() as session:
                if e.method == "POST" and e.resource is not None:
                    e.resource = {k: v for k, v in e.resource.items() if k != "id"}
                responses[e.index] = _run_entry(session, actor, e, authorise, base, written)
        except DomainError as exc:
            responses[e.index] = _outcome_entry(exc)
    if written:
        with database.unit_of_work() as session:
            for result in written:
                service.run_hooks(session, actor, result)
    return {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [responses[i] for i in range(len(entries))],
    }, 200
