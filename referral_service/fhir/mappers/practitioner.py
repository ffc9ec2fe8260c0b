"""Practitioner and PractitionerRole <-> registry rows."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from ...domain.actor import Actor
from ...domain.registry import Practitioner, PractitionerRole
from ..codes import BASE
from .common import clip, ensure_unique, require_ref

LICENSE_SYSTEM = f"{BASE}/sid/practitioner-license"


def practitioner_to_domain(session: Session, resource: dict[str, Any], actor: Actor, is_create: bool) -> None:
    """Insert or update the practitioner row."""
    pid = str(resource["id"])
    row = session.get(Practitioner, pid) or Practitioner(id=pid)
    session.add(row)
    name = (resource.get("name") or [{}])[0]
    row.family_name = (name.get("family") or (name.get("text") or "")[:1])[:50]
    given = "".join(g for g in name.get("given") or [] if isinstance(g, str))  # null: an extension
    row.given_name = (given or (name.get("text") or "")[1:])[:50]
    row.gender = resource.get("gender")
    licenses = [i.get("value") for i in resource.get("identifier") or [] if i.get("system") == LICENSE_SYSTEM]
    row.license_number = clip(licenses[0], 64) if licenses else None
    ensure_unique(session, Practitioner, Practitioner.license_number, row.license_number, pid,
                  "practitioner licence number", "Practitioner.identifier")
    phones = [t.get("value") for t in resource.get("telecom") or [] if t.get("system") == "phone"]
    row.phone = clip(phones[0], 32) if phones else None
    session.flush()


def practitioner_from_domain(row: Practitioner) -> dict[str, Any]:
    """The FHIR Practitioner of a row."""
    resource: dict[str, Any] = {"resourceType": "Practitioner", "id": row.id}
    if row.license_number:
        resource["identifier"] = [{"system": LICENSE_SYSTEM, "value": row.license_number}]
    resource["name"] = [
        {"text": row.family_name + row.given_name, "family": row.family_name, "given": [row.given_name]}
    ]
    if row.phone:
        resource["telecom"] = [{"system": "phone", "value": row.phone}]
    if row.gender:
        resource["gender"] = row.gender
    return resource


def role_to_domain(session: Session, resource: dict[str, Any], actor: Actor, is_create: bool) -> None:
    """Insert or update the role row."""
    rid = str(resource["id"])
    row = session.get(PractitionerRole, rid) or PractitionerRole(id=rid)
    session.add(row)
    row.practitioner_id = require_ref(resource, "practitioner", "Practitioner")
    row.organization_id = require_ref(resource, "organization", "Organization")
    codes = [c.get("code") for cc in resource.get("code") or [] for c in cc.get("coding", [])]
    row.role = clip(codes[0] if codes else None, 32) or "doctor"
    row.active = resource.get("active", True) is not False
    session.flush()


def role_from_domain(row: PractitionerRole) -> dict[str, Any]:
    """The FHIR PractitionerRole of a row."""
    return {
        "resourceType": "PractitionerRole",
        "id": row.id,
        "active": row.active,
        "practitioner": {"reference": f"Practitioner/{row.practitioner_id}"},
        "organization": {"reference": f"Organization/{row.organization_id}"},
        "code": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/practitioner-role", "code": row.role}
                ]
            }
        ],
    }
