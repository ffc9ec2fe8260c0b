"""Generic FHIR use cases: create, update, delete, read, search — each inside the caller's unit of work."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import Connection, bindparam, false, select
from sqlalchemy.orm import Session

from ..domain.actor import SYSTEM, Actor
from ..domain.audit import queue_audit_row
from ..domain.base import new_id, utcnow
from ..domain.errors import (
    BadRequest,
    Conflict,
    DomainError,
    Forbidden,
    Gone,
    NotFound,
    PreconditionFailed,
    Problem,
    Unprocessable,
)
from ..domain.fhir_store import StoredResource
from ..domain.kept import driver_rows, kept_rows
from ..fhir import json_patch, jsonio
from ..fhir.mappers import DOMAIN_STATEMENTS, ON_DELETE, TO_DOMAIN
from ..fhir.mappers.patient import RESIDENT_ID_SYSTEM
from ..fhir.resources import RESOURCES, ResourceDef, is_fhir_id
from ..fhir.search import (
    Include,
    SearchQuery,
    condition_criteria,
    is_empty_condition,
    parse_search,
)
from ..fhir.search_params import IndexRows, extract
from ..fhir.store import ResourceStore, SearchPage, Stored, missing_references, read_current
from ..fhir.validation import check_resource, check_structure

# Only the county platform (and admins) may write these.
PLATFORM_ONLY_WRITES = frozenset({"Organization"})

# Hooks other use cases register (e.g. the referral workflow on a finished Encounter).
AfterWrite = Callable[[Session, Actor, Stored, "WriteResult"], None]
_after_write: dict[str, list[AfterWrite]] = {}


BeforeWrite = Callable[[Session, Actor, dict[str, Any], "dict[str, Any] | None"], None]
_before_write: dict[str, list[BeforeWrite]] = {}


def on_before_write(resource_type: str, hook: BeforeWrite) -> None:
    """Run `hook(session, actor, new, previous)` before a write of the type is stored; it may refuse."""
    if hook not in _before_write.setdefault(resource_type, []):
        _before_write[resource_type].append(hook)


def _run_before(session: Session, actor: Actor, resource_type: str, new: dict[str, Any],
                previous: dict[str, Any] | None) -> None:
    for hook in _before_write.get(resource_type, []):
        hook(session, actor, new, previous)


BeforeDelete = Callable[[Session, Actor, str], None]
_before_delete: dict[str, list[BeforeDelete]] = {}


def on_before_delete(resource_type: str, hook: BeforeDelete) -> None:
    """Run `hook(session, actor, res_id)` before a resource of the type is deleted; it may refuse
    (e.g. a Patient an active settlement rests on: services/settlement.py)."""
    if hook not in _before_delete.setdefault(resource_type, []):
        _before_delete[resource_type].append(hook)


def on_write(resource_type: str, hook: AfterWrite) -> None:
    """Run `hook` after every stored write of the type, in the same transaction."""
    if hook not in _after_write.setdefault(resource_type, []):
        _after_write[resource_type].append(hook)


@dataclass
class WriteResult:
    """The stored version and whether it was created (201) or matched/updated (200)."""

    stored: Stored
    created: bool
    warnings: list[Problem] = field(default_factory=list)
    matched_existing: bool = False
    previous: dict[str, Any] | None = None  # the version this write replaced


def audit_row(
    actor: Actor,
    *,
    action: str,
    interaction: str,
    entity_type: str | None = None,
    entity_id: str | None = None,
    patient_id: str | None = None,
    query: str | None = None,
    outcome: str = "0",
    request_id: str | None = None,
) -> dict[str, Any]:
    """One audit_record row: an access to patient data (served as AuditEvent)."""
    return {
        "recorded": utcnow(),
        "action": action,
        "interaction": interaction,
        "outcome": outcome,
        "agent_kind": actor.kind,
        "agent_name": actor.name,
        "organization_id": actor.organization_id,
        "entity_type": entity_type,
        "entity_id": entity_id,
        "patient_id": patient_id,
        "query": (query or "")[:2000] or None,
        "request_id": request_id,
    }


def audit(session: Session, actor: Actor, **fields: Any) -> None:
    """Record an access to patient data (`audit_row` fields), written when the transaction commits."""
    queue_audit_row(session, audit_row(actor, **fields))


# Which of a set of (type, id) pairs exist.
# SQLite cannot look a row-value IN list up in an index (it scans the table): one look-up per pair.
_ONE_EXISTING = select(StoredResource.res_type, StoredResource.res_id).where(
    StoredResource.deleted == false(),
    StoredResource.res_type == bindparam("res_type"),
    StoredResource.res_id == bindparam("res_id"),
)


# PostgreSQL: the pairs as two arrays, so the SQL text is the same for any number of them (an
# expanding IN list is rendered anew for every call).
_PG_EXISTING = """
SELECT r.res_type, r.res_id
FROM fhir_resource r
JOIN unnest(%(types)s::text[], %(ids)s::text[]) AS w(res_type, res_id)
  ON r.res_type = w.res_type AND r.res_id = w.res_id
