"""Visits from the web forms: first visit, admission, discharge, follow-up; and the referral worklists.

Every write builds the same FHIR resources an HIS would send (Encounter, Observation, Condition,
Claim) and stores them through `services.resources`, so the same profiles and referral rules run.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
from marshmallow import ValidationError, fields, pre_load, validates_schema
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..domain.accounts import ApiClient, User
from ..domain.actor import Actor
from ..domain.base import new_id
from ..domain.errors import Conflict, DomainError, Forbidden, NotFound, Unprocessable
from ..domain.fhir_store import ReferenceIndex, StoredResource
from ..domain.ledger import FUNDS, Settlement
from ..domain.registry import Coverage, Organization, Patient
from ..fhir import codes
from ..fhir.search import parse_search
from ..fhir.search_params import SHANGHAI, parse_date_range
from ..fhir.store import Stored
from . import referrals, settlement
from . import resources as service
from .registration import (
    FormSchema,
    Msg,
    PlainDecimal,
    invalid,
    money_field,
    one_of,
    optional_text,
    required_text,
)

ICD10_FILE = Path(__file__).resolve().parents[2] / "config" / "icd10_zh.csv"
ICD10_PATTERN = re.compile(r"^[A-Z][0-9]{2}(\.[0-9A-Z]{1,4})?$")
CLAIM_ID_SYSTEM = f"{codes.BASE}/sid/claim"
PROCESS_PRIORITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/processpriority"
OBSERVATION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-category"
ACVPU = ("A", "C", "V", "P", "U")
PREGNANCY = ("pregnant", "not-pregnant")
CHARGE_CLASSES = ("A", "B", "C")
PRIORITIES = ("routine", "urgent", "stat")
PRIORITY_RANK = {"stat": 0, "asap": 1, "urgent": 1, "routine": 2}
# http://terminology.hl7.org/CodeSystem/discharge-disposition
DISPOSITIONS = (
    "home",
    "alt-home",
    "other-hcf",
    "hosp",
    "long",
    "aadvice",
    "exp",
    "psy",
    "rehab",
    "snf",
    "oth",
)
MAX_CHARGE = Decimal("1000000")
OPEN_TASK_STATES = ("requested", "received", "accepted", "in-progress")


# ------------------------------------------------------------------------------ ICD-10 list


@dataclass(frozen=True)
class Icd10Code:
    """One code of the shipped ICD-10 list with its Chinese and English names."""

    code: str
    name_zh: str
    name_en: str

    def name(self, language: str) -> str:
        """The name in the language ('zh...' Chinese, else English)."""
        return self.name_zh if language.lower().startswith("zh") else self.name_en


@cache
def icd10_catalogue() -> tuple[Icd10Code, ...]:
    """The shipped list (config/icd10_zh.csv), in code order."""
    with ICD10_FILE.open(encoding="utf-8", newline="") as fh:
        rows = [
            Icd10Code(r["code"].strip(), r["name_zh"].strip(), r["name_en"].strip())
            for r in csv.DictReader(fh)
        ]
    return tuple(sorted(rows, key=lambda r: r.code))


@cache
def _by_code() -> dict[str, Icd10Code]:
    return {c.code: c for c in icd10_catalogue()}


def normalise_icd10(text: str) -> str:
    """Upper case, no spaces, a dot after the category (I639 -> I63.9)."""
    code = text.strip().upper().replace(" ", "")
    if "." not in code and len(code) > 3:
        code = f"{code[:3]}.{code[3:]}"
    return code


def icd10_lookup(code: str) -> Icd10Code | None:
    """The list entry of a code, if shipped."""
    return _by_code().get(normalise_icd10(code))


def search_icd10(text: str, *, limit: int = 20) -> list[Icd10Code]:
    """Codes whose code starts with the text (dots ignored), then those whose name contains it."""
    query = text.strip()
    if not query:
        return []
    key = query.upper().replace(".", "")
    by_code = [c for c in icd10_catalogue() if c.code.replace(".", "").startswith(key)]
    lower = query.lower()
    by_name = [c for c in icd10_catalogue() if query in c.name_zh or lower in c.name_en.lower()]
    seen: set[str] = set()
    found: list[Icd10Code] = []
    for entry in by_code + by_name:
        if entry.code not in seen:
            seen.add(entry.code)
            found.append(entry)
    return found[:limit]


def resolve_icd10(text: str) -> str:
    """The code of what was typed: a code, 'J18.9 肺炎' (code first), or an exact name from the list."""
    typed = text.strip()
    first = typed.split()[0] if typed.split() else typed
    if ICD10_PATTERN.match(normalise_icd10(first)):
        return normalise_icd10(first)
    named = [entry.code for entry in icd10_catalogue() if typed in (entry.name_zh, entry.name_en)]
    # A name shared by a category and its subcategory (脑梗死: I63, I63.9) means the coded diagnosis.
    return max(named, key=len) if named else typed


def _resolve_diagnoses(data: Any) -> Any:
    if isinstance(data, Mapping) and isinstance(data.get("diagnoses"), list):
        codes_ = [resolve_icd10(d) if isinstance(d, str) else d for d in data["diagnoses"]]
        data = {**data, "diagnoses": codes_}
    return data


def _icd10_code(value: str) -> None:
    if not ICD10_PATTERN.match(normalise_icd10(value)):
        raise ValidationError(Msg("Not an ICD-10 code (a letter, two digits, optionally a dot and more)."))


def _at_least_one(value: list[Any]) -> None:
    if not value:
        raise ValidationError(Msg("Give at least one diagnosis."))


# ------------------------------------------------------------------------------ schemas


@dataclass(frozen=True)
class VitalSpec:
    """A vital sign on the form: its LOINC code, UCUM unit, plausible range and decimals.

    The decimals are those NEWS2 needs (DESIGN section 4): a band's upper bound is inclusive and the next
    band starts just above it, with 38.05 C and SpO2 91.5 % as the examples; so temperature takes two
    decimals and SpO2 one. Counts per minute and pressures are whole numbers.
    """

    loinc: str
    unit: str
    low: Decimal
    high: Decimal
    places: int


VITALS: dict[str, VitalSpec] = {
    "respiration_rate": VitalSpec(
        codes.LOINC_RESPIRATORY_RATE, codes.UCUM_PER_MINUTE, Decimal(1), Decimal(80), 0
    ),
    "spo2": VitalSpec(codes.LOINC_OXYGEN_SATURATION, codes.UCUM_PERCENT, Decimal(50), Decimal(100), 1),
    "pulse": VitalSpec(codes.LOINC_HEART_RATE, codes.UCUM_PER_MINUTE, Decimal(20), Decimal(250), 0),
    "temperature": VitalSpec(codes.LOINC_BODY_TEMPERATURE, codes.UCUM_CELSIUS, Decimal(30), Decimal(44), 2),
    "systolic_bp": VitalSpec(codes.LOINC_SYSTOLIC_BP, codes.UCUM_MM_HG, Decimal(50), Decimal(280), 0),
    "diastolic_bp": VitalSpec(codes.LOINC_DIASTOLIC_BP, codes.UCUM_MM_HG, Decimal(20), Decimal(180), 0),
}


def _vital_range(spec: VitalSpec) -> Callable[[Decimal], None]:
    def check(value: Decimal) -> None:
        if value < spec.low or value > spec.high:
            raise ValidationError(
                Msg("Enter a value between %(low)s and %(high)s.", low=spec.low, high=spec.high)
            )
        if value != value.quantize(Decimal(1).scaleb(-spec.places)):
            raise ValidationError(
                Msg("Enter a whole number.")
                if spec.places == 0
                else Msg("Use at most one decimal place.")
                if spec.places == 1
                else Msg("Use at most two decimal places.")
            )

    return check


def _vital_field(name: str) -> fields.Decimal:
    return PlainDecimal(load_default=None, allow_none=True, validate=_vital_range(VITALS[name]))


class ChargeSchema(FormSchema):
    """One charge: what, its reimbursement class (甲乙丙类) and the amount in yuan."""

    description = fields.String(required=True, validate=required_text(100))
    charge_class = fields.String(required=True, validate=one_of(CHARGE_CLASSES))
    amount = money_field(Decimal("0.01"), MAX_CHARGE, required=True)


class FirstVisitSchema(FormSchema):
    """A first visit at a township or village clinic (基层首诊)."""

    complaint = fields.String(required=True, validate=required_text(500))
    respiration_rate = _vital_field("respiration_rate")
    spo2 = _vital_field("spo2")
    supplemental_oxygen = fields.Boolean(load_default=False)
    systolic_bp = _vital_field("systolic_bp")
    diastolic_bp = _vital_field("diastolic_bp")
    pulse = _vital_field("pulse")
    consciousness = fields.String(load_default=None, validate=one_of(ACVPU))
    temperature = _vital_field("temperature")
    pregnancy = fields.String(load_default=None, validate=one_of(PREGNANCY))
    diagnoses = fields.List(fields.String(validate=_icd10_code), required=True, validate=_at_least_one)
    charges = fields.List(fields.Nested(ChargeSchema), load_default=list)

    @pre_load
    def _names_to_codes(self, data: Any, **kwargs: Any) -> Any:
        return _resolve_diagnoses(data)

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _blood_pressure(self, data: dict[str, Any], original: Any, **kwargs: Any) -> None:
        systolic, diastolic = data.get("systolic_bp"), data.get("diastolic_bp")
        given = original if isinstance(original, Mapping) else {}
        typed = {k for k in ("systolic_bp", "diastolic_bp") if given.get(k)}
        if (systolic is None) != (diastolic is None) and len(typed) < 2:
            missing = "diastolic_bp" if diastolic is None else "systolic_bp"
            raise invalid(missing, "Give both systolic and diastolic pressure.")
        if systolic is not None and diastolic is not None and systolic < diastolic:
            raise invalid("systolic_bp", "Systolic pressure cannot be below diastolic pressure.")


class DischargeSchema(FormSchema):
    """Discharge from the county hospital: where to, discharge diagnoses, charges."""

    disposition = fields.String(required=True, validate=one_of(DISPOSITIONS))
    diagnoses = fields.List(fields.String(validate=_icd10_code), required=True, validate=_at_least_one)
    summary = fields.String(load_default=None, validate=optional_text(1000))
    charges = fields.List(fields.Nested(ChargeSchema), load_default=list)

    @pre_load
    def _names_to_codes(self, data: Any, **kwargs: Any) -> Any:
        return _resolve_diagnoses(data)


class ReasonSchema(FormSchema):
    """A decision that needs a reason (declining a referral)."""

    reason = fields.String(required=True, validate=required_text(500))


class OverrideSchema(FormSchema):
    """The clinician overrides the proposal: no referral, or another hospital or urgency; with a reason."""

    action = fields.String(required=True, validate=one_of(("no-referral", "change")))
    reason = fields.String(required=True, validate=required_text(500))
    target_id = fields.String(load_default=None)
    priority = fields.String(load_default=None, validate=one_of(PRIORITIES))

    @validates_schema(skip_on_field_errors=False)
    def _change_needs_something(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("action") == "change" and not data.get("target_id") and not data.get("priority"):
            raise invalid("target_id", "Choose another hospital or urgency.")


class DownReferralOverrideSchema(OverrideSchema):
    """The hospital overrides its proposed down-referral: none, or another township clinic; with a reason."""

    @validates_schema(skip_on_field_errors=False)
    def _change_needs_something(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("action") == "change" and not data.get("target_id"):
            raise invalid("target_id", "Choose another clinic.")


class FollowUpSchema(FormSchema):
    """A follow-up visit of a down-referred patient (康复随访)."""

    notes = fields.String(required=True, validate=required_text(1000))


# ------------------------------------------------------------------------------ FHIR shapes


def _now() -> datetime:
    return datetime.now(SHANGHAI).replace(microsecond=0)


def _ref(kind: str, rid: str) -> dict[str, str]:
    return {"reference": f"{kind}/{rid}"}


def _quantity(value: Decimal, unit: str) -> dict[str, Any]:
    number: int | float = int(value) if value == value.to_integral_value() else float(value)
    return {"value": number, "unit": unit, "system": codes.UCUM_SYSTEM, "code": unit}


def _observation(patient_id: str, encounter_id: str, when: str, code: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [code]},
        "subject": _ref("Patient", patient_id),
        "encounter": _ref("Encounter", encounter_id),
        "effectiveDateTime": when,
    }


def visit_observations(
    values: Mapping[str, Any], patient_id: str, encounter_id: str, when: str
) -> list[dict]:
    """Vital signs, consciousness, oxygen and pregnancy as the Observations the rules read."""
    vital_category = [{"coding": [{"system": OBSERVATION_CATEGORY_SYSTEM, "code": "vital-signs"}]}]
    out: list[dict[str, Any]] = []
    for name in ("respiration_rate", "spo2", "pulse", "temperature"):
        if values.get(name) is not None:
            spec = VITALS[name]
            obs = _observation(
                patient_id, encounter_id, when, {"system": codes.LOINC_SYSTEM, "code": spec.loinc}
            )
            obs["category"] = vital_category
            obs["valueQuantity"] = _quantity(values[name], spec.unit)
            out.append(obs)
    if values.get("systolic_bp") is not None and values.get("diastolic_bp") is not None:
        panel = _observation(
            patient_id,
            encounter_id,
            when,
            {"system": codes.LOINC_SYSTEM, "code": codes.LOINC_BLOOD_PRESSURE_PANEL},
        )
        panel["category"] = vital_category
        panel["component"] = [
            {
                "code": {"coding": [{"system": codes.LOINC_SYSTEM, "code": VITALS[name].loinc}]},
                "valueQuantity": _quantity(values[name], codes.UCUM_MM_HG),
            }
            for name in ("systolic_bp", "diastolic_bp")
        ]
        out.append(panel)
    if values.get("consciousness"):
        obs = _observation(
            patient_id, encounter_id, when, {"system": codes.OBSERVATION_SYSTEM, "code": "acvpu"}
        )
        obs["valueString"] = values["consciousness"]
        out.append(obs)
    oxygen = _observation(
        patient_id, encounter_id, when, {"system": codes.OBSERVATION_SYSTEM, "code": "supplemental-oxygen"}
    )
    oxygen["valueBoolean"] = bool(values.get("supplemental_oxygen"))
    out.append(oxygen)
    if values.get("pregnancy"):
        answer = codes.SNOMED_PREGNANT if values["pregnancy"] == "pregnant" else codes.SNOMED_NOT_PREGNANT
        obs = _observation(
            patient_id,
            encounter_id,
            when,
            {"system": codes.LOINC_SYSTEM, "code": codes.LOINC_PREGNANCY_STATUS},
        )
        obs["valueCodeableConcept"] = {"coding": [{"system": codes.SNOMED_SYSTEM, "code": answer}]}
        out.append(obs)
    return out


def condition(patient_id: str, encounter_id: str, code: str, when: str) -> dict[str, Any]:
    """A diagnosis (ICD-10) of the encounter."""
    entry = icd10_lookup(code)
    coding: dict[str, str] = {"system": codes.ICD10_SYSTEM, "code": normalise_icd10(code)}
    if entry is not None:
        coding["display"] = entry.name_zh
    return {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": codes.CONDITION_CLINICAL_SYSTEM, "code": "active"}]},
        "category": [{"coding": [{"system": CONDITION_CATEGORY_SYSTEM, "code": "encounter-diagnosis"}]}],
        "code": {"coding": [coding], **({"text": entry.name_zh} if entry else {})},
        "subject": _ref("Patient", patient_id),
        "encounter": _ref("Encounter", encounter_id),
        "recordedDate": when,
    }


def claim(
    *,
    kind: str,
    patient_id: str,
    provider_id: str,
    encounter_id: str,
    start: str,
    end: str,
    charges: Iterable[Mapping[str, Any]],
    coverage_id: str | None,
    created: str,
    referral_id: str | None = None,
) -> dict[str, Any]:
    """The visit's charges as a draft Claim (settled at the discharge desk by the settlement service)."""
    items = []
    total = Decimal("0.00")
    for sequence, charge in enumerate(charges, start=1):
        amount = Decimal(charge["amount"]).quantize(Decimal("0.01"))
        total += amount
        items.append(
            {
                "sequence": sequence,
                "category": {
                    "coding": [{"system": codes.CHARGE_CLASS_SYSTEM, "code": charge["charge_class"]}]
                },
                "productOrService": {"text": charge["description"].strip()},
                "net": {"value": float(amount), "currency": codes.CURRENCY},
                "encounter": [_ref("Encounter", encounter_id)],
            }
        )
    insurance: dict[str, Any] = {"sequence": 1, "focal": True}
    insurance["coverage"] = _ref("Coverage", coverage_id) if coverage_id else {"display": "自费 / self-pay"}
    body: dict[str, Any] = {
        "resourceType": "Claim",
        "identifier": [{"system": CLAIM_ID_SYSTEM, "value": f"claim-{encounter_id}"}],
        "status": "draft",
        "type": {"coding": [{"system": codes.CLAIM_TYPE_SYSTEM, "code": kind}]},
        "use": "claim",
        "patient": _ref("Patient", patient_id),
        "billablePeriod": {"start": start, "end": end},
        "created": created,
        "provider": _ref("Organization", provider_id),
        "priority": {"coding": [{"system": PROCESS_PRIORITY_SYSTEM, "code": "normal"}]},
        "insurance": [insurance],
        "item": items,
        "total": {"value": float(total), "currency": codes.CURRENCY},
    }
    if referral_id:
        body["referral"] = _ref("ServiceRequest", referral_id)
    return body


