"""Which settlements an actor may see: one definition for every view of the ledger (DESIGN section 8).

"The insurance office sees financial resources of its county": the FHIR API applies that to Claim,
ClaimResponse and ExplanationOfBenefit (`fhir.store.visible`). The ledger's views (the settlement
export files, the insurer's totals, payments and export pages, fund payment batches) apply the very
same condition to a settlement's patient (`fhir.store.patient_records_visible`): an insurer with a
district sees the settlements of the residents of its district, wherever they were treated, plus
those of patients linked to its organisation; the platform, admins and system jobs see every one.
A payable is seen when its settlement is. The conditions are SQL (index look-ups per row), so the
streamed export keeps its plan and memory.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, exists, false, select, true
from sqlalchemy.orm import Session, aliased

from ..domain.actor import SYSTEM, Actor
from ..domain.exports import ExportLog, Recipient
from ..domain.ledger import Payable, Settlement
from ..domain.registry import Patient
from ..fhir.store import patient_records_visible
from .actors import actor_for


def settlements_seen(
    actor: Actor, settlement: Any = Settlement, *, patient: Any = None
) -> ColumnElement[bool]:
    """SQL condition on `Settlement` (or an alias of it, or its table): the actor may see the settlement.

    `patient`: the settlement's patient row when the query joins it already (its table or alias), so
    the condition reads that row's columns instead of looking the patient up again per settlement.
    """
    joined = None if patient is None else getattr(patient, "c", patient)
    return patient_records_visible(actor, getattr(settlement, "c", settlement).patient_id, joined=joined)


def payables_seen(actor: Actor) -> ColumnElement[bool]:
    """SQL condition on `Payable`: the actor may see the settlement it belongs to."""
    if actor.sees_everything:
        return true()
    # A semi-join on the ids of the settlements it sees (each read with its patient's row, the
    # condition on that row): one pass, not a look-up of settlement and patient per payable. Aliases
    # keep it correct in queries that join Settlement or Patient themselves.
    own, patient = aliased(Settlement), aliased(Patient)
    return Payable.settlement_id.in_(
        select(own.id).join(patient, patient.id == own.patient_id)
        .where(settlements_seen(actor, own, patient=patient))
    )


def settlement_seen(session: Session, actor: Actor, settlement_id: str) -> bool:
    """Whether the actor may see one settlement (for a write that names it, e.g. a payment batch)."""
    if actor.sees_everything:
        return True
    seen = exists().where(Settlement.id == settlement_id, settlements_seen(actor))
    return bool(session.scalar(select(seen)))


def recipient_actor(session: Session, recipient: Recipient) -> Actor:
    """The actor whose view an export recipient gets: a system run without an organisation (the CLI,
    the whole-network monthly files) sees everything; anyone else acts for its organisation, as the
    API sees it (a scheduled run for one insurance bureau included)."""
    if recipient.organization_id is None:
        if recipient.kind == "system":
            return SYSTEM
        return Actor(recipient.name, recipient.kind, None)  # no organisation: sees no patient
    kind = "scheduled" if recipient.kind == "system" else recipient.kind  # not the system's own view
    return actor_for(session, name=recipient.name, kind=kind, organization_id=recipient.organization_id)


def exports_seen(organization_id: str | None) -> ColumnElement[bool]:
    """SQL condition on `ExportLog`: a settlement export recorded for the organisation. Its files were
    cut to what that organisation may see, so they are listed and served to it alone (another
    county's bureau gets 404); runs without an organisation (the CLI, the whole-network monthly
    files) are listed to no one."""
    if organization_id is None:
        return false()
    return ExportLog.organization_id == organization_id
