"""transaction and batch Bundles: ordering, urn:uuid rewriting, all-or-nothing, hooks after all entries."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..domain.actor import Actor
from ..domain.base import int_key
from ..domain.db import Database
from ..domain.errors import (
    BadRequest,
    Conflict,
    DomainError,
    Forbidden,
    NotFound,
    PreconditionFailed,
    Problem,
    UnsupportedMediaType,
)
from ..fhir import json_patch, jsonio
from ..fhir.bundle_json import searchset
from ..fhir.outcome import operation_outcome
from ..fhir.resources import RESOURCES, is_fhir_id
from ..fhir.search import is_empty_condition, parse_search
from ..fhir.store import Stored, instant
from ..fhir.validation import require_update_id
from . import resources as service

T = TypeVar("T")
METHOD_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}
URN_PREFIX = "urn:uuid:"

Authorise = Callable[[str, str], bool]


@dataclass
class _Entry:
    index: int
    method: str
    url: str
    res_type: str
    res_id: str | None
    query: str
    resource: dict[str, Any] | None
    full_url: str | None
    if_none_exist: str | None
    if_match: str | None
    # The ifNoneExist matches `_assign_ids` found under the query's lock, when no other entry of the
    # Bundle has this resource type (nothing else in the transaction can create a match meanwhile).
    matches: list[str] | None = None
    version_id: int | None = None  # a GET of Type/id/_history/vid (vread)
    structure_checked: bool = False  # `service.check_write` passed before the transaction began
    patch: list[dict[str, Any]] | None = None  # a PATCH's JSON Patch operations (from its Binary)
    # A conditional PUT, DELETE or PATCH (`Type?criteria`): the criteria. A transaction resolves a
    # PUT's and a PATCH's to `res_id` before its writes (`_assign_ids`), a DELETE's as it runs; a
    # batch entry resolves its own.
    criteria: str | None = None
    # A resolved conditional PUT: whether it matched, and whether its match must be looked up again
    # before it is written (another entry of the transaction writes the same type).
    matched: bool = False
    recheck: bool = False
    fresh_id: bool = False  # its id was made here (no match, none in the body): nothing to look up

    @property
    def label(self) -> str:
        """How problems name the entry."""
        return f"Bundle.entry[{self.index}] ({self.method} {self.url})"

    @property
    def permission(self) -> str:
        """The SMART permission the entry needs."""
        if self.method in ("GET", "HEAD"):
            return "r" if self.res_id is not None else "s"
        return {"DELETE": "d", "POST": "c", "PUT": "u", "PATCH": "u"}[self.method]


def _named(exc: DomainError, label: str) -> DomainError:
    """The error with every problem naming the Bundle entry it belongs to."""
    for p in exc.problems:
        if not p.message.startswith(label):
            p.message = f"{label}: {p.message}"
    return exc


def _entry_error(index: int, message: str, element: str | None, code: str = "required") -> BadRequest:
    label = f"Bundle.entry[{index}]"
    where = f"{label}.{element}" if element else label
    return BadRequest(f"{label}: {message}", [Problem(f"{label}: {message}", where, code)])


def _patch_of(index: int, resource: Any) -> list[dict[str, Any]]:
    """The JSON Patch of a PATCH entry: FHIR (http.html#transaction) carries it as a Binary whose
    contentType is application/json-patch+json and whose data is the patch, base64-encoded. 415 for
    a FHIRPath Patch (Parameters) or another content type, 400 for anything malformed."""
    label = f"Bundle.entry[{index}]"
    if isinstance(resource, dict) and resource.get("resourceType") == "Parameters":
        message = (f"{label}: FHIRPath Patch (a Parameters resource) is not supported; send a Binary with "
                   f"contentType {json_patch.MEDIA_TYPE} holding a JSON Patch (RFC 6902)")
        raise UnsupportedMediaType(message, [Problem(message, f"{label}.resource", "not-supported")])
    if not isinstance(resource, dict) or resource.get("resourceType") != "Binary":
        raise _entry_error(index, f"a PATCH entry needs a Binary resource holding a JSON Patch "
                           f"({json_patch.MEDIA_TYPE})", "resource")
    content_type = resource.get("contentType")
    if not isinstance(content_type, str) or content_type.split(";")[0].strip() != json_patch.MEDIA_TYPE:
        message = (f"{label}: Binary.contentType {str(content_type)[:80]!r} is not supported for PATCH; "
                   f"send a JSON Patch as {json_patch.MEDIA_TYPE}")
        where = f"{label}.resource.contentType"
        raise UnsupportedMediaType(message, [Problem(message, where, "not-supported")])
    data = resource.get("data")
    try:
        raw = base64.b64decode(data, validate=True) if isinstance(data, str) else b""
        document = jsonio.loads_body(raw) if raw else None
    except (binascii.Error, ValueError) as exc:  # (JsonError is a ValueError)
        raise _entry_error(index, f"Binary.data is not a base64-encoded JSON Patch: {exc}",
                           "resource.data", "structure") from None
    if document is None:
        raise _entry_error(index, "Binary.data must hold the JSON Patch, base64-encoded", "resource.data")
    try:
        return json_patch.parse_patch(document)
    except DomainError as exc:
        raise _named(exc, label) from None


def _parse_entry(index: int, raw: Any, base: str) -> _Entry:
    """One Bundle entry; a 4xx naming the entry when it is malformed."""
    if not isinstance(raw, dict):
        raise _entry_error(index, "an entry must be a JSON object", None, "structure")
    req = raw.get("request")
    if not isinstance(req, dict):
        raise _entry_error(index, "request (method and url) is required", "request")
    method, url = req.get("method"), req.get("url")
    if not isinstance(method, str) or not isinstance(url, str) or not url:
        raise _entry_error(index, "request.method and request.url are required", "request")
    method = method.upper()
    if method not in METHOD_ORDER:
        message = f"request.method {method} is not supported"
        raise _entry_error(index, message, "request.method", "not-supported")
    resource = raw.get("resource")
    if method in ("POST", "PUT") and not isinstance(resource, dict):
        raise _entry_error(index, f"a {method} entry needs a resource", "resource")
    full_url, if_none_exist, if_match = raw.get("fullUrl"), req.get("ifNoneExist"), req.get("ifMatch")
    for name, value in (("fullUrl", full_url), ("ifNoneExist", if_none_exist), ("ifMatch", if_match)):
        if value is not None and not isinstance(value, str):
            raise _entry_error(index, f"{name} must be a string", name, "structure")
    if if_none_exist is not None and is_empty_condition(if_none_exist):
        message = "request.ifNoneExist names no search criteria (it would match every resource)"
        raise _entry_error(index, message, "request.ifNoneExist", "invalid")
    patch = _patch_of(index, resource) if method == "PATCH" else None
    try:
        res_type, res_id, version_id, query = _split_url(url, base, method)
    except DomainError as exc:
        raise _named(exc, f"Bundle.entry[{index}] ({method} {url})") from None
    criteria = query if method in ("PUT", "DELETE", "PATCH") and res_id is None else None
    if res_id is not None and not is_fhir_id(res_id):
        shown = res_id.encode("unicode_escape").decode("ascii")[:80]
        if method == "PUT":
            raise _entry_error(index, f"'{shown}' is not a FHIR id (1-64 of A-Z a-z 0-9 - .)",
                               "request.url", "value")
        raise _named(NotFound(f"no resource has the id '{shown}' (not a FHIR id)"),
                     f"Bundle.entry[{index}] ({method} {url})")
    return _Entry(
        index, method, url, res_type, res_id, query,
        dict(resource) if isinstance(resource, dict) and method != "PATCH" else None, full_url,
        if_none_exist, if_match, version_id=version_id, patch=patch, criteria=criteria,
    )


def _rewrite(node: Any, ids: dict[str, str]) -> Any:
    """Replace references to the full URLs of entries with the Type/id each was given."""
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


def _references(node: Any) -> Iterator[str]:
    """Every literal reference in a resource."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                yield v
            else:
                yield from _references(v)
    elif isinstance(node, list):
        for v in node:
            yield from _references(v)


def _check_no_urn_left(entry: _Entry) -> None:
    """A urn:uuid reference that names no entry of the Bundle cannot be resolved (400)."""
    dangling = sorted({r for r in _references(_written(entry)) if r.startswith(URN_PREFIX)})
    if dangling:
        message = f"{entry.label}: {dangling[0]} is not the fullUrl of any entry in this Bundle"
        raise BadRequest(message, [Problem(message, f"Bundle.entry[{entry.index}].resource", "not-found")])


def _written(entry: _Entry) -> Any:
    """What an entry writes and so may reference other entries in: its resource, or its patch."""
    return entry.resource if entry.resource is not None else entry.patch


def _split_url(url: str, base: str = "", method: str = "GET") -> tuple[str, str | None, int | None, str]:
    """(type, id, version, query) of an entry's request.url: `Type`, `Type/id`, or for a read
    `Type/id/_history/vid`; 400 for any other path (it would act on something else than it says)."""
    if base and url.startswith(base + "/"):
        url = url[len(base) + 1 :]
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 host: http://[::1
        message = f"request.url {url.encode('unicode_escape').decode('ascii')[:200]!r} is not a valid URL"
        raise BadRequest(message, [Problem(message, "request.url", "value")]) from None
    segments = [s for s in parts.path.strip("/").split("/") if s]
    if not segments or segments[0] not in RESOURCES:
        raise NotFound(f"unknown resource type in {url!r}")
    if len(segments) <= 2:
        return segments[0], segments[1] if len(segments) > 1 else None, None, parts.query
    if len(segments) == 4 and segments[2] == "_history" and method in ("GET", "HEAD"):
        version = int_key(segments[3])
        if version is None:
            raise NotFound(f"{'/'.join(segments)} is not known")
        return segments[0], segments[1], version, parts.query
    shown = url.encode("unicode_escape").decode("ascii")[:200]
    message = (f"request.url {shown!r} is not supported in a Bundle entry: use Type, Type/id or "
               "(to read a version) Type/id/_history/vid")
    raise BadRequest(message, [Problem(message, "request.url", "not-supported")])


def _entry_response(status: int, stored: Stored | None, base: str, *, body: bool = True) -> dict[str, Any]:
    response: dict[str, Any] = {"status": STATUS_TEXT.get(status, str(status))}
    out: dict[str, Any] = {}
    if stored is not None and not stored.deleted:
        response["location"] = f"{stored.res_type}/{stored.res_id}/_history/{stored.version_id}"
        response["etag"] = stored.etag
        response["lastModified"] = instant(stored.last_updated)
        out["fullUrl"] = f"{base}/{stored.res_type}/{stored.res_id}"
        if body:
            out["resource"] = jsonio.loads(stored.content)
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
    deleted: list[_Entry] | None = None,
) -> dict[str, Any]:
    """Run one entry. A transaction passes `deleted`: its DELETEs are checked for references to what
    they delete once every entry ran (`_check_deleted`), not one by one."""
    res_type, res_id = entry.res_type, entry.res_id
    if not authorise(res_type, entry.permission):
        raise Forbidden(f"the token's scopes do not allow {entry.method} on {res_type}")
    if entry.method == "POST":
        assert entry.resource is not None
        assigned = entry.resource.get("id")
        result = service.create(
            session,
            actor,
            res_type,
            entry.resource,
            if_none_exist=entry.if_none_exist,
            if_none_exist_matches=entry.matches,
            hooks=False,
            assigned_id=assigned,
            known_refs=known,
            structure_checked=entry.structure_checked,
        )
        if assigned and result.stored.res_id != assigned:
            # Another entry of this transaction created what this one's ifNoneExist matches: the
            # references to this entry's fullUrl would point nowhere.
            raise BadRequest(
                f"ifNoneExist matches {res_type}/{result.stored.res_id}, which another entry of this "
                "transaction creates"
            )
        if not result.matched_existing:
            written.append(result)
        return _entry_response(201 if result.created else 200, result.stored, base)
    if entry.method == "PUT":
        assert entry.resource is not None
        if res_id is None:  # a batch's conditional update (a transaction's is resolved already)
            result = service.conditional_update(
                session, actor, res_type, _criteria(entry), entry.resource, if_match=entry.if_match,
                hooks=False, structure_checked=entry.structure_checked,
            )
        else:
            if entry.recheck:
                _recheck_match(session, entry)
            require_update_id(res_type, entry.resource, res_id)
            result = service.update(
                session, actor, res_type, res_id, entry.resource, if_match=entry.if_match, hooks=False,
                known_refs=known, structure_checked=entry.structure_checked,
                seen_absent=entry.fresh_id,
            )
        written.append(result)
        return _entry_response(201 if result.created else 200, result.stored, base)
    if entry.method == "PATCH":
        assert entry.patch is not None
        target = res_id or _patch_target(session, actor, entry)
        result = service.patch(
            session, actor, res_type, target, entry.patch, if_match=entry.if_match, hooks=False,
            known_refs=known,
        )
        written.append(result)
        return _entry_response(200, result.stored, base)
    if entry.method == "DELETE":
        check = deleted is None
        if res_id is None:  # conditional: the one match the client sees, if any (single mode)
            entry.res_id = service.conditional_delete(
                session, actor, res_type, _criteria(entry), where=_url_of(entry), check_references=check
            )
        else:
            service.delete(session, actor, res_type, res_id, check_references=check)
        if deleted is not None and entry.res_id is not None:
            deleted.append(entry)
        return {"response": {"status": "204 No Content"}}
    if res_id is not None:
        stored = service.read(session, actor, res_type, res_id, version_id=entry.version_id)
        return _entry_response(200, stored, base, body=entry.method == "GET")
    search = parse_search(res_type, parse_qsl(entry.query, keep_blank_values=True), 50, 1000)
    service.authorise_includes(search, authorise)
    page = service.search(session, actor, search, query_text=entry.query)
    return {
        "resource": jsonio.loads(searchset(base, res_type, search, page)),
        "response": {"status": "200 OK"},
    }