def _basic_coverage(session: Session, patient_id: str, day: date) -> str | None:
    for cover in session.scalars(
        select(Coverage)
        .where(Coverage.patient_id == patient_id, Coverage.type == "basic")
        .order_by(Coverage.id)
    ):
        if cover.active_on(day):
            return cover.id
    return None


def _form_errors(exc: DomainError) -> ValidationError:
    """A refusal by a profile or rule, shown on the form (the field named by its element path)."""
    errors: dict[str, list[Msg]] = {}
    for problem in exc.problems:
        path = problem.expression or ""
        name = "_schema"
        for prefix, field_name in (
            ("Observation", "_schema"),
            ("Condition", "diagnoses"),
            ("Claim", "charges"),
        ):
            if path.startswith(prefix):
                name = field_name
        errors.setdefault(name, []).append(Msg(problem.message))
    return ValidationError(errors)


# ------------------------------------------------------------------------------ first visit


def record_first_visit(session: Session, actor: Actor, patient_id: str, data: Mapping[str, Any]) -> str:
    """Store a finished first visit (Encounter AMB, Observations, Conditions, Claim); the rules decide.

    Returns the Encounter id. The rules run once, after everything of the visit is stored, exactly
    as for a transaction Bundle from an HIS. The visit ends here, so its charges are settled in the
    same unit of work (`settle_at_end_of_visit`).
    """
    values: dict[str, Any] = FirstVisitSchema().load(data)
    patient = service.read(session, actor, "Patient", patient_id).as_dict()
    if values.get("pregnancy") == "pregnant" and patient.get("gender") == "male":
        raise invalid("pregnancy", "The patient is registered as male.")
    if actor.organization_id is None:
        raise Forbidden("a visit is recorded for an organisation")
    now = _now()
    start, end = (now - timedelta(minutes=15)).isoformat(), now.isoformat()
    encounter_id = new_id()
    diagnoses = list(dict.fromkeys(normalise_icd10(c) for c in values["diagnoses"]))
    condition_ids = [new_id() for _ in diagnoses]
    encounter = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": codes.V3_ACT_CODE_SYSTEM, "code": codes.ENCOUNTER_CLASS_AMBULATORY},
        "subject": _ref("Patient", patient_id),
        "serviceProvider": _ref("Organization", actor.organization_id),
        "period": {"start": start, "end": end},
        "reasonCode": [{"text": values["complaint"].strip()}],
        "diagnosis": [
            {"condition": _ref("Condition", cid), "rank": rank}
            for rank, cid in enumerate(condition_ids, start=1)
        ],
    }
    try:
        written = service.create(
            session,
            actor,
            "Encounter",
            encounter,
            assigned_id=encounter_id,
            hooks=False,
            known_refs=frozenset(("Condition", cid) for cid in condition_ids),
        )
        for obs in visit_observations(values, patient_id, encounter_id, end):
            service.create(session, actor, "Observation", obs)
        for cid, code in zip(condition_ids, diagnoses, strict=True):
            service.create(
                session, actor, "Condition", condition(patient_id, encounter_id, code, end), assigned_id=cid
            )
        if values["charges"]:
            body = claim(
                kind=codes.CLAIM_TYPE_PROFESSIONAL,
                patient_id=patient_id,
                provider_id=actor.organization_id,
                encounter_id=encounter_id,
                start=start,
                end=end,
                charges=values["charges"],
                coverage_id=_basic_coverage(session, patient_id, now.date()),
                created=end,
            )
            service.create(session, actor, "Claim", body, assigned_id=f"claim-{encounter_id}")
        service.run_hooks(session, actor, written)
    except Unprocessable as exc:
        raise _form_errors(exc) from None
    stored_claim = _charges_of(session, encounter_id) if values["charges"] else None
    if stored_claim is not None:  # the end of the visit: settled now (see settle_at_end_of_visit)
        _settle_refusable(session, actor, written.stored.as_dict(), stored_claim)
    return encounter_id


