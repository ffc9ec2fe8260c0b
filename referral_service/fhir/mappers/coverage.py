"""Coverage <-> registry Coverage (basic medical insurance enrolment)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from ...domain.actor import Actor
from ...domain.registry import Coverage
from ..codes import COVERAGE_TYPE_SYSTEM
from .common import clip, coding_code, ensure_unique, period_bound, ref_id, require_ref


def to_domain(session: Session, resource: dict[str, Any], actor: Actor, is_create: bool) -> None:
    """Insert or update the registry row."""
    cid = str(resource["id"])
    row = session.get(Coverage, cid)
    if row is None:
        row = Coverage(id=cid)
        session.add(row)
    row.patient_id = require_ref(resource, "beneficiary", "Patient")
    row.type = coding_code(resource.get("type"), COVERAGE_TYPE_SYSTEM) or "other"
    row.status = resource.get("status") or "active"
    # Member numbers are unique within our own schemes; other payors' numbers are kept in the JSON only.
    row.member_number = clip(resource.get("subscriberId"), 64) if row.type != "other" else None
    ensure_unique(session, Coverage, Coverage.member_number, row.member_number, cid, "member number",
                  "Coverage.subscriberId", type=row.type)
    period = resource.get("period") or {}
    row.period_start = period_bound(period.get("start"), end=False)
    row.period_end = period_bound(period.get("end"), end=True)
    payors = [ref_id(p, "Organization") for p in resource.get("payor") or []]
    row.payor_id = next((p for p in payors if p), None)
    session.flush()


def from_domain(row: Coverage) -> dict[str, Any]:
    """The FHIR Coverage of a registry row."""
    resource: dict[str, Any] = {
        "resourceType": "Coverage",
        "id": row.id,
        "status": row.status,
        "type": {"coding": [{"system": COVERAGE_TYPE_SYSTEM, "code": row.type}]},
    }
    if row.member_number:
        resource["subscriberId"] = row.member_number
    resource["beneficiary"] = {"reference": f"Patient/{row.patient_id}"}
    period = {}
    if row.period_start:
        period["start"] = row.period_start.isoformat()
    if row.period_end:
        period["end"] = row.period_end.isoformat()
    if period:
        resource["period"] = period
    resource["payor"] = [{"reference": f"Organization/{row.payor_id}"}] if row.payor_id else []
    return resource