def _url_of(entry: _Entry) -> str:
    return f"Bundle.entry[{entry.index}].request.url"


def _criteria(entry: _Entry) -> str:
    """A conditional entry's criteria (the query of its request.url)."""
    assert entry.criteria is not None
    return entry.criteria


def _patch_target(session: Session, actor: Actor, entry: _Entry) -> str:
    """The one resource a conditional PATCH's criteria match among what the client sees (404 none,
    412 several)."""
    target = service.visible_match(session, actor, entry.res_type, _criteria(entry), _url_of(entry))
    if target is None:
        raise NotFound(f"no {entry.res_type} this client sees matches {entry.url[:200]}")
    return target


def _recheck_match(session: Session, entry: _Entry) -> None:
    """400 when a conditional PUT's criteria, resolved before the transaction's writes, now match
    something else: a resource another entry of this transaction wrote (the order would decide)."""
    now = service.conditional_matches(session, entry.res_type, _criteria(entry))
    expected = [entry.res_id] if entry.matched else []
    if now != expected:
        raise BadRequest(
            f"request.url now matches {', '.join(f'{entry.res_type}/{i}' for i in now)}, which another "
            "entry of this transaction writes; a transaction may act on a resource once"
        )


def _run_named(
    session: Session,
    actor: Actor,
    entry: _Entry,
    authorise: Authorise,
    base: str,
    written: list[service.WriteResult],
    known: frozenset[tuple[str, str]] = frozenset(),
    deleted: list[_Entry] | None = None,
) -> dict[str, Any]:
    """Run one entry; its failure names it (a clash with stored data is a 409, not a crash)."""
    try:
        return _run_entry(session, actor, entry, authorise, base, written, known, deleted)
    except DomainError as exc:
        raise _named(exc, entry.label) from None
    except IntegrityError:
        raise Conflict(
            f"{entry.label}: conflicts with data stored by another request or entry; nothing was stored"
        ) from None


