"""One mapper per resource type, both directions (FHIR JSON <-> registry domain rows)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from ...domain.actor import Actor
from . import coverage, group, organization, patient, practitioner


@dataclass(frozen=True)
class WriteContext:
    """What a mapper needs to know about the write in progress."""

    actor: Actor
    is_create: bool


ToDomain = Callable[[Session, dict[str, Any], Actor, bool], None]

# Resource types with registry rows; other types live in the resource store only.
TO_DOMAIN: dict[str, ToDomain] = {
    "Patient": patient.to_domain,
    "Organization": organization.to_domain,
    "Coverage": coverage.to_domain,
    "Group": group.to_domain,
    "Practitioner": practitioner.practitioner_to_domain,
    "PractitionerRole": practitioner.role_to_domain,
}

# PostgreSQL: mappers whose registry writes ride in the resource's own write statement, as
# (SQL, values) sub-statements, after the same checks (`ResourceStore.save(also=...)`).
DomainStatements = Callable[[Session, dict[str, Any], Actor, bool], list[tuple[str, dict[str, Any]]]]
DOMAIN_STATEMENTS: dict[str, DomainStatements] = {"Patient": patient.domain_statements}

# Registry rows to release when the resource is deleted.
ON_DELETE: dict[str, Callable[[Session, str], None]] = {"Patient": patient.on_delete}

FROM_DOMAIN: dict[str, Callable[[Any], dict[str, Any]]] = {
    "Patient": patient.from_domain,
    "Organization": organization.from_domain,
    "Coverage": coverage.from_domain,
    "Group": group.from_domain,
    "Practitioner": practitioner.practitioner_from_domain,
    "PractitionerRole": practitioner.role_from_domain,
}