# ------------------------------------------------------------------------------ decisions


@dataclass(frozen=True)
class RuleLine:
    """A rule that fired, with its explanation in both languages."""

    id: str
    explanation_zh: str
    explanation_en: str

    def explanation(self, language: str) -> str:
        """The explanation in the language."""
        return self.explanation_zh if language.lower().startswith("zh") else self.explanation_en


@dataclass(frozen=True)
class NoteLine:
    """A note of the workflow on a decision (no hospital, hospital out of the county ...), zh and en."""

    text_zh: str
    text_en: str

    def text(self, language: str) -> str:
        """The note in the language."""
        return self.text_zh if language.lower().startswith("zh") else self.text_en


def _has_chinese(text: str) -> bool:
    return any("\u3400" <= ch <= "\u9fff" for ch in text)


def _note_lines(texts: list[str]) -> list[NoteLine]:
    """The workflow's notes, written as a Chinese note followed by its English one, paired again.

    The English note may name Chinese places and hospitals, so only the first of a pair is known
    by its script. A note without Chinese (decisions stored before notes were bilingual carried one
    English note) stands for both languages; the web pages translate the known ones.
    """
    out: list[NoteLine] = []
    i = 0
    while i < len(texts):
        if i + 1 < len(texts) and _has_chinese(texts[i]):
            out.append(NoteLine(texts[i], texts[i + 1]))
            i += 2
        else:
            out.append(NoteLine(texts[i], texts[i]))
            i += 1
    return out


@dataclass(frozen=True)
class News2Line:
    """One NEWS2 parameter: measured value and its score (None when not measured)."""

    parameter: str
    label_zh: str
    label_en: str
    value: str | None
    score: int | None

    def label(self, language: str) -> str:
        """The parameter's name in the language."""
        return self.label_zh if language.lower().startswith("zh") else self.label_en


@dataclass(frozen=True)
class News2View:
    """The NEWS2 breakdown stored with a decision."""

    total: int
    max_single: int
    complete: bool
    message_zh: str
    message_en: str
    items: list[News2Line]

    def message(self, language: str) -> str:
        """The completeness message in the language."""
        return self.message_zh if language.lower().startswith("zh") else self.message_en


@dataclass(frozen=True)
class ReferralView:
    """A referral (ServiceRequest) with its current Task."""

    id: str
    kind: str
    status: str
    priority: str
    requester_id: str
    requester_name: str
    target_id: str
    target_name: str
    authored: datetime | None
    task_id: str | None
    task_status: str | None
    task_reason: str | None
    override_reason: str | None
    encounter_id: str | None
    patient_id: str
    patient_name: str = ""
    requested: datetime | None = None  # when the Task was created: the order of referrals authored alike

    @property
    def age(self) -> timedelta | None:
        """How long ago the referral was made."""
        return datetime.now(SHANGHAI) - self.authored if self.authored else None


@dataclass(frozen=True)
class Diagnosis:
    """A diagnosis with its name from the shipped list."""

    code: str
    name_zh: str | None
    name_en: str | None

    def name(self, language: str) -> str:
        """The name in the language (the code alone when unknown)."""
        text = self.name_zh if language.lower().startswith("zh") else self.name_en
        return text or ""


@dataclass(frozen=True)
class DecisionView:
    """What the rules decided for a visit, why, with NEWS2 and the proposed referral."""

    encounter_id: str
    patient_id: str
    patient_name: str
    encounter_class: str
    visit_start: datetime | None
    complaint: str | None
    provider_name: str
    outcome: str
    urgency: str | None
    capability: str | None
    rule_set: str
    rules: list[RuleLine]
    news2: News2View | None
    notes: list[NoteLine]
    diagnoses: list[Diagnosis]
    referral: ReferralView | None
    follow_ups: list[tuple[date, str]] = field(default_factory=list)

    @property
    def refers(self) -> bool:
        """True when the rules propose a referral."""
        return self.outcome in ("refer-up", "down-referral")


def _org_names(session: Session, ids: Iterable[str | None]) -> dict[str, str]:
    wanted = {i for i in ids if i}
    if not wanted:
        return {}
    return {o.id: o.name for o in session.scalars(select(Organization).where(Organization.id.in_(wanted)))}


def _ref_id(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("reference"), str):
        return value["reference"].rstrip("/").split("/")[-1]
    return None