def _assign_ids(
    session: Session, actor: Actor, entries: list[_Entry], authorise: Authorise
) -> dict[str, str]:
    """Full URLs of created (and PUT) entries -> Type/id; a conditional create maps to its match, a
    conditional update to what it writes (its match, or the id it creates: `_resolve_update`), and
    a conditional PATCH gets its one match.

    The conditional creates' and updates' locks are taken here (all of them before, when there are
    several: `_lock_conditions`) and held until the transaction ends: nobody else can create a match
    between this look-up and the entry's write.
    """
    ids: dict[str, str] = {}
    conditional = sorted(
        (e for e in entries
         if (e.method == "POST" and e.if_none_exist) or (e.method == "PUT" and e.criteria is not None)),
        key=lambda e: (e.res_type, str(e.if_none_exist or e.criteria)),
    )
    matched: dict[int, str] = {}
    for e in conditional:
        if e.method == "PUT":
            _resolve_update(session, actor, e, entries, authorise)
            continue
        assert e.if_none_exist is not None
        try:
            found = service.conditional_matches(session, e.res_type, e.if_none_exist)
        except DomainError as exc:
            raise _named(exc, e.label) from None
        if len(found) > 1:
            raise _named(
                PreconditionFailed(f"ifNoneExist matches more than one {e.res_type}"), e.label
            )
        if found:
            matched[e.index] = found[0]
        if _alone_of_its_type(e, entries):
            e.matches = found
    for e in entries:
        if e.method == "PATCH" and e.criteria is not None:
            _authorised(e, authorise)
            try:
                e.res_id = _patch_target(session, actor, e)
            except DomainError as exc:
                raise _named(exc, e.label) from None
    if any(e.criteria is not None for e in entries):
        _check_distinct(entries)  # again, with what the conditional entries resolved to
    for e in entries:
        if e.method == "PUT" and e.full_url and e.res_id:
            ids[e.full_url] = f"{e.res_type}/{e.res_id}"
    for e in entries:
        if e.method != "POST" or e.resource is None:
            continue
        new_id = matched.get(e.index) or uuid.uuid4().hex
        e.resource = {**e.resource, "id": new_id}
        if e.full_url:
            ids[e.full_url] = f"{e.res_type}/{new_id}"
    return ids


