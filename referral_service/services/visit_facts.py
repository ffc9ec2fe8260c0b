"""Build the rules engine's Facts for one visit from what is stored (loaded first, then computed)."""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from ..domain.errors import NotFound, Problem, Unprocessable
from ..domain.fhir_store import ReferenceIndex, StoredResource
from ..domain.kept import kept_rows
from ..domain.registry import Organization
from ..fhir import codes, jsonio
from ..fhir.search_params import MIN_INSTANT, SHANGHAI, parse_date_range
from ..fhir.store import ResourceStore
from ..rules import Facts, age_on, icd10_category

_VITALS = {
    codes.LOINC_RESPIRATORY_RATE: "respiration_rate",
    codes.LOINC_HEART_RATE: "pulse",
    codes.LOINC_OXYGEN_SATURATION: "spo2",
    "2708-6": "spo2",  # arterial SpO2 by pulse oximetry, also sent by some HIS
    codes.LOINC_BODY_TEMPERATURE: "temperature",
}


@dataclass(frozen=True)
class VisitContext:
    """A visit's stored resources, loaded once, from which the facts are computed."""

    encounter: dict[str, Any]
    patient: dict[str, Any]
    observations: list[dict[str, Any]]
    conditions: list[dict[str, Any]]
    provider: Organization | None
    start: datetime
    earlier_visits: list[tuple[datetime, set[str]]]  # (start, diagnosis categories)


def _load(session: Session, res_type: str, res_id: str) -> dict[str, Any]:
    found = ResourceStore(session).load(res_type, res_id)
    if found is None:
        raise NotFound(f"{res_type}/{res_id} is not known")
    return found


# Live resources of a type whose reference parameter names a target (a kept statement).
_REFERENCING = (
    select(StoredResource.content)
    .join(ReferenceIndex, ReferenceIndex.resource_pk == StoredResource.pk)
    .where(
        ReferenceIndex.res_type == bindparam("res_type"),
        ReferenceIndex.param == bindparam("param"),
        ReferenceIndex.target_type == bindparam("target_type"),
        ReferenceIndex.target_id == bindparam("target_id"),
        StoredResource.deleted.is_(False),
    )
)


def _referencing(
    session: Session, res_type: str, param: str, target: str, target_id: str
) -> list[dict[str, Any]]:
    rows = kept_rows(ResourceStore(session).connection(), _REFERENCING, {
        "res_type": res_type, "param": param, "target_type": target, "target_id": target_id})
    return [dict(jsonio.loads(r.content)) for r in rows]


def ref_id(value: Any) -> str | None:
    """The id part of a literal reference."""
    if isinstance(value, dict) and isinstance(value.get("reference"), str):
        return value["reference"].rstrip("/").split("/")[-1]
    return None


def birth_days(birth: Any) -> tuple[date, date] | None:
    """The first and last day a FHIR `date` (YYYY, YYYY-MM or YYYY-MM-DD) may be; None if it is none."""
    if not isinstance(birth, str):
        return None
    try:
        if len(birth) >= 10:
            day = date.fromisoformat(birth[:10])
            return day, day
        if len(birth) == 7:
            first = date.fromisoformat(f"{birth}-01")
            return first, date(first.year, first.month, calendar.monthrange(first.year, first.month)[1])
        if len(birth) == 4:
            return date(int(birth), 1, 1), date(int(birth), 12, 31)
    except ValueError:
        return None
    return None


def encounter_start(encounter: dict[str, Any]) -> datetime:
    """period.start as an instant (zone-less read as Asia/Shanghai); meta.lastUpdated when absent."""
    start = (encounter.get("period") or {}).get("start")
    if start:
        return parse_date_range(start)[0]
    return parse_date_range(encounter["meta"]["lastUpdated"])[0]


def diagnosis_codes(conditions: list[dict[str, Any]]) -> list[str]:
    """ICD-10 codes of the conditions."""
    out = []
    for cond in conditions:
        for coding in (cond.get("code") or {}).get("coding", []):
            if coding.get("system") == codes.ICD10_SYSTEM and coding.get("code"):
                out.append(str(coding["code"]))
    return out


def _categories(conditions: list[dict[str, Any]]) -> set[str]:
    cats = set()
    for code in diagnosis_codes(conditions):
        try:
            cats.add(icd10_category(code))
        except ValueError:
            continue
    return cats


def _visit_conditions(session: Session, encounter: dict[str, Any]) -> list[dict[str, Any]]:
    """Conditions named in Encounter.diagnosis plus those whose Condition.encounter is the visit."""
    found: dict[str, dict[str, Any]] = {}
    for diag in encounter.get("diagnosis") or []:
        cid = ref_id(diag.get("condition"))
        if cid:
            try:
                found[cid] = _load(session, "Condition", cid)
            except NotFound:
                continue
    for cond in _referencing(session, "Condition", "encounter", "Encounter", str(encounter["id"])):
        found.setdefault(str(cond["id"]), cond)
    return list(found.values())


