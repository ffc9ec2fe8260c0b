"""Organization <-> registry Organization (facility level or office kind, capabilities, district)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from ...domain.actor import Actor
from ...domain.registry import Organization
from ..codes import CAPABILITY_SYSTEM, FACILITY_LEVEL_SYSTEM, ORGANIZATION_KIND_SYSTEM
from .common import clip, coding_code, ensure_unique, ref_id

ORG_CODE_SYSTEM = "http://referral-service.example/fhir/sid/organization-code"


def to_domain(session: Session, resource: dict[str, Any], actor: Actor, is_create: bool) -> None:
    """Insert or update the registry row."""
    oid = str(resource["id"])
    row = session.get(Organization, oid)
    if row is None:
        row = Organization(id=oid)
        session.add(row)
    row.name = (resource.get("name") or oid)[:200]
    types = resource.get("type") or []
    row.facility_level = coding_code(types, FACILITY_LEVEL_SYSTEM)
    row.kind = coding_code(types, ORGANIZATION_KIND_SYSTEM)
    row.capabilities = sorted(
        {
            c["code"]
            for t in types
            for c in t.get("coding", [])
            if c.get("system") == CAPABILITY_SYSTEM and c.get("code")
        }
    )
    address = (resource.get("address") or [{}])[0]
    row.district = clip(address.get("district"), 100) or ""
    row.city = clip(address.get("city"), 100)
    lines = address.get("line") or []
    row.township = clip(lines[0], 100) if lines else None
    row.parent_id = ref_id(resource.get("partOf"), "Organization")
    row.active = resource.get("active", True) is not False
    codes = [i.get("value") for i in resource.get("identifier") or [] if i.get("system") == ORG_CODE_SYSTEM]
    row.code = clip(codes[0], 64) if codes else None
    ensure_unique(session, Organization, Organization.code, row.code, oid, "organization code",
                  "Organization.identifier")
    session.flush()


def from_domain(row: Organization) -> dict[str, Any]:
    """The FHIR Organization of a registry row."""
    types: list[dict[str, Any]] = []
    if row.facility_level:
        types.append({"coding": [{"system": FACILITY_LEVEL_SYSTEM, "code": row.facility_level}]})
    if row.kind:
        types.append({"coding": [{"system": ORGANIZATION_KIND_SYSTEM, "code": row.kind}]})
    types += [{"coding": [{"system": CAPABILITY_SYSTEM, "code": c}]} for c in row.capabilities or []]
    resource: dict[str, Any] = {"resourceType": "Organization", "id": row.id, "active": row.active}
    if row.code:
        resource["identifier"] = [{"system": ORG_CODE_SYSTEM, "value": row.code}]
    resource["type"] = types
    resource["name"] = row.name
    address: dict[str, Any] = {"district": row.district, "country": "CN"}
    if row.city:
        address["city"] = row.city
    if row.township:
        address["line"] = [row.township]
    resource["address"] = [address]
    if row.parent_id:
        resource["partOf"] = {"reference": f"Organization/{row.parent_id}"}
    return resource