def _lock_conditions(session: Session, entries: list[_Entry]) -> None:
    """Take the criteria's locks of the conditional entries (ifNoneExist, PUT or DELETE Type?criteria)
    first, in one order (`service.lock_conditions`), when the transaction would otherwise take them
    between other locks: entry by entry, a conditional DELETE's before the others', or after a DELETE's
    row lock, two transactions (or a transaction and a conditional update) could each hold a lock
    the other waits for. (One condition and no DELETE: it is locked when it is looked up.)"""
    conditions = [(e.res_type, e.if_none_exist) for e in entries if e.method == "POST" and e.if_none_exist]
    conditions += [(e.res_type, e.criteria) for e in entries
                   if e.method in ("PUT", "DELETE") and e.criteria is not None]
    if len(conditions) > 1 or (conditions and any(e.method == "DELETE" for e in entries)):
        service.lock_conditions(session, conditions)


def _alone_of_its_type(entry: _Entry, entries: list[_Entry]) -> bool:
    """Whether no other entry of the Bundle has the entry's resource type (so none can write a
    resource its conditions match)."""
    return sum(1 for other in entries if other.res_type == entry.res_type) == 1


def _authorised(entry: _Entry, authorise: Authorise) -> None:
    """403 (naming the entry) unless the token's scopes allow the entry: checked before a conditional
    entry's criteria are looked up, as `_run_entry` checks the others before they run."""
    if not authorise(entry.res_type, entry.permission):
        raise _named(Forbidden(f"the token's scopes do not allow {entry.method} on {entry.res_type}"),
                     entry.label)


