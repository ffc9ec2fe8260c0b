"""The resource types the server knows: search parameters, compartments, interactions."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .search_params import SearchParam as P

COMMON = [P("_id", "token", ()), P("_lastUpdated", "date", ())]
READ_WRITE = ("read", "vread", "update", "patch", "history-instance", "history-type", "create",
              "search-type", "delete")
READ_ONLY = ("read", "vread", "history-instance", "history-type", "search-type")


@dataclass(frozen=True)
class ResourceDef:
    """Everything the generic machinery needs to serve one resource type."""

    type: str
    params: tuple[P, ...]
    patient_paths: tuple[str, ...] = ()  # where the patient of the record is ('' = the resource itself)
    interactions: tuple[str, ...] = READ_WRITE
    financial: bool = False  # visible to the insurance office of the patient's county
    directory: bool = False  # organisations, practitioners: visible to every authorised client
    # Reference search parameters naming organisations that are parties to the record and so see it
    # (the hospital a payment batch pays).
    party_params: tuple[str, ...] = ()
    operations: tuple[str, ...] = field(default_factory=tuple)
    # Served from the audit log (services/audit_events.py), not the resource store: read and search by
    # its own parameters only (no _include, _revinclude, vread or history).
    audit_log: bool = False

    @cached_property
    def by_name(self) -> dict[str, P]:
        """Parameters by name."""
        return {p.name: p for p in self.params}

    @cached_property
    def model(self) -> Any:
        """The fhir.resources R4B model class."""
        module = importlib.import_module(f"fhir.resources.R4B.{self.type.lower()}")
        return getattr(module, self.type)

    def compartment_patient(self, resource: dict[str, Any]) -> str | None:
        """The id of the patient whose record this is, if any."""
        from .search_params import references_of, walk

        for path in self.patient_paths:
            if path == "":
                return str(resource.get("id")) if resource.get("id") else None
            for value in walk(resource, path):
                for rtype, rid in references_of(value):
                    if rtype == "Patient":
                        return rid
        return None


def _identifier() -> P:
    return P("identifier", "token", ("identifier",))


# FHIR's id grammar (datatypes: id): an id outside it names no resource and is never sent to SQL.
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def is_fhir_id(value: str) -> bool:
    """Whether the text is a valid FHIR logical id."""
    return FHIR_ID.fullmatch(value) is not None


RESOURCES: dict[str, ResourceDef] = {
    d.type: d
    for d in [
        ResourceDef(
            "Patient",
            (
                _identifier(),
                P("name", "string", ("name",)),
                P("family", "string", ("name.family",)),
                P("given", "string", ("name.given",)),
                P("birthdate", "date", ("birthDate",)),
                P("gender", "token", ("gender",)),
                P("address-district", "string", ("address.district",)),
                P("address", "string", ("address",)),
                P("telecom", "token", ("telecom.value",)),
                P("phone", "token", ("telecom.value",)),
                P("organization", "reference", ("managingOrganization",), ("Organization",)),
                P("general-practitioner", "reference", ("generalPractitioner",)),
                P("active", "token", ("active",)),
            ),
            patient_paths=("",),
            financial=True,
        ),
        ResourceDef(
            "Organization",
            (
                _identifier(),
                P("name", "string", ("name", "alias")),
                P("type", "token", ("type",)),
                P("address-district", "string", ("address.district",)),
                P("address", "string", ("address",)),
                P("partof", "reference", ("partOf",), ("Organization",)),
                P("active", "token", ("active",)),
            ),
            directory=True,
        ),
        ResourceDef(
            "Practitioner",
            (_identifier(), P("name", "string", ("name",)), P("family", "string", ("name.family",)),
             P("given", "string", ("name.given",)), P("active", "token", ("active",))),
            directory=True,
        ),
        ResourceDef(
            "PractitionerRole",
            (_identifier(), P("practitioner", "reference", ("practitioner",), ("Practitioner",)),
             P("organization", "reference", ("organization",), ("Organization",)),
             P("role", "token", ("code",)), P("active", "token", ("active",))),
            directory=True,
        ),
        ResourceDef(
            "Group",
            (_identifier(), P("member", "reference", ("member.entity",)), P("type", "token", ("type",)),
             P("actual", "token", ("actual",)), P("name", "string", ("name",))),
            financial=True,
        ),
        ResourceDef(
            "Coverage",
            (_identifier(), P("patient", "reference", ("beneficiary",), ("Patient",)),
             P("beneficiary", "reference", ("beneficiary",), ("Patient",)),
             P("payor", "reference", ("payor",)), P("type", "token", ("type",)),
             P("status", "token", ("status",)), P("subscriber", "reference", ("subscriber",))),
            patient_paths=("beneficiary",),
            financial=True,
        ),
        ResourceDef(
            "Encounter",
            (_identifier(), P("patient", "reference", ("subject",), ("Patient",)),
             P("subject", "reference", ("subject",)), P("date", "date", ("period",)),
             P("status", "token", ("status",)), P("class", "token", ("class",)),
             P("service-provider", "reference", ("serviceProvider",), ("Organization",)),
             P("based-on", "reference", ("basedOn",), ("ServiceRequest",)),
             P("diagnosis", "reference", ("diagnosis.condition",)),
             P("episode-of-care", "reference", ("episodeOfCare",), ("EpisodeOfCare",)),
             P("type", "token", ("type",))),
            patient_paths=("subject",),
        ),
        ResourceDef(
            "Condition",
            (_identifier(), P("patient", "reference", ("subject",), ("Patient",)),
             P("subject", "reference", ("subject",)),
             P("encounter", "reference", ("encounter",), ("Encounter",)),
             P("code", "token", ("code",)), P("clinical-status", "token", ("clinicalStatus",)),
             P("category", "token", ("category",)), P("onset-date", "date", ("onsetDateTime", "onsetPeriod")),
             P("recorded-date", "date", ("recordedDate",))),
            patient_paths=("subject",),
        ),
        ResourceDef(
            "Observation",
            (_identifier(), P("patient", "reference", ("subject",), ("Patient",)),
             P("subject", "reference", ("subject",)),
             P("encounter", "reference", ("encounter",), ("Encounter",)),
             P("code", "token", ("code",)), P("category", "token", ("category",)),
             P("status", "token", ("status",)),
             P("component-code", "token", ("component.code",)),
             P("date", "date", ("effectiveDateTime", "effectivePeriod", "effectiveInstant")),
             P("value-quantity", "quantity", ("valueQuantity",)),
             P("component-value-quantity", "quantity", ("component.valueQuantity",)),
             P("combo-value-quantity", "quantity", ("valueQuantity", "component.valueQuantity"))),
            patient_paths=("subject",),
        ),
        ResourceDef(
            "ServiceRequest",
            (_identifier(), P("patient", "reference", ("subject",), ("Patient",)),
             P("subject", "reference", ("subject",)), P("status", "token", ("status",)),
             P("intent", "token", ("intent",)), P("code", "token", ("code",)),
             P("category", "token", ("category",)), P("performer", "reference", ("performer",)),
             P("requester", "reference", ("requester",)),
             P("encounter", "reference", ("encounter",), ("Encounter",)),
             P("priority", "token", ("priority",)), P("authored", "date", ("authoredOn",)),
             P("based-on", "reference", ("basedOn",))),
            patient_paths=("subject",),
        ),
        ResourceDef(
            "Task",
            (_identifier(), P("owner", "reference", ("owner",)), P("status", "token", ("status",)),
             P("focus", "reference", ("focus",)), P("patient", "reference", ("for",), ("Patient",)),
             P("subject", "reference", ("for",)), P("business-status", "token", ("businessStatus",)),
             P("modified", "date", ("lastModified",)), P("authored-on", "date", ("authoredOn",)),
             P("requester", "reference", ("requester",)), P("priority", "token", ("priority",)),
             P("based-on", "reference", ("basedOn",)), P("code", "token", ("code",))),
            patient_paths=("for",),
        ),
        ResourceDef(
            "CarePlan",
            (_identifier(), P("patient", "reference", ("subject",), ("Patient",)),
             P("subject", "reference", ("subject",)), P("status", "token", ("status",)),
             P("date", "date", ("period",)), P("based-on", "reference", ("basedOn",)),
             P("intent", "token", ("intent",)),
             P("activity-date", "date", ("activity.detail.scheduledPeriod",)),
             P("category", "token", ("category",))),
            patient_paths=("subject",),
        ),
        ResourceDef(
            "GuidanceResponse",
            (_identifier(), P("patient", "reference", ("subject",), ("Patient",)),
             P("subject", "reference", ("subject",)), P("request", "token", ("requestIdentifier",)),
             P("encounter", "reference", ("encounter",), ("Encounter",)),
             P("status", "token", ("status",))),
            patient_paths=("subject",),
        ),
        ResourceDef(
            "EpisodeOfCare",
            (_identifier(), P("patient", "reference", ("patient",), ("Patient",)),
             P("status", "token", ("status",)), P("organization", "reference", ("managingOrganization",)),
             P("incoming-referral", "reference", ("referralRequest",)), P("date", "date", ("period",))),
            patient_paths=("patient",),
        ),
        ResourceDef(  # monitoring alerts, written by the scans (services/alerts.py), read-only over the API
            "Flag",
            (_identifier(), P("subject", "reference", ("subject",)),
             P("patient", "reference", ("subject",), ("Patient",)), P("status", "token", ("status",)),
             P("category", "token", ("category",)), P("code", "token", ("code",)),
             P("date", "date", ("period",))),
            patient_paths=("subject",),
            interactions=READ_ONLY,
            financial=True,
        ),
        ResourceDef(
            "Claim",
            (_identifier(), P("patient", "reference", ("patient",), ("Patient",)),
             P("provider", "reference", ("provider",)), P("created", "date", ("created",)),
             P("status", "token", ("status",)), P("use", "token", ("use",)),
             P("insurer", "reference", ("insurer",)), P("encounter", "reference", ("item.encounter",))),
            patient_paths=("patient",),
            interactions=tuple(i for i in READ_WRITE if i != "delete"),  # settled claims are reversed
            financial=True,
            operations=("submit", "reverse"),
        ),
        ResourceDef(
            "ClaimResponse",
            (_identifier(), P("patient", "reference", ("patient",), ("Patient",)),
             P("request", "reference", ("request",), ("Claim",)), P("outcome", "token", ("outcome",)),
             P("created", "date", ("created",)), P("status", "token", ("status",)),
             P("requestor", "reference", ("requestor",)), P("insurer", "reference", ("insurer",))),
            patient_paths=("patient",),
            interactions=READ_ONLY,
            financial=True,
        ),
        ResourceDef(
            "ExplanationOfBenefit",
            (_identifier(), P("patient", "reference", ("patient",), ("Patient",)),
             P("claim", "reference", ("claim",), ("Claim",)), P("provider", "reference", ("provider",)),
             P("created", "date", ("created",)), P("status", "token", ("status",)),
             P("coverage", "reference", ("insurance.coverage",), ("Coverage",))),
            patient_paths=("patient",),
            interactions=READ_ONLY,
            financial=True,
        ),
        ResourceDef(  # fund payment batches (services/payments.py); recorded once, never changed
            "PaymentReconciliation",
            (_identifier(), P("requestor", "reference", ("requestor",), ("Organization",)),
             P("payment-issuer", "reference", ("paymentIssuer",), ("Organization",)),
             P("created", "date", ("created",)), P("outcome", "token", ("outcome",)),
             P("status", "token", ("status",))),
            interactions=("read", "vread", "history-instance", "history-type", "create", "search-type"),
            financial=True,
            party_params=("requestor",),
        ),
        ResourceDef(  # the parameters services/audit_events.py searches the log by
            "AuditEvent",
            (P("date", "date", ("recorded",)), P("agent-name", "string", ("agent.name",)),
             P("patient", "reference", ("entity.what",), ("Patient",)),
             P("entity-type", "token", ("entity.type",)), P("action", "token", ("action",))),
            interactions=("read", "search-type"),
            audit_log=True,
        ),
    ]
}


def params_for(resource_type: str) -> list[P]:
    """Declared parameters of the type (without the common _id and _lastUpdated)."""
    return list(RESOURCES[resource_type].params)