def load_visit(session: Session, encounter_id: str) -> VisitContext:
    """Everything the rules need about the visit, the patient and the last 30 days."""
    encounter = _load(session, "Encounter", encounter_id)
    patient_id = ref_id(encounter.get("subject"))
    if patient_id is None:
        raise NotFound(f"Encounter/{encounter_id} has no subject")
    patient = _load(session, "Patient", patient_id)
    observations = _referencing(session, "Observation", "encounter", "Encounter", encounter_id)
    conditions = _visit_conditions(session, encounter)
    provider_id = ref_id(encounter.get("serviceProvider"))
    provider = session.get(Organization, provider_id) if provider_id else None
    start = encounter_start(encounter)
    window_start = max(start, MIN_INSTANT + timedelta(days=30)) - timedelta(days=30)  # (year 1: no overflow)
    earlier: list[tuple[datetime, set[str]]] = []
    rows = session.execute(
        select(StoredResource.content).where(
            StoredResource.res_type == "Encounter",
            StoredResource.patient_id == patient_id,
            StoredResource.deleted.is_(False),
            StoredResource.res_id != encounter_id,
        )
    ).scalars()
    for raw in rows:
        other = dict(jsonio.loads(raw))
        if other.get("status") != "finished" or (other.get("class") or {}).get("code") != "AMB":
            continue
        other_start = encounter_start(other)
        if window_start <= other_start < start:
            earlier.append((other_start, _categories(_visit_conditions(session, other))))
    return VisitContext(encounter, patient, observations, conditions, provider, start, earlier)


def _decimal(value: Any) -> Decimal | None:
    try:
        return Decimal(str(value)) if value is not None else None
    except InvalidOperation:
        return None


def _obs_time(obs: dict[str, Any]) -> str:
    return str(
        obs.get("effectiveDateTime")
        or (obs.get("effectivePeriod") or {}).get("start")
        or obs.get("issued")
        or obs.get("meta", {}).get("lastUpdated", "")
    )


def facts_of(ctx: VisitContext) -> Facts:
    """The Facts the rules engine evaluates (pure: no database access)."""
    vitals: dict[str, Any] = {}
    pregnant = False
    usable = [o for o in ctx.observations if o.get("status") not in ("entered-in-error", "cancelled")]
    for obs in sorted(usable, key=_obs_time):  # the latest value of each kind wins
        for coding in (obs.get("code") or {}).get("coding", []):
            system, code = coding.get("system"), coding.get("code")
            if system == codes.LOINC_SYSTEM and code in _VITALS:
                vitals[_VITALS[code]] = _decimal((obs.get("valueQuantity") or {}).get("value"))
            elif system == codes.LOINC_SYSTEM and code == codes.LOINC_BLOOD_PRESSURE_PANEL:
                for comp in obs.get("component") or []:
                    comp_codes = {c.get("code") for c in (comp.get("code") or {}).get("coding", [])}
                    value = _decimal((comp.get("valueQuantity") or {}).get("value"))
                    if codes.LOINC_SYSTOLIC_BP in comp_codes:
                        vitals["systolic_bp"] = value
                    if codes.LOINC_DIASTOLIC_BP in comp_codes:
                        vitals["diastolic_bp"] = value
            elif system == codes.LOINC_SYSTEM and code == codes.LOINC_SYSTOLIC_BP:
                vitals["systolic_bp"] = _decimal((obs.get("valueQuantity") or {}).get("value"))
            elif system == codes.LOINC_SYSTEM and code == codes.LOINC_DIASTOLIC_BP:
                vitals["diastolic_bp"] = _decimal((obs.get("valueQuantity") or {}).get("value"))
            elif system == codes.OBSERVATION_SYSTEM and code == "acvpu":
                vitals["consciousness"] = obs.get("valueString")
            elif system == codes.OBSERVATION_SYSTEM and code == "supplemental-oxygen":
                vitals["supplemental_oxygen"] = obs.get("valueBoolean")
            elif system == codes.LOINC_SYSTEM and code == codes.LOINC_PREGNANCY_STATUS:
                answer = {c.get("code") for c in (obs.get("valueCodeableConcept") or {}).get("coding", [])}
                pregnant = codes.SNOMED_PREGNANT in answer
    visit_day = ctx.start.astimezone(SHANGHAI).date()
    birth = ctx.patient.get("birthDate")
    born = birth_days(birth)
    if born is not None and visit_day < born[0]:  # no age to decide on: the visit or the birth date is wrong
        message = (f"Encounter.period.start ({visit_day.isoformat()}) is before the patient's birthDate "
                   f"({birth})")
        raise Unprocessable(message, [Problem(message, expression="Encounter.period.start",
                                              code="business-rule")])
    # The youngest the patient can be (a birthDate of a year or a month: its last day, or the visit's
    # day if that comes first); no birthDate: age unknown, so no age rule applies.
    years, months = age_on(min(born[1], visit_day), visit_day) if born is not None else (None, None)
    categories = _categories(ctx.conditions)
    repeat = {cat: sum(1 for _, cats in ctx.earlier_visits if cat in cats) for cat in sorted(categories)}
    disposition = None
    for coding in ((ctx.encounter.get("hospitalization") or {}).get("dischargeDisposition") or {}).get(
        "coding", []
    ):
        if coding.get("system") == codes.DISCHARGE_DISPOSITION_SYSTEM:
            disposition = coding.get("code")
    return Facts(
        age_years=years,
        age_months=months,
        sex=ctx.patient.get("gender") or "unknown",
        pregnant=pregnant,
        facility_level=(
            ctx.provider.facility_level if ctx.provider and ctx.provider.facility_level else "township"
        ),
        diagnosis_codes=tuple(diagnosis_codes(ctx.conditions)),
        repeat_visit_counts=repeat,
        encounter_class=(ctx.encounter.get("class") or {}).get("code") or "AMB",
        discharge_disposition=disposition,
        **vitals,
    )