WHERE NOT r.deleted
"""


def _existing(session: Session, wanted: set[tuple[str, str]]) -> set[tuple[str, str]]:
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        return {
            (t, i) for t, i in wanted
            if kept_rows(connection, _ONE_EXISTING, {"res_type": t, "res_id": i})
        }
    pairs = sorted(wanted)
    values = {"types": [t for t, _ in pairs], "ids": [i for _, i in pairs]}
    rows = driver_rows(connection, _PG_EXISTING, values)
    return {(t, i) for t, i in rows}


def _wanted_references(
    resource_type: str, rows: IndexRows, known: frozenset[tuple[str, str]] = frozenset()
) -> set[tuple[str, str]]:
    """The literal references to types we store, but those to resources being created in the same
    transaction (`known`: they may come later in its order)."""
    return {(t, i) for _, t, i in rows.references if t in RESOURCES and t != "AuditEvent"} - known


def _check_references(session: Session, resource_type: str, wanted: set[tuple[str, str]]) -> None:
    """Every literal reference to a type we store must point at an existing resource (422 otherwise)."""
    if not wanted:
        return
    missing = sorted(wanted - _existing(session, wanted))
    if missing:
        raise missing_references(resource_type, missing)


def _references_checked_by_the_write(session: Session, resource_type: str | None = None) -> bool:
    """PostgreSQL: the write statement itself checks the references (one round trip fewer). Not for
    a type whose registry rows ride in that statement (`DOMAIN_STATEMENTS`): their foreign keys to
    what is referenced would fail the statement before the missing reference could be answered."""
    return session.get_bind().dialect.name == "postgresql" and resource_type not in DOMAIN_STATEMENTS


def check_write(actor: Actor, resource_type: str, body: dict[str, Any]) -> None:
    """What a write checks before it needs the database: may the actor write the type (403), is the
    body a structurally valid resource of it (400). A transaction Bundle runs it for each entry before
    its unit of work, so that the costliest validation holds no lock (SQLite's write lock, above all)."""
    _check_write_allowed(actor, resource_type)
    check_structure(resource_type, body)


def _check_write_allowed(actor: Actor, resource_type: str) -> None:
    if resource_type in PLATFORM_ONLY_WRITES and not actor.sees_everything:
        raise Forbidden(f"only the county platform may create or update {resource_type} resources")
    if resource_type not in RESOURCES or "create" not in RESOURCES[resource_type].interactions:
        raise Forbidden(f"{resource_type} cannot be written through the API")


def _store_version(
    session: Session,
    actor: Actor,
    resource_type: str,
    body: dict[str, Any],
    *,
    method: str,
    existing: StoredResource | None,
    index_rows: IndexRows,
    interaction: str,
    request_id: str | None,
    check_refs: set[tuple[str, str]],
) -> Stored:
    """Store the version with its audit row; the writer now treats the patient whose record it is.

    `body` carries its id (assigned by the caller for a create). `check_refs`: references the write
    statement itself checks (PostgreSQL), 422 when one points at nothing.
    """
    store = ResourceStore(session)
    _lock_business_keys(store, resource_type, body)
    # PostgreSQL: registry rows that can ride in the resource's own write statement do.
    on_postgresql = session.get_bind().dialect.name == "postgresql"
    prepared = DOMAIN_STATEMENTS.get(resource_type) if on_postgresql else None
    also = prepared(session, body, actor, existing is None) if prepared is not None else []
    patient_id = RESOURCES[resource_type].compartment_patient(body)
    grant = None
    if patient_id and actor.organization_id and resource_type != "Patient":
        grant = (patient_id, actor.organization_id, "treated")
    stored = store.save(
        resource_type,
        body,
        method=method,
        owner_org_id=existing.owner_org_id if existing else actor.organization_id,
        existing=existing,
        index_rows=index_rows,
        grant=grant,
        audit=audit_row(
            actor,
            action="U" if existing else "C",
            interaction=interaction,
            entity_type=resource_type,
            entity_id=str(body["id"]),
            patient_id=patient_id,
            request_id=request_id,
        ),
        check_refs=tuple(check_refs),
        also=also,
        seen_by=actor,
    )
    mapper = TO_DOMAIN.get(resource_type) if prepared is None else None
    if mapper is not None:
        mapper(session, stored.as_dict(), actor, existing is None)
    return stored


def _lock_business_keys(store: ResourceStore, resource_type: str, body: dict[str, Any]) -> None:
    """Serialise writers of the same unique business key (a resident identity number).

    Without the lock two concurrent writes could both pass the duplicate check and one would then fail
    on the unique index (a 500); with it the later one sees the earlier one and answers 409.
    """
    if resource_type != "Patient":
        return
    for ident in body.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == RESIDENT_ID_SYSTEM:
            value = ident.get("value")
            if isinstance(value, str):
                store.lock_key(f"Patient.resident-id|{value.strip().upper()}")


def _sees(store: ResourceStore, actor: Actor, resource_type: str, res_id: str) -> bool:
    """Whether the actor may see the resource (deleted or not)."""
    try:
        store.read(resource_type, res_id, actor)
    except Gone:
        return True
    except NotFound:
        return False
    return True


def run_hooks(session: Session, actor: Actor, result: WriteResult) -> None:
    """Run the after-write hooks of the stored type (bundles call this once all entries are stored)."""
    for hook in _after_write.get(result.stored.res_type, []):
        hook(session, actor, result.stored, result)


def conditional_matches(session: Session, resource_type: str, if_none_exist: str) -> list[str]:
    """Ids (at most two) matching an If-None-Exist query, under a lock held until the transaction ends.

    The lock serialises concurrent conditional creates of the same query, so exactly one creates and
    the others find the winner. Matching ignores visibility: a duplicate must never be created
    because a match is hidden from the caller.
    """
    args = condition_criteria(resource_type, if_none_exist)
    query = parse_search(resource_type, args, 2, 2)
    store = ResourceStore(session)
    store.lock_key(condition_lock_key(resource_type, args))
    return store.find_ids(query, SYSTEM, limit=2)


def lock_conditions(session: Session, conditions: list[tuple[str, str]]) -> None:
    """Take the locks of several conditions' criteria ((type, criteria) pairs) at once, in one order:
    a transaction taking them entry by entry could wait for another that takes the same ones in
    another order while it waits for this one. Criteria that are no condition of their type are
    left out (their entry is refused when it is looked up)."""
    keys: set[str] = set()
    for resource_type, criteria in conditions:
        try:
            keys.add(condition_lock_key(resource_type, condition_criteria(resource_type, criteria)))
        except DomainError:
            continue
    store = ResourceStore(session)
    for key in sorted(keys):
        store.lock_key(key)


def condition_lock_key(resource_type: str, args: list[tuple[str, str]]) -> str:
    """The advisory lock of a condition's criteria: one for the same criteria in any order, taken by
    conditional creates, updates and deletes alike."""
    return f"{resource_type}?{sorted(args)}"


def _condition_query(
    resource_type: str, criteria: str, where: str
) -> tuple[list[tuple[str, str]], SearchQuery]:
    """The search of a conditional update's, delete's or patch's criteria: 400 when they name no
    search parameter (empty, or only result parameters such as `_count`), as for If-None-Exist: as
    a search they would match every resource of the type. `where`: the element (or `url`) the
    criteria came from, for the error."""
    args = [] if is_empty_condition(criteria) else condition_criteria(resource_type, criteria)
    query = parse_search(resource_type, args, 2, 2)
    if not query.clauses:
        message = (f"the conditional request names no search criteria in {where} (it would match every "
                   f"{resource_type}): send Type?parameter=value, e.g. identifier=system|value")
        raise BadRequest(message, [Problem(message, expression=where, code="invalid")])
    return args, query


def conditional_update_target(
    session: Session, actor: Actor, resource_type: str, criteria: str, body_id: Any,
    *, where: str = "url",
) -> tuple[str, bool]:
    """(the id a conditional update writes, whether it matched an existing resource) under the
    criteria's lock, held until the transaction ends (FHIR http.html#cond-update, as HAPI does it):
    no match: the body's id, or a new one (the write creates); one match: it, unless the body names
    another id (400); several: 412.

    The lock is the one a conditional create of the same criteria takes (`conditional_matches`), so
    concurrent conditional writes of one resource make one. Matching ignores visibility, as a
    conditional create's does: a match out of the writer's sight is 409 (it exists; the writer may
    neither see nor change it), never a second resource beside it.
    """
    _check_write_allowed(actor, resource_type)
    if body_id is not None and not (isinstance(body_id, str) and is_fhir_id(body_id)):
        message = f"{resource_type}.id must be a FHIR id (1-64 of A-Z a-z 0-9 - .)"
        raise BadRequest(message, [Problem(message, expression=f"{resource_type}.id", code="value")])
    args, query = _condition_query(resource_type, criteria, where)
    store = ResourceStore(session)
    store.lock_key(condition_lock_key(resource_type, args))
    ids = store.find_ids(query, SYSTEM, limit=2)
    if len(ids) > 1:
        raise PreconditionFailed(f"the conditional update's criteria match more than one {resource_type}")
    if not ids:
        return (body_id or new_id()), False  # (update-as-create, with the client's id if it gave one)
    if body_id is not None and body_id != ids[0]:
        message = (f"the body's id {body_id!r} is not the id of the {resource_type} the criteria match "
                   f"({ids[0]!r})")
        raise BadRequest(message, [Problem(message, expression=f"{resource_type}.id", code="invalid")])
    if not actor.sees_everything and not _sees(store, actor, resource_type, ids[0]):
        raise Conflict(
            f"the conditional update's criteria match a {resource_type} this client may not see",
            [Problem("a matching resource exists", expression=resource_type, code="duplicate")],
        )
    return ids[0], True


def conditional_update(
    session: Session,
    actor: Actor,
    resource_type: str,
    criteria: str,
    body: dict[str, Any],
    *,
    if_match: str | None = None,
    request_id: str | None = None,
    hooks: bool = True,
    known_refs: frozenset[tuple[str, str]] = frozenset(),
    structure_checked: bool = False,
) -> WriteResult:
    """PUT Type?criteria: an update of the one match, or a create when nothing matches
    (`conditional_update_target`); then exactly what `update` does with that id (201 or 200)."""
    if not structure_checked:
        check_write(actor, resource_type, body)  # (400 before the criteria's lock is taken)
    body_id = body.get("id")
    target, matched = conditional_update_target(session, actor, resource_type, criteria, body_id)
    return update(
        session, actor, resource_type, target, {**body, "id": target}, if_match=if_match,
        request_id=request_id, hooks=hooks, known_refs=known_refs, structure_checked=True,
        seen_absent=not matched and body_id is None,  # a new id: nothing to look up
    )


def visible_match(session: Session, actor: Actor, resource_type: str, criteria: str, where: str = "url",
                  *, lock: bool = False) -> str | None:
    """The id of the one resource the criteria match among what the actor sees (None for none; 412
    for several): what a conditional delete deletes and a conditional patch patches. A resource out
    of sight is as absent as it is to a read. `lock`: take the criteria's lock first, as conditional
    creates and updates do, so that the match cannot change before the transaction ends."""
    args, query = _condition_query(resource_type, criteria, where)
    store = ResourceStore(session)
    if lock:
        store.lock_key(condition_lock_key(resource_type, args))
    ids = store.find_ids(query, actor, limit=2)
    if len(ids) > 1:
        raise PreconditionFailed(f"the criteria match more than one {resource_type}")
    return ids[0] if ids else None


def conditional_delete(
    session: Session, actor: Actor, resource_type: str, criteria: str, *, request_id: str | None = None,
    where: str = "url", check_references: bool = True,
) -> str | None:
    """DELETE Type?criteria in HAPI's default single mode: the one match the actor sees is deleted
    (as `delete` does: audit row, hooks that may refuse); none: nothing is (None); several: 412.
    Returns the id deleted."""
    _check_write_allowed(actor, resource_type)
    if "delete" not in RESOURCES[resource_type].interactions:
        raise Forbidden(f"{resource_type} resources cannot be deleted (reverse or correct them instead)")
    target = visible_match(session, actor, resource_type, criteria, where, lock=True)
    if target is not None:
        delete(session, actor, resource_type, target, request_id=request_id,
               check_references=check_references)
    return target


def resolve_conditional_references(session: Session, actor: Actor, resource_type: str, node: Any,
                                   path: str | None = None) -> None:
    """Replace each conditional reference (`Patient?identifier=system|value`) by the `Type/id` of its one
    match among what the writer may see (FHIR http.html#trules, as HAPI does on any write): 422 when
    nothing matches (a reference to nothing, as a dangling `Type/id` is), 412 when several do, 400
    for criteria that are no valid search. Stored as sent, they pointed at nothing and were not indexed.
    """
    path = path or resource_type
    if isinstance(node, list):
        for index, item in enumerate(node):
            resolve_conditional_references(session, actor, resource_type, item, f"{path}[{index}]")
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        where = f"{path}.{key}"
        if key != "reference" or not isinstance(value, str):
            if isinstance(value, dict | list):
                resolve_conditional_references(session, actor, resource_type, value, where)
            continue
        target, mark, criteria = value.partition("?")
        if not mark or target not in RESOURCES or "/" in target:
            continue
        if is_empty_condition(criteria):
            message = f"{where}: {value[:80]!r} names no search criteria"
            raise BadRequest(message, [Problem(message, expression=where, code="invalid")])
        query = parse_search(target, parse_qsl(criteria, keep_blank_values=True), 2, 2)
        ids = ResourceStore(session).find_ids(query, actor, limit=2)
        if not ids:
            message = f"{where}: {value[:200]} matches no {target}"
            raise Unprocessable(message, [Problem(message, expression=where, code="not-found")])
        if len(ids) > 1:
            message = f"{where}: {value[:200]} matches more than one {target}"
            raise PreconditionFailed(message, [Problem(message, expression=where, code="multiple-matches")])
        node[key] = f"{target}/{ids[0]}"


def create(
    session: Session,
    actor: Actor,
    resource_type: str,
    body: dict[str, Any],
    *,
    if_none_exist: str | None = None,
    if_none_exist_matches: list[str] | None = None,
    request_id: str | None = None,
    hooks: bool = True,
    assigned_id: str | None = None,
    known_refs: frozenset[tuple[str, str]] = frozenset(),
    structure_checked: bool = False,
) -> WriteResult:
    """Create a resource (server-assigned id); with If-None-Exist, return the one match instead.

    `if_none_exist_matches`: the matches of If-None-Exist already found in this transaction under
    its lock (`conditional_matches`), when nothing since can have created another.
    `structure_checked`: `check_write` has passed on this body.
    """
    _check_write_allowed(actor, resource_type)
    warnings = check_resource(resource_type, body, structure_checked=structure_checked)
    resolve_conditional_references(session, actor, resource_type, body)
    if if_none_exist:
        ids = (
            if_none_exist_matches if if_none_exist_matches is not None
            else conditional_matches(session, resource_type, if_none_exist)
        )
        if len(ids) > 1:
            raise PreconditionFailed(f"If-None-Exist matches more than one {resource_type}")
        if ids:
            store = ResourceStore(session)
            current = store.current(resource_type, ids[0])
            assert current is not None
            if resource_type == "Patient" and actor.organization_id:
                # The patient presented at the clinic with their identity: now in its records.
                store.grant_access(ids[0], actor.organization_id, "presented")
            elif not _sees(store, actor, resource_type, ids[0]):
                # Never hand out a record the caller may not read; only say that it exists.
                raise Conflict(
                    f"If-None-Exist matches a {resource_type} this client may not read",
                    [Problem("a matching resource exists", expression=resource_type, code="duplicate")],
                )
            stored = Stored(
                resource_type, current.res_id, current.version_id, current.last_updated, current.content
            )
            return WriteResult(stored, created=False, matched_existing=True)
    body = {k: v for k, v in body.items() if k != "id"}
    body["id"] = assigned_id or new_id()
    index_rows = extract(body, list(RESOURCES[resource_type].params))  # ids and meta are not indexed
    wanted = _wanted_references(resource_type, index_rows, known_refs)
    in_write = _references_checked_by_the_write(session, resource_type)
    if not in_write:
        _check_references(session, resource_type, wanted)
    _run_before(session, actor, resource_type, body, None)
    stored = _store_version(
        session, actor, resource_type, body, method="POST", existing=None, index_rows=index_rows,
        interaction="create", request_id=request_id, check_refs=wanted if in_write else set(),
    )
    result = WriteResult(stored, created=True, warnings=warnings)
    if hooks:
        run_hooks(session, actor, result)
    return result


def check_if_match(if_match: str | None, existing: StoredResource | None) -> None:
    """412 unless If-Match (when sent) names the current version of `existing` (weak comparison);
    RFC 9110 13.1.1: `*` holds for any current version, and a deleted resource has none."""
    if if_match is None:
        return
    expected = if_match.strip().removeprefix("W/").strip('"')
    current = str(existing.version_id) if existing is not None else None
    any_version = expected == "*" and existing is not None and not existing.deleted
    if current != expected and not any_version:
        shown = "none" if current is None else f'W/"{current}"'
        raise PreconditionFailed(f"If-Match {if_match} does not match the current version ({shown})")


def update(
    session: Session,
    actor: Actor,
    resource_type: str,
    res_id: str,
    body: dict[str, Any],
    *,
    if_match: str | None = None,
    request_id: str | None = None,
    hooks: bool = True,
    known_refs: frozenset[tuple[str, str]] = frozenset(),
    validate: bool = True,
    seen_absent: bool = False,
    structure_checked: bool = False,
    interaction: str = "update",
) -> WriteResult:
    """Replace a resource (creating it with the client's id when new); stale If-Match -> 412.

    `validate=False` is for resources the service builds itself (the referral workflow's): their
    builders are checked against the structure and the profiles by the tests, not on every write.
    `seen_absent`: the caller has just found no such resource in this transaction, so the look-up
    starts under the lock that update-as-create takes anyway (one statement fewer).
    `structure_checked`: `check_write` has passed on this body.
    `interaction`: what the audit row records (`patch` for a PATCH, stored as this update).
    """
    _check_write_allowed(actor, resource_type)
    warnings = (
        check_resource(resource_type, body, url_id=res_id, structure_checked=structure_checked)
        if validate else []
    )
    if validate:
        resolve_conditional_references(session, actor, resource_type, body)
    store = ResourceStore(session)
    existing = None if seen_absent else store.current(resource_type, res_id, for_update=True)
    if existing is None:
        # Update-as-create: concurrent creators of the same id queue here; the later ones then update.
        store.lock_key(f"{resource_type}/{res_id}")
        existing = store.current(resource_type, res_id, for_update=True)
    if existing is not None and not actor.sees_everything and not _sees(store, actor, resource_type, res_id):
        # The writer must be able to see what it changes (even a deleted one); otherwise it is unknown.
        raise NotFound(f"{resource_type}/{res_id} is not known")
    check_if_match(if_match, existing)
    body = {**body, "id": res_id}
    index_rows = extract(body, list(RESOURCES[resource_type].params))
    wanted = _wanted_references(resource_type, index_rows, known_refs)
    in_write = _references_checked_by_the_write(session, resource_type)
    if not in_write:
        _check_references(session, resource_type, wanted)
    previous = jsonio.loads(existing.content) if existing is not None and not existing.deleted else None
    _run_before(session, actor, resource_type, body, previous)
    stored = _store_version(
        session, actor, resource_type, body, method="PUT", existing=existing, index_rows=index_rows,
        interaction=interaction, request_id=request_id, check_refs=wanted if in_write else set(),
    )
    result = WriteResult(stored, created=existing is None, warnings=warnings, previous=previous)
    if hooks:
        run_hooks(session, actor, result)
    return result


def patch(
    session: Session,
    actor: Actor,
    resource_type: str,
    res_id: str,
    operations: list[dict[str, Any]],
    *,
    if_match: str | None = None,
    request_id: str | None = None,
    hooks: bool = True,
    known_refs: frozenset[tuple[str, str]] = frozenset(),
) -> WriteResult:
    """Apply a JSON Patch (`json_patch.parse_patch`) to the current version and store the result as
    a PUT of it would be (FHIR http.html#patch): the same validation, version, audit row and hooks
    (a ServiceRequest patched to active sends the referral).

    404 when unknown or out of the actor's sight, 410 when deleted, 412 for a stale If-Match (checked
    before the patch is applied: it was written against another version), 422 when an operation
    cannot be applied, 400 when the result has another id or resourceType. The row stays locked from
    the read to the write, so no other writer's version is patched over.
    """
    _check_write_allowed(actor, resource_type)
    if "patch" not in RESOURCES[resource_type].interactions:
        raise Forbidden(f"{resource_type} resources cannot be patched")
    store = ResourceStore(session)
    existing = store.current(resource_type, res_id, for_update=True)
    if existing is None:
        raise NotFound(f"{resource_type}/{res_id} is not known")
    current = store.read(resource_type, res_id, actor)  # 404 out of sight, 410 deleted
    check_if_match(if_match, existing)
    patched = json_patch.apply_patch(resource_type, current.as_dict(), operations)
    _check_patched_identity(resource_type, res_id, patched)
    return update(
        session, actor, resource_type, res_id, patched, request_id=request_id, hooks=hooks,
        known_refs=known_refs, interaction="patch",
    )


def _check_patched_identity(resource_type: str, res_id: str, patched: Any) -> None:
    """400 for a patch whose result is no longer this resource: another resourceType or id (or
    none: the patch removed it), as a PUT whose body differs from its URL is."""
    if not isinstance(patched, dict) or patched.get("resourceType") != resource_type:
        message = f"the patch must not change resourceType: the result must stay a {resource_type}"
        raise BadRequest(message, [Problem(message, expression=f"{resource_type}.resourceType",
                                           code="invalid")])
    if patched.get("id") != res_id:
        message = f"the patch must not change id: the result must keep id {res_id!r}"
        raise BadRequest(message, [Problem(message, expression=f"{resource_type}.id", code="invalid")])


def delete(
    session: Session, actor: Actor, resource_type: str, res_id: str, *, request_id: str | None = None,
    check_references: bool = True,
) -> Stored | None:
    """Delete a resource (a deletion version). An unknown id, or one the actor may not see, is 404
    alike (the answer tells nothing about records out of sight); deleting again is fine (204).

    A resource that live resources still refer to is not deleted (409, `ensure_unreferenced`), as
    HAPI enforces referential integrity on delete: writes refuse references to nothing, so a delete
    must not make them. A transaction checks once all its entries ran (`check_references=False`
    here), so that it may delete a patient together with its encounters."""
    _check_write_allowed(actor, resource_type)
    if "delete" not in RESOURCES[resource_type].interactions:
        raise Forbidden(f"{resource_type} resources cannot be deleted (reverse or correct them instead)")
    store = ResourceStore(session)
    existing = store.current(resource_type, res_id, for_update=True)
    if existing is None:
        raise NotFound(f"{resource_type}/{res_id} is not known")
    try:
        store.read(resource_type, res_id, actor)  # 404 when out of the actor's sight
    except Gone:
        return None  # deleted before, and visible: nothing more to do
    for hook in _before_delete.get(resource_type, []):
        hook(session, actor, res_id)
    stored = store.delete(existing)
    if check_references:
        ensure_unreferenced(session, actor, [(resource_type, res_id)])
    release = ON_DELETE.get(resource_type)
    if release is not None:
        release(session, res_id)
    audit(
        session,
        actor,
        action="D",
        interaction="delete",
        entity_type=resource_type,
        entity_id=res_id,
        patient_id=existing.patient_id,
        request_id=request_id,
    )
    return stored


def ensure_unreferenced(session: Session, actor: Actor, deleted: list[tuple[str, str]]) -> None:
    """409 when a live resource still refers to one of the deleted resources (by a reference search
    parameter, as HAPI's check does). The message names the first referrers the actor may see and
    counts the rest of those; of referrers out of its sight it says only that there are some."""
    store = ResourceStore(session)
    for res_type, res_id in deleted:
        found = store.referrers(res_type, res_id, actor)
        if not found.any:
            continue
        parts = list(found.named)
        if found.visible > len(found.named):
            parts.append(f"{found.visible - len(found.named)} more")
        if found.hidden:
            parts.append("resources out of this client's sight")
        named = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
        message = (
            f"{res_type}/{res_id} cannot be deleted: other resources refer to it ({named}); "
            "delete them or change their references first"
        )
        raise Conflict(message, [Problem(message, expression=res_type, code="conflict")])


def _read_audit_row(
    actor: Actor, rdef: ResourceDef, res_id: str, request_id: str | None
) -> dict[str, Any] | None:
    if rdef.directory:
        return None
    return audit_row(actor, action="R", interaction="read", entity_type=rdef.type, entity_id=res_id,
                     request_id=request_id)


def read_on_connection(
    connection: Connection, actor: Actor, resource_type: str, res_id: str, *, request_id: str | None = None
) -> Stored:
    """`read` of the current version on a bare connection, no session: for plain reads by id.

    Only where the read statement writes its own audit row (`audits_inline`: PostgreSQL), so that
    nothing is left to commit.
    """
    if resource_type not in RESOURCES:
        raise NotFound(f"unknown resource type {resource_type}")
    rdef = RESOURCES[resource_type]
    return read_current(connection, resource_type, res_id, actor,
                        audit=_read_audit_row(actor, rdef, res_id, request_id))


def read(
    session: Session,
    actor: Actor,
    resource_type: str,
    res_id: str,
    *,
    version_id: int | None = None,
    request_id: str | None = None,
) -> Stored:
    """The current (or a given) version, audited when it is patient data."""
    if resource_type not in RESOURCES:
        raise NotFound(f"unknown resource type {resource_type}")
    store = ResourceStore(session)
    rdef = RESOURCES[resource_type]
    if version_id is None:
        # The current version: the store records the access with the read (its patient is the row's).
        row = _read_audit_row(actor, rdef, res_id, request_id)
        return store.read(resource_type, res_id, actor, audit=row)
    stored = store.vread(resource_type, res_id, version_id, actor)
    if not rdef.directory:
        audit(
            session,
            actor,
            action="R",
            interaction="vread",
            entity_type=resource_type,
            entity_id=res_id,
            request_id=request_id,
            patient_id=_patient_of(rdef, stored) if rdef.patient_paths else None,
        )
    return stored


def _patient_of(rdef: ResourceDef, stored: Stored) -> str | None:
    """The patient whose record was read (stored with the current version; older ones are parsed)."""
    return stored.patient_id if stored.patient_id is not None else rdef.compartment_patient(stored.as_dict())


def authorise_includes(query: SearchQuery, may: Callable[[str, str], bool]) -> None:
    """403 unless the token's scopes (`may(type, permission)`) cover what _include and _revinclude
    bring in. An _include whose target types are open is narrowed, in the query and so in SQL, to
    the types the caller may read."""
    for inc in query.revincludes:
        if not may(inc.source, "s"):
            raise Forbidden(f"the token's scopes do not allow searching {inc.source} (_revinclude)")
    narrowed: list[Include] = []
    for inc in query.includes:
        declared = [inc.target] if inc.target else list(RESOURCES[inc.source].by_name[inc.param].targets)
        for target in declared:
            if not may(target, "r"):
                raise Forbidden(f"the token's scopes do not allow reading {target} (_include)")
        if declared:
            narrowed.append(inc)
        else:
            narrowed += [replace(inc, target=t) for t in RESOURCES if may(t, "r")]
    query.includes = narrowed


def search(
    session: Session, actor: Actor, query: SearchQuery, *, query_text: str = "", request_id: str | None = None
) -> SearchPage:
    """One page of a search, audited when it is over patient data."""
    row = None if query.rdef.directory else audit_row(
        actor, action="E", interaction="search", entity_type=query.rdef.type, query=query_text,
        request_id=request_id,
    )
    return ResourceStore(session).search(query, actor, audit=row)