def _resolve_update(
    session: Session, actor: Actor, entry: _Entry, entries: list[_Entry], authorise: Authorise
) -> None:
    """Give a transaction's conditional PUT the id it writes (`service.conditional_update_target`,
    under its criteria's lock) before any entry is written: references to its fullUrl then name that
    id, and two entries acting on one resource are refused (`_check_distinct`)."""
    assert entry.resource is not None
    _authorised(entry, authorise)
    body_id = entry.resource.get("id")
    try:
        target, entry.matched = service.conditional_update_target(
            session, actor, entry.res_type, _criteria(entry), body_id, where=_url_of(entry)
        )
    except DomainError as exc:
        raise _named(exc, entry.label) from None
    entry.res_id, entry.resource = target, {**entry.resource, "id": target}
    entry.fresh_id = not entry.matched and body_id is None
    entry.recheck = not _alone_of_its_type(entry, entries)


def _write_order(writes: list[_Entry]) -> list[_Entry]:
    """POSTs then PUTs (the FHIR order), except that an entry another one references goes first.

    Registry rows need what they point at (a Coverage its Patient) to exist already; references in a
    cycle (Encounter.diagnosis <-> Condition.encounter) are checked as `known` instead.
    """
    by_target = {f"{e.res_type}/{e.resource['id']}": e for e in writes if e.resource and e.resource.get("id")}
    by_target.update({f"{e.res_type}/{e.res_id}": e for e in writes if e.method == "PUT" and e.res_id})
    by_target.update({f"{e.res_type}/{e.res_id}": e for e in writes if e.method == "PATCH" and e.res_id})
    ordered = sorted(writes, key=lambda e: (METHOD_ORDER[e.method], e.index))
    return referenced_first(ordered, by_target, _written)


