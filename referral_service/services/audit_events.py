"""AuditEvent reads and searches over the audit log (admins and the county platform only)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..domain.actor import Actor
from ..domain.base import int_key
from ..domain.errors import BadRequest, NotFound
from ..domain.registry import AuditRecord
from ..fhir.mappers.audit_event import from_domain
from ..fhir.search_params import parse_date_range

# As the CapabilityStatement lists them (fhir/resources.py: AuditEvent); _lastUpdated is the date.
SEARCHABLE = ("date", "_lastUpdated", "agent-name", "patient", "entity-type", "action", "_count", "_cursor",
              "_format", "_pretty", "_id", "_sort", "_total", "_summary")
# _sort: newest first unless asked for the oldest first (the log's order is its id's order).
_SORTS = {"-date": False, "-_lastUpdated": False, "date": True, "_lastUpdated": True}


def read_audit_event(session: Session, actor: Actor, event_id: str) -> dict[str, Any]:
    """One AuditEvent; unknown (404) to anyone who may not read the audit log."""
    key = int_key(event_id)
    row = session.get(AuditRecord, key) if key is not None else None
    if row is None or not actor.sees_everything:
        raise NotFound(f"AuditEvent/{event_id} is not known")
    return from_domain(row)


def search_audit_events(
    session: Session, actor: Actor, args: list[tuple[str, str]], *, count: int
) -> tuple[list[dict[str, Any]], int | None, int | None]:
    """Newest first (`_sort=date`: oldest first); returns the events, the id to continue from
    (keyset) and, with `_total=accurate`, the number of matches."""
    ascending = False
    want_total = False
    for key, value in args:
        if key == "_sort":
            if value not in _SORTS:
                raise BadRequest(f"_sort={value!r} is not supported for AuditEvent (date or -date)")
            ascending = _SORTS[value]
        elif key == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise BadRequest("_total must be none, estimate or accurate")
            want_total = value == "accurate"
        elif key == "_summary":
            if value not in ("count", "false"):
                raise BadRequest(f"_summary={value!r} is not supported for AuditEvent (count or false)")
            if value == "count":
                want_total, count = True, 0
    if not actor.sees_everything:
        return [], None, 0 if want_total else None
    stmt = select(AuditRecord)
    for key, value in args:
        name = key.split(":")[0]
        if name not in SEARCHABLE:
            raise BadRequest(f"unknown search parameter {name!r} for AuditEvent")
        if name in ("date", "_lastUpdated"):
            prefix = value[:2] if value[:2] in ("gt", "ge", "lt", "le", "eq") else "eq"
            try:
                low, high = parse_date_range(value[2:] if prefix != "eq" or value.startswith("eq") else value)
            except ValueError as exc:
                raise BadRequest(f"date: {exc}") from None
            stmt = stmt.where({
                "gt": AuditRecord.recorded > high, "ge": AuditRecord.recorded >= low,
                "lt": AuditRecord.recorded < low, "le": AuditRecord.recorded <= high,
            }.get(prefix, AuditRecord.recorded.between(low, high)))
        elif name == "agent-name":
            stmt = stmt.where(AuditRecord.agent_name == value)
        elif name == "patient":
            stmt = stmt.where(AuditRecord.patient_id == value.rsplit("/", 1)[-1])
        elif name == "entity-type":
            stmt = stmt.where(AuditRecord.entity_type == value)
        elif name == "action":
            stmt = stmt.where(AuditRecord.action == value)
        elif name == "_id":
            keys = [int_key(v) for v in value.split(",")]
            stmt = stmt.where(AuditRecord.id.in_([k for k in keys if k is not None]))
        elif name == "_cursor":
            before = int_key(value)
            if before is None:
                raise BadRequest("the paging cursor is not valid")
            stmt = stmt.where(AuditRecord.id > before if ascending else AuditRecord.id < before)
    total = None
    if want_total:
        total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    order = AuditRecord.id.asc() if ascending else AuditRecord.id.desc()
    rows = list(session.scalars(stmt.order_by(order).limit(count + 1))) if count else []
    nxt = rows[count - 1].id if len(rows) > count else None
    return [from_domain(r) for r in rows[:count]], nxt, total