def _instant(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return parse_date_range(text)[0].astimezone(SHANGHAI)
    except (ValueError, DomainError):
        return None


def _patient_name(resource: Mapping[str, Any] | None) -> str:
    if not resource:
        return ""
    names = resource.get("name") or [{}]
    first = names[0]
    given = "".join(g for g in first.get("given") or [] if isinstance(g, str))
    return str(first.get("text") or (first.get("family") or "") + given)


def patient_name(resource: Mapping[str, Any] | None) -> str:
    """A Patient resource's name as shown (family name first)."""
    return _patient_name(resource)


def encounter_start(encounter: Mapping[str, Any]) -> datetime | None:
    """When an Encounter started, in Asia/Shanghai."""
    return _instant((encounter.get("period") or {}).get("start"))


def _news2(gr: Mapping[str, Any]) -> News2View | None:
    contained = next((c for c in gr.get("contained") or [] if c.get("resourceType") == "Parameters"), None)
    if contained is None:
        return None
    labels = {p.name: p for p in referrals.rule_sets().news2.parameters}
    total = max_single = 0
    complete = True
    message_zh = message_en = ""
    items: list[News2Line] = []
    for param in contained.get("parameter") or []:
        name = param.get("name")
        if name == "total":
            total = int(param.get("valueInteger", 0))
        elif name == "max-single":
            max_single = int(param.get("valueInteger", 0))
        elif name == "complete":
            complete = bool(param.get("valueBoolean"))
        elif name == "message-zh":
            message_zh = str(param.get("valueString"))
        elif name == "message-en":
            message_en = str(param.get("valueString"))
        elif name == "item":
            parts = {p.get("name"): p for p in param.get("part") or []}
            parameter = str(parts.get("parameter", {}).get("valueString", ""))
            spec = labels.get(parameter)
            value_part = parts.get("value", {})
            value = value_part.get("valueString")
            if isinstance(value_part.get("valueBoolean"), bool):
                value = "true" if value_part["valueBoolean"] else "false"
            score = parts.get("score", {}).get("valueInteger")
            items.append(
                News2Line(
                    parameter,
                    spec.label_zh if spec else parameter,
                    spec.label_en if spec else parameter,
                    None if value is None else str(value),
                    None if score is None else int(score),
                )
            )
    return News2View(total, max_single, complete, message_zh, message_en, items)


def _decision_extension(gr: Mapping[str, Any]) -> dict[str, str]:
    for ext in gr.get("extension") or []:
        if ext.get("url", "").endswith("/referral-decision"):
            return {e.get("url"): e.get("valueCode") for e in ext.get("extension") or []}
    return {}


def _diagnoses(conditions: Iterable[Mapping[str, Any]]) -> list[Diagnosis]:
    out = []
    for cond in conditions:
        for coding in (cond.get("code") or {}).get("coding") or []:
            if coding.get("system") == codes.ICD10_SYSTEM and coding.get("code"):
                entry = icd10_lookup(str(coding["code"]))
                out.append(
                    Diagnosis(
                        str(coding["code"]),
                        entry.name_zh if entry else coding.get("display"),
                        entry.name_en if entry else coding.get("display"),
                    )
                )
    return out


def _search(session: Session, actor: Actor, resource_type: str, args: list[tuple[str, str]]) -> list[Stored]:
    """Matches and included resources of a search, as the actor may see them (audited; no total)."""
    query = parse_search(resource_type, [*args, ("_total", "none")], 200, 500)
    page = service.search(session, actor, query, query_text=urlencode(args))  # as the API records it
    return [*page.matches, *page.included]


# Once a page's main record passed the access policy (and its read was audited), the records that
# belong to it are loaded directly: the policy's patient subquery costs a county hospital, which
# sees its whole district, some milliseconds per query, and a page would otherwise pay it a dozen times.


def _raw(session: Session, res_type: str, res_id: str) -> dict[str, Any] | None:
    """The current content of a resource (None when unknown or deleted), without the access policy."""
    content = session.scalar(
        select(StoredResource.content).where(
            StoredResource.res_type == res_type,
            StoredResource.res_id == res_id,
            StoredResource.deleted.is_(False),
        )
    )
    return dict(orjson.loads(content)) if content is not None else None


def _raw_referencing(session: Session, res_type: str, param: str, target: str) -> list[dict[str, Any]]:
    """Resources of a type whose reference parameter points at `target` (Type/id), without the policy."""
    kind, _, target_id = target.partition("/")
    rows = session.scalars(
        select(StoredResource.content)
        .join(ReferenceIndex, ReferenceIndex.resource_pk == StoredResource.pk)
        .where(
            ReferenceIndex.res_type == res_type,
            ReferenceIndex.param == param,
            ReferenceIndex.target_type == kind,
            ReferenceIndex.target_id == target_id,
            StoredResource.deleted.is_(False),
        )
    )
    return [dict(orjson.loads(r)) for r in rows]


def _tasks_by_focus(tasks: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The current Task of each referral: an open one, else the latest."""
    out: dict[str, dict[str, Any]] = {}
    for task in sorted(tasks, key=lambda t: (str(t.get("lastModified") or ""), str(t["id"]))):
        focus = _ref_id(task.get("focus"))
        if focus is None:
            continue
        current = out.get(focus)
        if (
            current is None
            or task.get("status") in OPEN_TASK_STATES
            or current.get("status") not in OPEN_TASK_STATES
        ):
            out[focus] = dict(task)
    return out


def _override_reason(sr: Mapping[str, Any]) -> str | None:
    for ext in sr.get("extension") or []:
        if ext.get("url") == referrals.OVERRIDE_URL:
            return str(ext.get("valueString"))
    return None


def _referral_view(
    sr: Mapping[str, Any], task: Mapping[str, Any] | None, names: Mapping[str, str], patient_name: str = ""
) -> ReferralView:
    requester = _ref_id(sr.get("requester")) or ""
    target = _ref_id((sr.get("performer") or [None])[0]) or ""
    kind = next(
        (
            c.get("code")
            for c in (sr.get("code") or {}).get("coding") or []
            if c.get("system") == codes.REFERRAL_TYPE_SYSTEM
        ),
        "up-referral",
    )
    return ReferralView(
        id=str(sr["id"]),
        kind=str(kind),
        status=str(sr.get("status")),
        priority=str(sr.get("priority") or "routine"),
        requester_id=requester,
        requester_name=names.get(requester, requester),
        target_id=target,
        target_name=names.get(target, target),
        authored=_instant(sr.get("authoredOn")),
        task_id=str(task["id"]) if task else None,
        task_status=str(task.get("status")) if task else None,
        task_reason=((task.get("statusReason") or {}).get("text") if task else None),
        override_reason=_override_reason(sr),
        encounter_id=_ref_id(sr.get("encounter")),
        patient_id=_ref_id(sr.get("subject")) or "",
        patient_name=patient_name,
        requested=_instant(task.get("authoredOn")) if task else None,
    )


def _load_referral(session: Session, actor: Actor, sr_id: str) -> ReferralView | None:
    """A referral the actor may see, with its current Task (None when unknown or not visible)."""
    try:
        sr = service.read(session, actor, "ServiceRequest", sr_id).as_dict()
    except NotFound:
        return None
    return _referral_of(session, sr)


def _referral_of(session: Session, sr: Mapping[str, Any]) -> ReferralView:
    sr_id = str(sr["id"])
    task = _tasks_by_focus(_raw_referencing(session, "Task", "focus", f"ServiceRequest/{sr_id}")).get(sr_id)
    names = _org_names(session, [_ref_id(sr.get("requester")), _ref_id((sr.get("performer") or [None])[0])])
    return _referral_view(sr, task, names)


def visit_decision(session: Session, actor: Actor, encounter_id: str) -> DecisionView:
    """The stored decision of a visit (first visit or discharge) as the actor may see it (404 otherwise)."""
    encounter = service.read(session, actor, "Encounter", encounter_id).as_dict()
    return _decision_of(session, encounter)


def _decision_of(session: Session, encounter: Mapping[str, Any]) -> DecisionView:
    """The decision of an Encounter the caller has already been allowed to see."""
    encounter_id = str(encounter["id"])
    gr = _raw(session, "GuidanceResponse", f"gr-{encounter_id}") or {}
    patient_id = _ref_id(encounter.get("subject")) or ""
    patient = _raw(session, "Patient", patient_id)
    decision = _decision_extension(gr)
    notes_en = {r.get("coding", [{}])[0].get("display") for r in gr.get("reasonCode") or []}
    notes_zh = {r.get("text") for r in gr.get("reasonCode") or []}
    rules = [
        RuleLine(
            str(r["coding"][0]["code"]), str(r.get("text") or ""), str(r["coding"][0].get("display") or "")
        )
        for r in gr.get("reasonCode") or []
        if r.get("coding")
    ]
    extra_notes = [str(n["text"]) for n in gr.get("note") or [] if n.get("text") not in notes_en | notes_zh]
    conditions = _raw_referencing(session, "Condition", "encounter", f"Encounter/{encounter_id}")
    referral_id = _ref_id(gr.get("result"))
    sr = _raw(session, "ServiceRequest", referral_id) if referral_id else None
    referral = _referral_of(session, sr) if sr else None
    follow_ups: list[tuple[date, str]] = []
    plan = (
        _raw(session, "CarePlan", f"cp-{referral.id}")
        if referral and referral.kind == "down-referral"
        else None
    )
    if plan is not None:
        follow_ups = [
            (date.fromisoformat(a["detail"]["scheduledPeriod"]["start"]), str(a["detail"]["status"]))
            for a in plan.get("activity") or []
        ]
    provider = _ref_id(encounter.get("serviceProvider"))
    return DecisionView(
        encounter_id=encounter_id,
        patient_id=patient_id,
        patient_name=_patient_name(patient),
        encounter_class=str((encounter.get("class") or {}).get("code") or ""),
        visit_start=_instant((encounter.get("period") or {}).get("start")),
        complaint=next((r.get("text") for r in encounter.get("reasonCode") or [] if r.get("text")), None),
        provider_name=_org_names(session, [provider]).get(provider or "", provider or ""),
        outcome=decision.get("outcome", "none"),
        urgency=decision.get("urgency"),
        capability=decision.get("capability"),
        rule_set=str(gr.get("moduleCanonical", "")).rsplit("/", 1)[-1],
        rules=rules,
        news2=_news2(gr) if gr else None,
        notes=_note_lines(extra_notes),
        diagnoses=_diagnoses(conditions),
        referral=referral,
        follow_ups=follow_ups,
    )


def _own_referral(session: Session, actor: Actor, sr_id: str) -> ReferralView:
    """A referral the actor's clinic made (404 when unknown or not visible, 403 when another's)."""
    referral = _load_referral(session, actor, sr_id)
    if referral is None:
        raise NotFound(f"ServiceRequest/{sr_id} is not known")
    if not actor.sees_everything and referral.requester_id != actor.organization_id:
        raise Forbidden("only the referring clinic decides on its referral")
    return referral


def visit_of_referral(session: Session, actor: Actor, sr_id: str) -> str:
    """The visit (Encounter id) that led to a referral the actor may see."""
    sr = service.read(session, actor, "ServiceRequest", sr_id).as_dict()
    encounter_id = _ref_id(sr.get("encounter"))
    if encounter_id is None:
        raise NotFound(f"ServiceRequest/{sr_id} names no visit")
    return encounter_id


def confirm(session: Session, actor: Actor, sr_id: str) -> None:
    """The clinician confirms the proposed referral: it is sent to the hospital."""
    _own_referral(session, actor, sr_id)
    referrals.confirm_referral(session, actor, sr_id)


def referral_targets(session: Session, actor: Actor) -> list[Organization]:
    """Hospitals a clinic may refer to: the county's own first, then those outside it."""
    district = (actor.district or "").strip()
    hospitals = session.scalars(
        select(Organization)
        .where(Organization.facility_level.in_(("county", "city", "province")), Organization.active.is_(True))
        .order_by(Organization.id)
    )
    return sorted(
        hospitals, key=lambda o: ((o.district or "").strip() != district, o.facility_level != "county", o.id)
    )


def down_referral_targets(session: Session, actor: Actor) -> list[Organization]:
    """Township clinics a hospital may down-refer to: the county's own first, then those outside it."""
    district = (actor.district or "").strip()
    clinics = session.scalars(
        select(Organization)
        .where(Organization.facility_level == "township", Organization.active.is_(True))
        .order_by(Organization.id)
    )
    return sorted(clinics, key=lambda o: ((o.district or "").strip() != district, o.id))


def override(session: Session, actor: Actor, sr_id: str, data: Mapping[str, Any]) -> None:
    """Override the proposal with a reason: no referral, or another hospital or urgency (a down-referral:
    another township clinic)."""
    referral = _own_referral(session, actor, sr_id)
    down = referral.kind == "down-referral"
    values: dict[str, Any] = (DownReferralOverrideSchema() if down else OverrideSchema()).load(data)
    target = values.get("target_id") or None
    targets = down_referral_targets(session, actor) if down else referral_targets(session, actor)
    if target is not None and target not in {o.id for o in targets}:
        if down:
            raise invalid("target_id", "Choose a clinic from the list.")
        raise invalid("target_id", "Choose a hospital from the list.")
    if (
        values["action"] == "change"
        and target in (None, referral.target_id)
        and values.get("priority")
        in (
            None,
            referral.priority,
        )
    ):
        if down:
            raise invalid("target_id", "Choose another clinic.")
        raise invalid("target_id", "Choose another hospital or urgency.")
    if referral.status not in ("draft", "active"):
        raise Conflict(f"ServiceRequest/{sr_id} is {referral.status}: it can no longer be changed")
    referrals.override_referral(
        session,
        actor,
        sr_id,
        reason=values["reason"],
        refer=values["action"] == "change",
        target_id=target,
        priority=values.get("priority"),
    )


# ------------------------------------------------------------------------------ worklists


def _rows_by_type(rows: Iterable[Stored]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row.res_type, {})[row.res_id] = row.as_dict()
    return out


def _referral_list(session: Session, actor: Actor, args: list[tuple[str, str]]) -> list[ReferralView]:
    found = _rows_by_type(
        _search(
            session,
            actor,
            "ServiceRequest",
            [
                *args,
                ("_sort", "-_lastUpdated"),
                ("_count", "200"),
                ("_include", "ServiceRequest:patient"),
                ("_revinclude", "Task:focus"),
            ],
        )
    )
    srs = found.get("ServiceRequest", {})
    tasks = _tasks_by_focus(found.get("Task", {}).values())
    patients = found.get("Patient", {})
    names = _org_names(
        session,
        [_ref_id(s.get("requester")) for s in srs.values()]
        + [_ref_id((s.get("performer") or [None])[0]) for s in srs.values()],
    )
    return [
        _referral_view(
            sr, tasks.get(sr_id), names, _patient_name(patients.get(_ref_id(sr.get("subject")) or ""))
        )
        for sr_id, sr in srs.items()
    ]


def clinic_referrals(session: Session, actor: Actor) -> tuple[list[ReferralView], list[ReferralView]]:
    """The clinic's up-referrals (newest first) and the down-referrals it received.

    A down-referral the hospital has only proposed (draft) is not the clinic's yet: it is received
    once the hospital confirms (sends) it.
    """
    org = f"Organization/{actor.organization_id}"
    up = _referral_list(session, actor, [("requester", org), ("code", "up-referral")])
    down = [
        r
        for r in _referral_list(session, actor, [("performer", org), ("code", "down-referral")])
        if r.status != "draft"
    ]
    return up, down


def _sort_inbox(items: list[ReferralView]) -> list[ReferralView]:
    """Most urgent first, then the oldest (visit times are to the second: ties go by the Task's creation)."""
    oldest = datetime.min.replace(tzinfo=SHANGHAI)
    return sorted(items, key=lambda r: (PRIORITY_RANK.get(r.priority, 3), r.authored or oldest,
                                        r.requested or oldest, r.id))


@dataclass(frozen=True)
class Admission:
    """A patient in hospital (an open inpatient Encounter)."""

    encounter_id: str
    patient_id: str
    patient_name: str
    start: datetime | None
    referral_id: str | None


@dataclass(frozen=True)
class Inbox:
    """A hospital's referral inbox: waiting (urgent first, oldest first), accepted, admitted, and the
    down-referrals proposed at its discharges that it has not confirmed or overridden yet."""

    waiting: list[ReferralView]
    accepted: list[ReferralView]
    admitted: list[Admission]
    to_confirm: list[ReferralView] = field(default_factory=list)  # its proposed down-referrals (draft)


def hospital_inbox(session: Session, actor: Actor) -> Inbox:
    """Up-referrals sent to the actor's hospital that are still open, its admitted patients, and the
    down-referrals it proposed at discharge and has yet to confirm or override."""
    org = f"Organization/{actor.organization_id}"
    referrals_in = [
        r
        for r in _referral_list(
            session, actor, [("performer", org), ("code", "up-referral"), ("status", "active")]
        )
        if r.target_id == actor.organization_id
    ]
    waiting = _sort_inbox([r for r in referrals_in if r.task_status in ("requested", "received")])
    accepted = _sort_inbox([r for r in referrals_in if r.task_status == "accepted"])
    found = _rows_by_type(
        _search(
            session,
            actor,
            "Encounter",
            [
                ("service-provider", org),
                ("class", "IMP"),
                ("status", "arrived,in-progress"),
                ("_include", "Encounter:patient"),
                ("_sort", "-_lastUpdated"),
                ("_count", "200"),
            ],
        )
    )
    patients = found.get("Patient", {})
    admitted = [
        Admission(
            encounter_id=eid,
            patient_id=_ref_id(enc.get("subject")) or "",
            patient_name=_patient_name(patients.get(_ref_id(enc.get("subject")) or "")),
            start=_instant((enc.get("period") or {}).get("start")),
            referral_id=next((_ref_id(b) for b in enc.get("basedOn") or []), None),
        )
        for eid, enc in found.get("Encounter", {}).items()
    ]
    to_confirm = _referral_list(
        session, actor, [("requester", org), ("code", "down-referral"), ("status", "draft")]
    )
    return Inbox(waiting, accepted, admitted, sorted(to_confirm, key=lambda r: (r.patient_name, r.id)))


@dataclass(frozen=True)
class IncomingReferral:
    """What the hospital sees of one referral: the referral, the clinic's decision and the visit."""

    referral: ReferralView
    decision: DecisionView | None
    admission_id: str | None


def _owned_task(session: Session, actor: Actor, task_id: str) -> dict[str, Any]:
    task = service.read(session, actor, "Task", task_id).as_dict()
    if not actor.sees_everything and _ref_id(task.get("owner")) != actor.organization_id:
        raise NotFound(f"Task/{task_id} is not known")
    return task


def incoming_referral(session: Session, actor: Actor, task_id: str) -> IncomingReferral:
    """One referral in the hospital's inbox, with the decision of the visit that led to it."""
    task = _owned_task(session, actor, task_id)
    sr_id = _ref_id(task.get("focus")) or ""
    sr = _raw(session, "ServiceRequest", sr_id)
    if sr is None:
        raise NotFound(f"Task/{task_id} is not known")
    patient = _raw(session, "Patient", _ref_id(sr.get("subject")) or "")
    referral = replace(
        _referral_of(session, sr),
        task_id=task_id,
        task_status=str(task.get("status")),
        task_reason=(task.get("statusReason") or {}).get("text"),
        patient_name=_patient_name(patient),
    )
    visit = _raw(session, "Encounter", referral.encounter_id) if referral.encounter_id else None
    decision = _decision_of(session, visit) if visit else None
    admissions = [
        str(e["id"])
        for e in _raw_referencing(session, "Encounter", "based-on", f"ServiceRequest/{sr_id}")
        if (e.get("class") or {}).get("code") == codes.ENCOUNTER_CLASS_INPATIENT
    ]
    return IncomingReferral(referral, decision, admissions[0] if admissions else None)


def accept(session: Session, actor: Actor, task_id: str) -> None:
    """The hospital accepts a referral."""
    _owned_task(session, actor, task_id)
    referrals.move_task(session, actor, task_id, "accepted")


def decline(session: Session, actor: Actor, task_id: str, data: Mapping[str, Any]) -> None:
    """The hospital declines a referral, with a reason (the clinic sees it and may re-target)."""
    values: dict[str, Any] = ReasonSchema().load(data)
    _owned_task(session, actor, task_id)
    referrals.move_task(session, actor, task_id, "rejected", values["reason"].strip())


def admit(session: Session, actor: Actor, task_id: str) -> str:
    """Admit the referred patient: an inpatient Encounter based on the referral; its Task goes in-progress."""
    task = _owned_task(session, actor, task_id)
    if task.get("status") not in ("requested", "received", "accepted"):
        raise Conflict(f"Task/{task_id} is {task.get('status')}: the patient cannot be admitted on it")
    patient_id = _ref_id(task.get("for")) or ""
    sr_id = _ref_id(task.get("focus")) or ""
    encounter = {
        "resourceType": "Encounter",
        "status": "in-progress",
        "class": {"system": codes.V3_ACT_CODE_SYSTEM, "code": codes.ENCOUNTER_CLASS_INPATIENT},
        "subject": _ref("Patient", patient_id),
        "serviceProvider": _ref("Organization", actor.organization_id or ""),
        "basedOn": [_ref("ServiceRequest", sr_id)],
        "period": {"start": _now().isoformat()},
    }
    return service.create(session, actor, "Encounter", encounter).stored.res_id


def admission(session: Session, actor: Actor, encounter_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """An open inpatient stay at the actor's hospital and its patient (404 otherwise)."""
    encounter = service.read(session, actor, "Encounter", encounter_id).as_dict()
    if (encounter.get("class") or {}).get("code") != codes.ENCOUNTER_CLASS_INPATIENT or (
        not actor.sees_everything and _ref_id(encounter.get("serviceProvider")) != actor.organization_id
    ):
        raise NotFound(f"Encounter/{encounter_id} is not an admission here")
    patient = service.read(session, actor, "Patient", _ref_id(encounter.get("subject")) or "").as_dict()
    return encounter, patient


def discharge(session: Session, actor: Actor, encounter_id: str, data: Mapping[str, Any]) -> None:
    """Discharge: diagnoses, disposition and charges; the down-referral rules decide (康复回家)."""
    values: dict[str, Any] = DischargeSchema().load(data)
    encounter, _patient = admission(session, actor, encounter_id)
    if encounter.get("status") not in ("arrived", "in-progress"):
        raise Conflict(f"Encounter/{encounter_id} is {encounter.get('status')}: it was discharged already")
    patient_id = _ref_id(encounter.get("subject")) or ""
    now = _now().isoformat()
    start = (encounter.get("period") or {}).get("start") or now
    diagnoses = list(dict.fromkeys(normalise_icd10(c) for c in values["diagnoses"]))
    try:
        condition_ids = [
            service.create(
                session, actor, "Condition", condition(patient_id, encounter_id, code, now)
            ).stored.res_id
            for code in diagnoses
        ]
        body = {k: v for k, v in encounter.items() if k != "meta"}
        body["status"] = "finished"
        body["period"] = {"start": start, "end": now}
        body["diagnosis"] = [
            {"condition": _ref("Condition", cid), "rank": rank}
            for rank, cid in enumerate(condition_ids, start=1)
        ]
        hospitalization = dict(body.get("hospitalization") or {})
        hospitalization["dischargeDisposition"] = {
            "coding": [{"system": codes.DISCHARGE_DISPOSITION_SYSTEM, "code": values["disposition"]}]
        }
        body["hospitalization"] = hospitalization
        if values.get("summary"):
            body["reasonCode"] = [*(body.get("reasonCode") or []), {"text": values["summary"].strip()}]
        if values["charges"]:
            claim_body = claim(
                kind=codes.CLAIM_TYPE_INSTITUTIONAL,
                patient_id=patient_id,
                provider_id=actor.organization_id or "",
                encounter_id=encounter_id,
                start=start,
                end=now,
                charges=values["charges"],
                coverage_id=_basic_coverage(session, patient_id, _now().date()),
                created=now,
                referral_id=next((_ref_id(b) for b in encounter.get("basedOn") or []), None),
            )
            service.create(session, actor, "Claim", claim_body, assigned_id=f"claim-{encounter_id}")
        service.update(session, actor, "Encounter", encounter_id, body)
    except Unprocessable as exc:
        raise _form_errors(exc) from None


# ------------------------------------------------------------------------------ follow-ups


@dataclass(frozen=True)
class FollowUp:
    """A patient down-referred to the clinic: the referral, its Task and its follow-up plan (if any)."""

    care_plan_id: str | None  # None: a down-referral without a plan (a HIS may POST its own)
    referral_id: str
    patient_id: str
    patient_name: str
    hospital_name: str
    next_due: date | None
    done: int
    total: int
    task_id: str | None
    task_status: str | None

    @property
    def overdue(self) -> bool:
        """The next follow-up is past its date."""
        return self.next_due is not None and self.next_due < datetime.now(SHANGHAI).date()

    @property
    def to_accept(self) -> bool:
        """The clinic has not accepted the patient yet (its Task waits for the clinic)."""
        return self.task_id is not None and self.task_status in ("requested", "received")


def follow_ups(session: Session, actor: Actor) -> list[FollowUp]:
    """The patients down-referred to the actor's clinic still in its hands, the next due first.

    One list for the overview and the follow-ups page, so their counts agree: every active
    down-referral to the clinic whose Task is still open (to accept, accepted, in follow-up) or whose
    follow-up plan (CarePlan) is still active, with that plan. A referral re-targeted to another
    clinic belongs to that clinic's list; one without a plan is listed to be accepted, without
    follow-ups to record.
    """
    org = f"Organization/{actor.organization_id}"
    found = _rows_by_type(
        _search(
            session,
            actor,
            "ServiceRequest",
            [
                ("performer", org),
                ("code", "down-referral"),
                ("status", "active"),
                ("_include", "ServiceRequest:patient"),
                ("_revinclude", "Task:focus"),
                ("_count", "500"),
            ],
        )
    )
    srs = found.get("ServiceRequest", {})
    patients = found.get("Patient", {})
    tasks = _tasks_by_focus(found.get("Task", {}).values())
    names = _org_names(session, [_ref_id(sr.get("requester")) for sr in srs.values()])
    out = []
    for sr_id, sr in srs.items():
        if _ref_id((sr.get("performer") or [None])[0]) != actor.organization_id:
            continue
        task = tasks.get(sr_id)
        task_open = task is not None and task.get("status") in OPEN_TASK_STATES
        plan = _raw(session, "CarePlan", f"cp-{sr_id}")
        plan_active = plan is not None and plan.get("status") == "active"
        if not (task_open or plan_active):
            continue
        activities = [a.get("detail") or {} for a in (plan or {}).get("activity") or []]
        scheduled = sorted(
            date.fromisoformat(d["scheduledPeriod"]["start"])
            for d in activities
            if d.get("status") == "scheduled"
        )
        patient_id = _ref_id(sr.get("subject")) or ""
        requester = _ref_id(sr.get("requester")) or ""
        out.append(
            FollowUp(
                care_plan_id=str(plan["id"]) if plan_active and plan is not None else None,
                referral_id=sr_id,
                patient_id=patient_id,
                patient_name=_patient_name(patients.get(patient_id)),
                hospital_name=names.get(requester, requester),
                next_due=scheduled[0] if plan_active and scheduled else None,
                done=sum(1 for d in activities if d.get("status") == "completed"),
                total=len(activities),
                task_id=str(task["id"]) if task else None,
                task_status=str(task.get("status")) if task else None,
            )
        )
    return sorted(out, key=lambda f: (f.next_due or date.max, f.patient_name, f.referral_id))


def follow_up_plan(session: Session, actor: Actor, care_plan_id: str) -> FollowUp:
    """One follow-up plan of the actor's clinic (404 otherwise)."""
    for item in follow_ups(session, actor):
        if item.care_plan_id == care_plan_id:
            return item
    raise NotFound(f"CarePlan/{care_plan_id} is not known")


def acknowledge_down_referral(session: Session, actor: Actor, task_id: str) -> None:
    """The clinic accepts a down-referred patient (its Task goes accepted)."""
    _owned_task(session, actor, task_id)
    referrals.move_task(session, actor, task_id, "accepted")


def record_follow_up_visit(session: Session, actor: Actor, care_plan_id: str, data: Mapping[str, Any]) -> int:
    """A follow-up visit at the clinic, based on the down-referral; returns how many remain scheduled."""
    values: dict[str, Any] = FollowUpSchema().load(data)
    plan = follow_up_plan(session, actor, care_plan_id)
    if plan.next_due is None:
        raise Conflict(f"CarePlan/{care_plan_id} has no scheduled follow-up left")
    now = _now()
    encounter = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": codes.V3_ACT_CODE_SYSTEM, "code": codes.ENCOUNTER_CLASS_AMBULATORY},
        "subject": _ref("Patient", plan.patient_id),
        "serviceProvider": _ref("Organization", actor.organization_id or ""),
        "basedOn": [_ref("ServiceRequest", plan.referral_id)],
        "period": {"start": (now - timedelta(minutes=10)).isoformat(), "end": now.isoformat()},
        "reasonCode": [{"text": values["notes"].strip()}],
    }
    service.create(session, actor, "Encounter", encounter)
    after = service.read(session, actor, "CarePlan", care_plan_id).as_dict()
    return sum(1 for a in after.get("activity") or [] if (a.get("detail") or {}).get("status") == "scheduled")


# ------------------------------------------------------------------------------ patient history


@dataclass(frozen=True)
class VisitLine:
    """A visit on the patient page."""

    encounter_id: str
    encounter_class: str
    status: str
    start: datetime | None
    provider_name: str


def patient_visits(session: Session, actor: Actor, patient_id: str) -> list[VisitLine]:
    """The patient's visits the actor may see, newest first."""
    encounters = [
        s.as_dict()
        for s in _search(
            session,
            actor,
            "Encounter",
            [("patient", f"Patient/{patient_id}"), ("_sort", "-_lastUpdated"), ("_count", "50")],
        )
    ]
    names = _org_names(session, [_ref_id(e.get("serviceProvider")) for e in encounters])
    return [
        VisitLine(
            str(e["id"]),
            str((e.get("class") or {}).get("code") or ""),
            str(e.get("status")),
            _instant((e.get("period") or {}).get("start")),
            names.get(_ref_id(e.get("serviceProvider")) or "", ""),
        )
        for e in encounters
    ]


def patient_referrals(session: Session, actor: Actor, patient_id: str) -> list[ReferralView]:
    """The patient's referrals the actor may see, newest first."""
    return _referral_list(session, actor, [("patient", f"Patient/{patient_id}")])


# ------------------------------------------------------------------------------ one-stop settlement

CLAIM_PREFIX = "claim-"  # the Claim of a web visit or stay is claim-{Encounter id}


@dataclass(frozen=True)
class ChargeLine:
    """One charge of a claim."""

    description: str
    charge_class: str
    amount: Decimal


@dataclass(frozen=True)
class LaterSettlement:
    """A later settlement of the same person and year, computed on the accumulators before a reversal.

    The ledger does not change it (DESIGN section 5): staff review it, and reverse and settle it again
    when its figures are wrong now.
    """

    settlement_id: str
    claim_id: str
    claim_type: str  # inpatient, outpatient
    provider_id: str
    provider_name: str
    discharge_date: date
    settled_at: datetime | None
    total: Decimal
    funds_pay: Decimal
    patient_pay: Decimal
    encounter_id: str | None  # the visit or stay its claim was recorded with on the web forms
    own: bool  # settled by the viewer's organisation: its settlement page can be opened


@dataclass(frozen=True)
class SettlementView:
    """A one-stop settlement (一站式结算) as the discharge desk or the clinic shows and prints it."""

    encounter_id: str
    claim_id: str
    status: str  # preview, active, reversed
    patient_name: str
    resident_id: str | None
    hospital_name: str
    admitted: datetime | None
    discharged: datetime | None
    items: list[ChargeLine]
    components: dict[str, Decimal]
    trace: list[dict[str, Any]]
    policy: str
    registered_poor: bool
    referred: bool
    settled_at: datetime | None = None
    settled_by: str | None = None
    reversed_at: datetime | None = None
    reversed_by: str | None = None
    reversal_reason: str | None = None
    claim_type: str = "inpatient"  # inpatient (a stay), outpatient (a visit)
    to_review: list[LaterSettlement] = field(default_factory=list)  # after the latest reversal

    def component(self, code: str) -> Decimal:
        """The amount of one settlement component (zero when absent)."""
        return self.components.get(code, Decimal("0.00"))

    @property
    def funds_pay(self) -> Decimal:
        """What the funds pay together (the patient pays the rest)."""
        return sum((self.component(c) for c in FUNDS), Decimal("0.00"))

    @property
    def outpatient(self) -> bool:
        """A clinic visit (no admission and discharge)."""
        return self.claim_type == "outpatient"


def _charges_of(session: Session, encounter_id: str) -> dict[str, Any] | None:
    """The charges (Claim) recorded with an encounter, or None."""
    return _raw(session, "Claim", f"{CLAIM_PREFIX}{encounter_id}")


def _finished_with_charges(
    session: Session, encounter_id: str, encounter: dict[str, Any], *, settle_when: str, recorded: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(encounter, its Claim) when the encounter is finished and charges were recorded with it.

    `settle_when` and `recorded` complete the refusals: "Encounter/... is in-progress: {settle_when}",
    "no charges were recorded {recorded} Encounter/...".
    """
    if encounter.get("status") != "finished":
        raise Conflict(f"Encounter/{encounter_id} is {encounter.get('status')}: {settle_when}")
    claim_body = _charges_of(session, encounter_id)
    if claim_body is None:
        raise NotFound(f"no charges were recorded {recorded} Encounter/{encounter_id}")
    return encounter, claim_body


def _discharge_claim(
    session: Session, actor: Actor, encounter_id: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The finished stay at the actor's hospital and its charges (the draft Claim made at discharge)."""
    encounter, _patient = admission(session, actor, encounter_id)
    return _finished_with_charges(
        session, encounter_id, encounter, settle_when="settle at discharge", recorded="at the discharge of"
    )


def has_charges(session: Session, actor: Actor, encounter_id: str) -> bool:
    """Whether charges (a Claim) were recorded at the discharge of a stay at the actor's hospital."""
    admission(session, actor, encounter_id)
    return _charges_of(session, encounter_id) is not None


def _clinic_visit(session: Session, actor: Actor, encounter_id: str) -> dict[str, Any]:
    """An outpatient visit at the actor's clinic (404 otherwise)."""
    encounter = service.read(session, actor, "Encounter", encounter_id).as_dict()
    if (encounter.get("class") or {}).get("code") != codes.ENCOUNTER_CLASS_AMBULATORY or (
        not actor.sees_everything and _ref_id(encounter.get("serviceProvider")) != actor.organization_id
    ):
        raise NotFound(f"Encounter/{encounter_id} is not a visit here")
    return encounter


def _visit_claim(session: Session, actor: Actor, encounter_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The finished visit at the actor's clinic and its charges (the Claim recorded with the visit)."""
    encounter = _clinic_visit(session, actor, encounter_id)
    return _finished_with_charges(
        session, encounter_id, encounter, settle_when="settle when the visit ends", recorded="with the visit"
    )


def visit_has_charges(session: Session, actor: Actor, encounter_id: str) -> bool:
    """Whether charges (a Claim) were recorded with an outpatient visit at the actor's clinic."""
    _clinic_visit(session, actor, encounter_id)
    return _charges_of(session, encounter_id) is not None


def _ledger_components(row: Settlement) -> dict[str, Decimal]:
    return {
        "total": row.total,
        "eligible": row.eligible,
        "basic-deductible": row.basic_deductible,
        "basic-insurance": row.basic_insurance,
        "critical-illness": row.critical_illness,
        "medical-assistance": row.medical_assistance,
        "poverty-safety-net": row.poverty_safety_net,
        "class-b-self-pay": row.class_b_self_pay,
        "out-of-list": row.out_of_list,
        "patient-pay": row.patient_pay,
    }


def _to_review(session: Session, actor: Actor, reversed_row: Settlement) -> list[LaterSettlement]:
    """Settlements of the same person and year made after `reversed_row` and before its reversal.

    They were computed on the accumulators that still held the reversed claim (the ledger's `later`
    list of that reversal, less those reversed since; the claim's own re-settlement is not among them).
    """
    if reversed_row.reversed_at is None:
        return []
    rows = list(
        session.scalars(
            settlement.later_in_year(reversed_row).where(
                Settlement.settled_at < reversed_row.reversed_at,
                Settlement.claim_id != reversed_row.claim_id,
            )
        )
    )
    names = _org_names(session, [r.provider_id for r in rows])
    out = []
    for r in rows:
        encounter_id = r.claim_id.removeprefix(CLAIM_PREFIX) if r.claim_id.startswith(CLAIM_PREFIX) else None
        out.append(
            LaterSettlement(
                settlement_id=r.id,
                claim_id=r.claim_id,
                claim_type=r.claim_type,
                provider_id=r.provider_id,
                provider_name=names.get(r.provider_id, r.provider_id),
                discharge_date=r.discharge_date,
                settled_at=r.settled_at.astimezone(SHANGHAI) if r.settled_at else None,
                total=Decimal(r.total).quantize(Decimal("0.01")),
                funds_pay=sum(
                    (Decimal(r.amount_of(fund)) for fund in FUNDS), Decimal("0.00")
                ).quantize(Decimal("0.01")),
                patient_pay=Decimal(r.patient_pay).quantize(Decimal("0.01")),
                encounter_id=encounter_id,
                own=r.provider_id == actor.organization_id,
            )
        )
    return out


def _settlement_view(
    session: Session,
    encounter: Mapping[str, Any],
    claim_body: Mapping[str, Any],
    row: Settlement,
    status: str,
    to_review: list[LaterSettlement] | None = None,
) -> SettlementView:
    patient = session.get(Patient, row.patient_id)
    hospital = session.get(Organization, row.provider_id)
    items = [
        ChargeLine(
            str((item.get("productOrService") or {}).get("text") or ""),
            next((c.get("code") for c in (item.get("category") or {}).get("coding") or []), "") or "",
            Decimal(str((item.get("net") or {}).get("value", "0"))).quantize(Decimal("0.01")),
        )
        for item in claim_body.get("item") or []
    ]
    period = encounter.get("period") or {}
    return SettlementView(
        encounter_id=str(encounter["id"]),
        claim_id=str(claim_body.get("id") or f"{CLAIM_PREFIX}{encounter['id']}"),
        status=status,
        patient_name=patient.name if patient else "",
        resident_id=patient.resident_id if patient else None,
        hospital_name=hospital.name if hospital else row.provider_id,
        admitted=_instant(period.get("start")),
        discharged=_instant(period.get("end")),
        items=items,
        components={k: Decimal(v).quantize(Decimal("0.01")) for k, v in _ledger_components(row).items()},
        trace=[dict(step) for step in row.trace or []],
        policy=f"{row.policy_id} {row.policy_version}",
        registered_poor=row.registered_poor,
        referred=row.referred,
        settled_at=row.settled_at.astimezone(SHANGHAI) if row.settled_at and status != "preview" else None,
        settled_by=_who(session, row.settled_by),
        reversed_at=row.reversed_at.astimezone(SHANGHAI) if row.reversed_at else None,
        reversed_by=_who(session, row.reversed_by),
        reversal_reason=row.reversal_reason,
        claim_type=row.claim_type,
        to_review=list(to_review or []),
    )


def _who(session: Session, name: str | None) -> str | None:
    """How a settlement's clerk is shown and printed: the display name of the web user (or API
    client) the ledger names by its login, or the login itself when neither is known any more."""
    if not name:
        return name
    shown = session.scalar(select(User.display_name).where(User.username == name))
    if shown is None:
        shown = session.scalar(select(ApiClient.name).where(ApiClient.client_id == name))
    return shown or name


def _submission(claim_body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in claim_body.items() if k != "meta"} | {"status": "active"}


def _claim_id(encounter: Mapping[str, Any], claim_body: Mapping[str, Any]) -> str:
    return str(claim_body.get("id") or f"{CLAIM_PREFIX}{encounter['id']}")


def _current(
    session: Session, actor: Actor, encounter: Mapping[str, Any], claim_body: Mapping[str, Any]
) -> SettlementView | None:
    """The claim's settlement (the active one, else the latest reversed), or None; with what to review
    after the claim's latest reversal."""
    rows = list(
        session.scalars(
            select(Settlement)
            .where(Settlement.claim_id == _claim_id(encounter, claim_body))
            .order_by(Settlement.settled_at.desc())
        )
    )
    row = next((r for r in rows if r.status == "active"), rows[0] if rows else None)
    if row is None:
        return None
    reversals = sorted(
        (r for r in rows if r.status == "reversed" and r.reversed_at is not None),
        key=lambda r: r.sequence,
    )
    latest_reversal = reversals[-1] if reversals else None
    review = _to_review(session, actor, latest_reversal) if latest_reversal is not None else []
    return _settlement_view(session, encounter, claim_body, row, row.status, review)


def _preview(
    session: Session, actor: Actor, encounter: Mapping[str, Any], claim_body: Mapping[str, Any]
) -> SettlementView:
    """The real calculation, rolled back (or the active settlement when there is one)."""
    current = _current(session, actor, encounter, claim_body)
    if current is not None and current.status == "active":
        return current
    savepoint = session.begin_nested()
    try:
        result = settlement.submit_claim(session, actor, _submission(claim_body))
        row = session.get(Settlement, result.settlement_id)
        assert row is not None
        view = _settlement_view(session, encounter, claim_body, row, "preview")
    finally:
        savepoint.rollback()
    return view


def _settle(
    session: Session, actor: Actor, encounter: Mapping[str, Any], claim_body: Mapping[str, Any]
) -> SettlementView:
    """Settle once for every payer; submitting the same claim again returns the same settlement."""
    result = settlement.submit_claim(session, actor, _submission(claim_body))
    row = session.get(Settlement, result.settlement_id)
    assert row is not None
    return _settlement_view(session, encounter, claim_body, row, row.status)


def _reverse(
    session: Session, actor: Actor, encounter: Mapping[str, Any], claim_body: Mapping[str, Any],
    data: Mapping[str, Any],
) -> list[LaterSettlement]:
    values: dict[str, Any] = ReasonSchema().load(data)
    claim_id = _claim_id(encounter, claim_body)
    result = settlement.reverse_settlement(session, actor, claim_id, values["reason"].strip())
    row = session.get(Settlement, result.settlement_id)
    assert row is not None
    return _to_review(session, actor, row)


# At the discharge desk of the county hospital (inpatient).


def settlement_preview(session: Session, actor: Actor, encounter_id: str) -> SettlementView:
    """What one-stop settlement would give, with its trace: the real calculation, then rolled back."""
    encounter, claim_body = _discharge_claim(session, actor, encounter_id)
    return _preview(session, actor, encounter, claim_body)


def settle_at_discharge(session: Session, actor: Actor, encounter_id: str) -> SettlementView:
    """Settle the stay once for every payer (一站式结算): the patient pays only their share."""
    encounter, claim_body = _discharge_claim(session, actor, encounter_id)
    return _settle(session, actor, encounter, claim_body)


def settlement_at_desk(session: Session, actor: Actor, encounter_id: str) -> SettlementView | None:
    """The stay's settlement (the active one, else the latest reversed), or None."""
    encounter, claim_body = _discharge_claim(session, actor, encounter_id)
    return _current(session, actor, encounter, claim_body)


def reverse_at_desk(
    session: Session, actor: Actor, encounter_id: str, data: Mapping[str, Any]
) -> list[LaterSettlement]:
    """Reverse the stay's settlement with a reason (冲销); the patient can then be settled again.

    Returns the later settlements of the person and year that were computed on the old accumulators.
    """
    encounter, claim_body = _discharge_claim(session, actor, encounter_id)
    return _reverse(session, actor, encounter, claim_body, data)


# At the township or village clinic (outpatient).


def settle_at_end_of_visit(session: Session, actor: Actor, encounter_id: str) -> SettlementView | None:
    """Settle a clinic visit's charges as the visit ends: every payer at once, in the visit's unit of work.

    When: DESIGN section 5 settles "at discharge (inpatient) or at the end of a visit (outpatient)".
    The first-visit form records the whole visit at once and stores its Encounter `finished`: that
    is the end of the outpatient visit, so it is settled right then, one step with saving it (the
    rules' decision comes in the same step). A patient treated here pays their share before leaving;
    one referred up pays the clinic's charges too, because the referral changes nothing in an
    outpatient settlement (no deductible, and the claim of the visit that makes a referral is not
    itself referred; the hospital's stay is settled at its discharge). A claim the settlement
    refuses (no active basic insurance on the visit's date, no policy for the patient's region)
    leaves the visit saved and unsettled: the visit's settlement page says why and settles it once
    that is put right. Submitting again is idempotent; a reversal works as at the discharge desk.
    Returns the settlement, or None when it was refused.
    """
    encounter, claim_body = _visit_claim(session, actor, encounter_id)
    return _settle_refusable(session, actor, encounter, claim_body)


def _settle_refusable(
    session: Session, actor: Actor, encounter: Mapping[str, Any], claim_body: Mapping[str, Any]
) -> SettlementView | None:
    """`_settle` in a savepoint: a refused claim (422) leaves everything else of the unit of work."""
    try:
        with session.begin_nested():
            return _settle(session, actor, encounter, claim_body)
    except Unprocessable:
        return None


def visit_settlement(session: Session, actor: Actor, encounter_id: str) -> SettlementView | None:
    """The clinic visit's settlement (the active one, else the latest reversed), or None."""
    encounter, claim_body = _visit_claim(session, actor, encounter_id)
    return _current(session, actor, encounter, claim_body)


def visit_settlement_preview(session: Session, actor: Actor, encounter_id: str) -> SettlementView:
    """What settling the clinic visit would give (the real calculation, rolled back)."""
    encounter, claim_body = _visit_claim(session, actor, encounter_id)
    return _preview(session, actor, encounter, claim_body)


def settle_visit(session: Session, actor: Actor, encounter_id: str) -> SettlementView:
    """Settle the clinic visit (again after a reversal); idempotent like every submission."""
    encounter, claim_body = _visit_claim(session, actor, encounter_id)
    return _settle(session, actor, encounter, claim_body)


def reverse_visit_settlement(
    session: Session, actor: Actor, encounter_id: str, data: Mapping[str, Any]
) -> list[LaterSettlement]:
    """Reverse the clinic visit's settlement with a reason (冲销); returns the settlements to review."""
    encounter, claim_body = _visit_claim(session, actor, encounter_id)
    return _reverse(session, actor, encounter, claim_body, data)