def referenced_first(items: list[T], targets: dict[str, T], resource_of: Callable[[T], Any]) -> list[T]:
    """`items` in their order, except that one another item references (a `Type/id` of `targets`)
    goes before it; in a cycle of references the order given decides."""
    out: list[T] = []
    seen: set[int] = set()  # done, or on the current path (a cycle)

    def visit(item: T) -> None:
        if id(item) in seen:
            return
        seen.add(id(item))
        for ref in _references(resource_of(item)):
            dep = targets.get(ref)
            if dep is not None and dep is not item:
                visit(dep)
        out.append(item)

    for item in items:
        visit(item)
    return out


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
    raw_entries = bundle.get("entry", [])
    if not isinstance(raw_entries, list):
        raise BadRequest(
            "Bundle.entry must be a list",
            [Problem("Bundle.entry must be a list", expression="Bundle.entry", code="structure")],
        )
    if kind == "transaction":
        entries = [_parse_entry(i, raw, base) for i, raw in enumerate(raw_entries)]
        _check_distinct(entries)
        return _transaction(entries, authorise, actor, base, database)
    return _batch(raw_entries, authorise, actor, base, database)


def _check_distinct(entries: list[_Entry]) -> None:
    """400 when two entries of a transaction write the same resource or share a fullUrl: FHIR
    (http.html#trules) fails such a transaction, whose outcome would depend on processing order."""
    seen: dict[str, int] = {}
    for e in entries:
        keys = []
        if e.method in ("PUT", "DELETE", "PATCH") and e.res_id is not None:
            keys.append(f"{e.res_type}/{e.res_id}")
        if e.method in ("POST", "PUT") and e.full_url:
            keys.append(e.full_url)
        for key in keys:
            if key in seen:
                raise _entry_error(e.index, f"{key} is also the subject of Bundle.entry[{seen[key]}]; "
                                   "a transaction may act on a resource once", "request.url", "invalid")
            seen[key] = e.index


