"""AuditEvent reads and searches over the audit log (admins and the county platform only)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..domain.actor import Actor
from ..domain.base import int_key
from ..domain.errors import BadRequest, NotFound
from ..domain.registry import AuditRecord
from ..fhir.mappers.audit_event import from_domain
from ..fhir.search_params import parse_date_range

SEARCHABLE = ("date", "agent-name", "patient", "entity-type", "action", "_count", "_cursor", "_format",
              "_pretty", "_id")


def read_audit_event(session: Session, actor: Actor, event_id: str) -> dict[str, Any]:
    """One AuditEvent; unknown (404) to anyone who may not read the audit log."""
    key = int_key(event_id)
    row = session.get(AuditRecord, key) if key is not None else None
    if row is None or not actor.sees_everything:
        raise NotFound(f"AuditEvent/{event_id} is not known")
    return from_domain(row)


def search_audit_events(
    session: Session, actor: Actor, args: list[tuple[str, str]], *, count: int
) -> tuple[list[dict[str, Any]], int | None]:
    """Newest first; returns the events and the id to continue below (keyset)."""
    if not actor.sees_everything:
        return [], None
    stmt = select(AuditRecord)
    for key, value in args:
        name = key.split(":")[0]
        if name not in SEARCHABLE:
            raise BadRequest(f"unknown search parameter {name!r} for AuditEvent")
        if name == "date":
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
            stmt = stmt.where(AuditRecord.id < before)
    rows = list(session.scalars(stmt.order_by(AuditRecord.id.desc()).limit(count + 1)))
    nxt = rows[count - 1].id if len(rows) > count else None
    return [from_domain(r) for r in rows[:count]], nxt
