"""AuditRecord -> FHIR AuditEvent (read-only: audit rows are written by the services, never by clients)."""

from __future__ import annotations

import base64
from typing import Any

from ...domain.registry import AuditRecord

_INTERACTION_CODES = {
    "read": "read", "vread": "vread", "search": "search-type", "create": "create", "update": "update",
    "patch": "patch", "delete": "delete", "operation": "operation",
}


def from_domain(row: AuditRecord) -> dict[str, Any]:
    """The AuditEvent of one audit row."""
    entity: dict[str, Any] = {}
    if row.entity_type and row.entity_id:
        entity["what"] = {"reference": f"{row.entity_type}/{row.entity_id}"}
    elif row.entity_type:
        entity["type"] = {"system": "http://hl7.org/fhir/resource-types", "code": row.entity_type}
    if row.query:
        entity["query"] = base64.b64encode(row.query.encode()).decode()
    entities = [entity] if entity else []
    if row.patient_id and not (row.entity_type == "Patient" and row.entity_id == row.patient_id):
        role = {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}
        entities.append({"what": {"reference": f"Patient/{row.patient_id}"}, "role": role})
    agent: dict[str, Any] = {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
                             "code": "humanuser" if row.agent_kind == "user" else "dataprocessor"}]},
        "who": {"identifier": {"value": row.agent_name or "unknown"}},
        "name": row.agent_name or "unknown",
        "requestor": True,
    }
    if row.organization_id:
        agent["who"]["display"] = f"Organization/{row.organization_id}"
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(row.id),
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
                 "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction",
                     "code": _INTERACTION_CODES.get(row.interaction, row.interaction)}],
        "action": row.action,
        "recorded": row.recorded.isoformat(),
        "outcome": row.outcome,
        "agent": [agent],
        "source": {"observer": {"display": "referral_service"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                             "code": "4"}]},
    }
    if row.request_id:
        event["extension"] = [{"url": "http://referral-service.example/fhir/StructureDefinition/request-id",
                               "valueString": row.request_id}]
    if entities:
        event["entity"] = entities
    return event