def _transaction(
    entries: list[_Entry], authorise: Authorise, actor: Actor, base: str, database: Database
) -> tuple[dict[str, Any], int]:
    """All entries in one unit of work, in the FHIR order: DELETE, POST, PUT, GET (then the hooks)."""
    responses: dict[int, dict[str, Any]] = {}
    written: list[service.WriteResult] = []
    for e in entries:  # (validation needs no database: none of it runs under the transaction's locks)
        if e.method in ("POST", "PUT") and e.resource is not None and authorise(e.res_type, e.permission):
            try:
                service.check_write(actor, e.res_type, e.resource)
            except DomainError as exc:
                raise _named(exc, e.label) from None
            e.structure_checked = True
    deleted: list[_Entry] = []
    with database.unit_of_work() as session:
        _lock_conditions(session, entries)
        for e in entries:
            if e.method == "DELETE":
                responses[e.index] = _run_named(session, actor, e, authorise, base, written, deleted=deleted)
        ids = _assign_ids(session, actor, entries, authorise)
        writes = [e for e in entries if e.method in ("POST", "PUT", "PATCH")]
        for e in writes:
            e.resource = _rewrite(e.resource, ids)
            e.patch = _rewrite(e.patch, ids)
            _check_no_urn_left(e)
        # What this transaction creates may be referenced before it is written (a cycle).
        known = frozenset((t, i) for t, _, i in (v.partition("/") for v in ids.values())) | frozenset(
            (e.res_type, e.res_id) for e in writes if e.method == "PUT" and e.res_id
        )
        for e in _write_order(writes):
            responses[e.index] = _run_named(session, actor, e, authorise, base, written, known)
        for e in entries:
            if e.method in ("GET", "HEAD"):
                responses[e.index] = _run_named(session, actor, e, authorise, base, written)
        for result in written:
            service.run_hooks(session, actor, result)
        _check_deleted(session, actor, deleted)  # on the transaction's end state, derived records too
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [responses[i] for i in range(len(entries))],
    }, 200


def _check_deleted(session: Session, actor: Actor, deleted: list[_Entry]) -> None:
    """409 naming the entry when what a transaction deleted is still referred to once all its entries
    ran (an entry of the same transaction may have deleted or changed the referrers)."""
    for e in deleted:
        assert e.res_id is not None
        try:
            service.ensure_unreferenced(session, actor, [(e.res_type, e.res_id)])
        except DomainError as exc:
            raise _named(exc, e.label) from None


def _batch(
    raw_entries: list[Any], authorise: Authorise, actor: Actor, base: str, database: Database
) -> tuple[dict[str, Any], int]:
    """Each entry in its own unit of work; a failing entry answers its own status (then the hooks)."""
    responses: dict[int, dict[str, Any]] = {}
    written: list[service.WriteResult] = []
    entries: list[_Entry] = []
    for i, raw in enumerate(raw_entries):
        try:
            entries.append(_parse_entry(i, raw, base))
        except DomainError as exc:
            responses[i] = _outcome_entry(exc)
    for e in entries:  # no entry may depend on another: entry order is as good as any
        try:
            if e.method == "POST" and e.resource is not None:
                e.resource.pop("id", None)
            if _written(e) is not None:
                _check_no_urn_left(e)
            with database.unit_of_work() as session:
                responses[e.index] = _run_named(session, actor, e, authorise, base, written)
        except DomainError as exc:
            responses[e.index] = _outcome_entry(exc)
        except IntegrityError:  # raised by the commit itself
            responses[e.index] = _outcome_entry(
                Conflict(f"{e.label}: conflicts with data stored by another request; nothing was stored")
            )
    if written:
        with database.unit_of_work() as session:
            for result in written:
                service.run_hooks(session, actor, result)
    return {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [responses[i] for i in range(len(raw_entries))],
    }, 200
