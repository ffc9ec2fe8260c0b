"""Patient/{id}/$everything (FHIR patient-operation-everything): a patient's whole record, paged."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from ..domain.actor import Actor
from ..domain.errors import BadRequest, Problem
from ..fhir.resources import RESOURCES
from ..fhir.store import ResourceStore, Stored
from .resources import audit

# The types of a patient's record: those whose resources belong to one patient (the Patient itself
# included); the audit log is read through AuditEvent searches, not here.
COMPARTMENT = tuple(sorted(t for t, d in RESOURCES.items() if d.patient_paths and not d.audit_log))


@dataclass(frozen=True)
class EverythingPage:
    """One page: the patient's resources (`matches`), the directory resources they refer to
    (`included`), and the storage position to go on from when more follow."""

    matches: list[Stored]
    included: list[Stored]
    next_after: int | None


def compartment_types(asked: str | None, readable: Sequence[str]) -> list[str]:
    """The types a `_type` list asks for (all of the record's when absent), among those the token may
    read: 400 for a type that is not part of a patient's record."""
    if asked is None:
        return [t for t in COMPARTMENT if t in readable]
    names = [name.strip() for name in asked.split(",")]
    wrong = [name for name in names if name not in COMPARTMENT]
    if wrong or not all(names):
        message = (
            f"_type names {', '.join(repr(n) for n in wrong) or 'an empty type'}, which is no type of a "
            f"patient's record ({', '.join(COMPARTMENT)})"
        )
        raise BadRequest(message, [Problem(message, expression="_type", code="value")])
    return [t for t in COMPARTMENT if t in names and t in readable]


def everything(
    session: Session,
    actor: Actor,
    patient_id: str,
    types: Sequence[str],
    *,
    count: int,
    after: int = 0,
    since: datetime | None = None,
    request_id: str | None = None,
) -> EverythingPage:
    """A page of the patient's record the actor may see: 404 when the patient is unknown or out of
    sight, 410 when deleted (as a read). Audited as one access to the patient's record."""
    store = ResourceStore(session)
    store.read("Patient", patient_id, actor)
    page, more = store.compartment(patient_id, actor, types, count=count, after=after, since=since)
    seen = {(s.res_type, s.res_id) for _, s in page}
    included = store.directory_of([pk for pk, _ in page], actor, seen)
    audit(
        session,
        actor,
        action="R",
        interaction="operation",
        entity_type="Patient",
        entity_id=patient_id,
        patient_id=patient_id,
        query="$everything",
        request_id=request_id,
    )
    return EverythingPage([s for _, s in page], included, page[-1][0] if more and page else None)
