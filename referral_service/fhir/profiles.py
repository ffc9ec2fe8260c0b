"""Profile checks of plain-dict resources against `fhir_profiles/`; pure (no Flask, no DB)."""

# The resource arrives already validated structurally by fhir.resources. We add what that does
# not check: cardinality and fixed values of our profiles, our code systems, FHIR's required
# status codes, the resident identity number, plausible vital signs and organisation levels,
# and return every problem at once. Invariants are declared in the JSON (key, severity, human
# text) and implemented here by key; loading fails when a key has no implementation.

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from referral_service.domain import resident_id
from referral_service.fhir import codes

JsonDict = dict[str, Any]
Severity = Literal["error", "warning"]
IssueCode = Literal[
    "value", "required", "code-invalid", "business-rule", "invariant", "structure"
]

PROFILES_DIR: Final = Path(__file__).resolve().parents[2] / "fhir_profiles"
CONFORMANCE_TYPES: Final = frozenset({"CodeSystem", "ValueSet", "StructureDefinition"})


@dataclass(frozen=True, slots=True)
class ProfileIssue:
    """One problem: severity 'error' rejects the resource (422), 'warning' is reported only."""

    severity: Severity
    code: IssueCode
    expression: str
    message: str


class ProfileLoadError(Exception):
    """A file in fhir_profiles/ is missing, malformed or inconsistent."""


def has_errors(issues: Iterable[ProfileIssue]) -> bool:
    """Return True when any issue has severity 'error'."""
    return any(issue.severity == "error" for issue in issues)


# --- FHIR R4 (4.0.1) required bindings that fhir.resources does not check ------------------

_ADMINISTRATIVE_GENDER = frozenset({"male", "female", "other", "unknown"})
_FM_STATUS = frozenset({"active", "cancelled", "draft", "entered-in-error"})
_REQUEST_STATUS = frozenset(
    {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}
)
_REQUEST_PRIORITY = frozenset(codes.RequestPriority)
_REMITTANCE_OUTCOME = frozenset({"queued", "complete", "error", "partial"})
_CLAIM_USE = frozenset({"claim", "preauthorization", "predetermination"})
_ENCOUNTER_STATUS = frozenset(
    {
        "planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled",
        "entered-in-error", "unknown",
    }
)
_EPISODE_STATUS = frozenset(
    {"planned", "waitlist", "active", "onhold", "finished", "cancelled", "entered-in-error"}
)
_ORDER_INTENTS = frozenset(
    {"original-order", "reflex-order", "filler-order", "instance-order", "order"}
)

# element path -> (value set name, codes) for `code` elements
_REQUIRED_CODES: Final[Mapping[str, tuple[str, frozenset[str]]]] = {
    "Patient.gender": ("AdministrativeGender", _ADMINISTRATIVE_GENDER),
    "Patient.contact.gender": ("AdministrativeGender", _ADMINISTRATIVE_GENDER),
    "Patient.link.type": (
        "LinkType", frozenset({"replaced-by", "replaces", "refer", "seealso"})
    ),
    "Practitioner.gender": ("AdministrativeGender", _ADMINISTRATIVE_GENDER),
    "Encounter.status": ("EncounterStatus", _ENCOUNTER_STATUS),
    "Encounter.statusHistory.status": ("EncounterStatus", _ENCOUNTER_STATUS),
    "Encounter.location.status": (
        "EncounterLocationStatus", frozenset({"planned", "active", "reserved", "completed"})
    ),
    "Observation.status": (
        "ObservationStatus",
        frozenset(
            {
                "registered", "preliminary", "final", "amended", "corrected", "cancelled",
                "entered-in-error", "unknown",
            }
        ),
    ),
    "Coverage.status": ("FinancialResourceStatusCodes", _FM_STATUS),
    "ServiceRequest.status": ("RequestStatus", _REQUEST_STATUS),
    "ServiceRequest.intent": (
        "RequestIntent", _ORDER_INTENTS | {"proposal", "plan", "directive", "option"}
    ),
    "ServiceRequest.priority": ("RequestPriority", _REQUEST_PRIORITY),
    "Task.status": (
        "TaskStatus",
        frozenset(
            {
                "draft", "requested", "received", "accepted", "rejected", "ready",
                "cancelled", "in-progress", "on-hold", "failed", "completed",
                "entered-in-error",
            }
        ),
    ),
    "Task.intent": ("TaskIntent", _ORDER_INTENTS | {"unknown", "proposal", "plan", "option"}),
    "Task.priority": ("RequestPriority", _REQUEST_PRIORITY),
    "CarePlan.status": ("RequestStatus", _REQUEST_STATUS),
    "CarePlan.intent": ("CarePlanIntent", frozenset({"proposal", "plan", "order", "option"})),
    "CarePlan.activity.detail.status": (
        "CarePlanActivityStatus",
        frozenset(
            {
                "not-started", "scheduled", "in-progress", "on-hold", "completed",
                "cancelled", "stopped", "unknown", "entered-in-error",
            }
        ),
    ),
    "Claim.status": ("FinancialResourceStatusCodes", _FM_STATUS),
    "Claim.use": ("Use", _CLAIM_USE),
    "ClaimResponse.status": ("FinancialResourceStatusCodes", _FM_STATUS),
    "ClaimResponse.use": ("Use", _CLAIM_USE),
    "ClaimResponse.outcome": ("RemittanceOutcome", _REMITTANCE_OUTCOME),
    "ExplanationOfBenefit.status": ("ExplanationOfBenefitStatus", _FM_STATUS),
    "ExplanationOfBenefit.use": ("Use", _CLAIM_USE),
    "ExplanationOfBenefit.outcome": ("RemittanceOutcome", _REMITTANCE_OUTCOME),
    "PaymentReconciliation.status": ("FinancialResourceStatusCodes", _FM_STATUS),
    "PaymentReconciliation.outcome": ("RemittanceOutcome", _REMITTANCE_OUTCOME),
    "EpisodeOfCare.status": ("EpisodeOfCareStatus", _EPISODE_STATUS),
    "EpisodeOfCare.statusHistory.status": ("EpisodeOfCareStatus", _EPISODE_STATUS),
    "Group.type": (
        "GroupType",
        frozenset({"person", "animal", "practitioner", "device", "medication", "substance"}),
    ),
    "GuidanceResponse.status": (
        "GuidanceResponseStatus",
        frozenset(
            {
                "success", "data-requested", "data-required", "in-progress", "failure",
                "entered-in-error",
            }
        ),
    ),
    "Flag.status": ("FlagStatus", frozenset({"active", "inactive", "entered-in-error"})),
    "Bundle.type": (
        "BundleType",
        frozenset(
            {
                "document", "message", "transaction", "transaction-response", "batch",
                "batch-response", "history", "searchset", "collection",
            }
        ),
    ),
    "Bundle.entry.request.method": (
        "HTTPVerb", frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"})
    ),
}

_ACT_ENCOUNTER_CODES = frozenset(
    {"AMB", "EMER", "FLD", "HH", "IMP", "ACUTE", "NONAC", "OBSENC", "PRENC", "SS", "VR"}
)
# element path -> (value set name, system, codes) for Coding elements; another system is left
# to the profile's fixed system (Encounter.class.system).
_REQUIRED_CODINGS: Final[Mapping[str, tuple[str, str, frozenset[str]]]] = {
    "Encounter.class": ("ActEncounterCode", codes.V3_ACT_CODE_SYSTEM, _ACT_ENCOUNTER_CODES),
    "Encounter.classHistory.class": (
        "ActEncounterCode", codes.V3_ACT_CODE_SYSTEM, _ACT_ENCOUNTER_CODES
    ),
}

_CLINICAL_STATUS = frozenset(
    {"active", "recurrence", "relapse", "inactive", "remission", "resolved"}
)
_VERIFICATION_STATUS = frozenset(
    {"unconfirmed", "provisional", "differential", "confirmed", "refuted", "entered-in-error"}
)
# element path -> (value set name, system, codes) for CodeableConcept elements
_REQUIRED_CONCEPTS: Final[Mapping[str, tuple[str, str, frozenset[str]]]] = {
    "Condition.clinicalStatus": (
        "ConditionClinicalStatusCodes", codes.CONDITION_CLINICAL_SYSTEM, _CLINICAL_STATUS
    ),
    "Condition.verificationStatus": (
        "ConditionVerificationStatus",
        codes.CONDITION_VER_STATUS_SYSTEM,
        _VERIFICATION_STATUS,
    ),
}

# Codes of HL7 code systems that our rules read; a coding in one of these systems must exist.
_KNOWN_EXTERNAL_CODES: Final[Mapping[str, frozenset[str]]] = {
    codes.DISCHARGE_DISPOSITION_SYSTEM: frozenset(
        {
            "home", "alt-home", "other-hcf", "hosp", "long", "aadvice", "exp", "psy",
            "rehab", "snf", "oth",
        }
    ),
    codes.CLAIM_TYPE_SYSTEM: frozenset(
        {"institutional", "oral", "pharmacy", "professional", "vision"}
    ),
}

# An ICD-10 code: a letter, two digits, optionally a dot and up to eight letters or digits (WHO's
# subcategories and the longer codes of China's national clinical edition, e.g. J18.900x001), and
# a dagger or asterisk mark of the dual classification. Case and the dot are not checked: the rules
# ignore both when they compare codes (DESIGN section 4), so I639 and i63.9 are I63.9.
_ICD10_CODE = re.compile(r"[A-Za-z][0-9]{2}(\.?[0-9A-Za-z]{1,8})?[+*\u2020]?")


# --- small helpers on JSON values -----------------------------------------------------------


def _as_decimal(value: Any) -> Decimal | None:
    """Return a JSON number as Decimal, or None when it is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _as_date(value: Any) -> date | None:
    """Return the calendar date of a full FHIR date or dateTime, else None."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str) and re.match(r"^\d{4}-\d{2}-\d{2}", value):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None


def _value_key(node: Mapping[str, Any]) -> str | None:
    """Return the key of the value[x] choice present in `node`, if any."""
    return next((key for key in node if _is_choice_of("value", key)), None)


def _is_choice_of(stem: str, key: str) -> bool:
    """Return True when `key` is a typed variant of the choice element `stem`[x]."""
    return key.startswith(stem) and len(key) > len(stem) and key[len(stem)].isupper()


def _codings(concept: Any, expr: str) -> Iterator[tuple[str, JsonDict]]:
    """Yield (expression, coding) for each coding of a CodeableConcept."""
    if not isinstance(concept, dict):
        return
    for index, coding in enumerate(concept.get("coding") or []):
        if isinstance(coding, dict):
            yield f"{expr}.coding[{index}]", coding


def _has_code(concept: Any, system: str, code: str) -> bool:
    """Return True when the CodeableConcept has a coding system|code."""
    return any(
        coding.get("system") == system and coding.get("code") == code
        for _, coding in _codings(concept, "")
    )


# --- compiled StructureDefinitions ------------------------------------------------------------

Matcher = Callable[[Any], bool]


@dataclass(frozen=True, slots=True)
class _Step:
    """One step of an element id: an element name and, within a slicing, a slice."""

    name: str
    slice_name: str | None
    matcher: Matcher | None


@dataclass(frozen=True, slots=True)
class _Constraint:
    """An invariant declared in a StructureDefinition and implemented below."""

    key: str
    severity: Severity
    human: str


@dataclass(frozen=True, slots=True)
class _ElementRule:
    """Cardinality, fixed value and choice types of one differential element."""

    element_id: str
    label: str
    steps: tuple[_Step, ...]
    min: int
    max: int | None
    fixed: tuple[str, Any] | None
    choice_types: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Definition:
    """A StructureDefinition compiled for checking."""

    url: str
    type: str
    contexts: tuple[str, ...]
    rules: tuple[_ElementRule, ...]
    constraints: tuple[_Constraint, ...]


def _select(node: Any, steps: Iterable[_Step], expr: str) -> list[tuple[str, Any]]:
    """Return (expression, value) of every instance reached from `node` along `steps`."""
    current: list[tuple[str, Any]] = [(expr, node)]
    for step in steps:
        reached: list[tuple[str, Any]] = []
        for parent_expr, parent in current:
            reached.extend(_children(parent, step, parent_expr))
        current = reached
    return current


def _children(parent: Any, step: _Step, expr: str) -> list[tuple[str, Any]]:
    """Return the instances of one step below `parent`."""
    if not isinstance(parent, dict):
        return []
    if step.name.endswith("[x]"):
        stem = step.name[:-3]
        keys = [key for key in parent if _is_choice_of(stem, key)]
    else:
        keys = [step.name] if step.name in parent else []
    found: list[tuple[str, Any]] = []
    for key in keys:
        value = parent[key]
        if isinstance(value, list):
            found.extend((f"{expr}.{key}[{i}]", item) for i, item in enumerate(value))
        elif value is not None:
            found.append((f"{expr}.{key}", value))
    if step.matcher is not None:
        found = [(e, v) for e, v in found if step.matcher(v)]
    return found


def _slice_matcher(
    slicing: JsonDict, slice_element: JsonDict, by_id: Mapping[str, JsonDict], where: str
) -> Matcher:
    """Build the test for membership of a slice from its slicing discriminator."""
    discriminators = slicing.get("discriminator") or []
    if len(discriminators) != 1:
        raise ProfileLoadError(f"{where}: only single discriminators are supported")
    path = discriminators[0].get("path")
    element_id = slice_element["id"]
    if path == "system":
        system_element = by_id.get(f"{element_id}.system", {})
        value = system_element.get("fixedUri") or system_element.get("patternUri")
        if value:
            return lambda item: isinstance(item, dict) and item.get("system") == value
    elif path == "url":
        profiles = [p for t in slice_element.get("type", []) for p in t.get("profile", [])]
        # A complex extension's parts are sliced by their fixed (relative) url.
        fixed = by_id.get(f"{element_id}.url", {}).get("fixedUri")
        if profiles or fixed:
            url = profiles[0] if profiles else fixed
            return lambda item: isinstance(item, dict) and item.get("url") == url
    elif path == "coding.system":
        pattern = slice_element.get("patternCodeableConcept", {}).get("coding") or [{}]
        system = pattern[0].get("system")
        if system:
            return lambda item: any(
                coding.get("system") == system for _, coding in _codings(item, "")
            )
    raise ProfileLoadError(f"{where}: cannot read the discriminator {path!r} of {element_id}")


def _compile(sd: JsonDict, source: str) -> _Definition:
    """Compile the differential of a StructureDefinition."""
    elements: list[JsonDict] = sd.get("differential", {}).get("element", [])
    by_id = {element["id"]: element for element in elements}
    root = sd["type"]
    rules: list[_ElementRule] = []
    constraints: list[_Constraint] = []
    for element in elements:
        element_id = element["id"]
        where = f"{source} ({element_id})"
        if element.get("constraint"):
            if element_id != root:
                raise ProfileLoadError(f"{where}: constraints are supported on the root only")
            constraints.extend(
                _Constraint(c["key"], c["severity"], c["human"]) for c in element["constraint"]
            )
        if element_id == root:
            continue
        steps: list[_Step] = []
        prefix = root
        for segment in element_id.split(".")[1:]:
            name, _, slice_name = segment.partition(":")
            matcher = None
            if slice_name:
                slicing = by_id.get(f"{prefix}.{name}", {}).get("slicing")
                if slicing is None:
                    raise ProfileLoadError(f"{where}: slice without slicing")
                matcher = _slice_matcher(slicing, by_id[f"{prefix}.{segment}"], by_id, where)
            steps.append(_Step(name, slice_name or None, matcher))
            prefix = f"{prefix}.{segment}"
        fixed = next(
            (
                (key, value)
                for key, value in element.items()
                if (key.startswith("fixed") or key.startswith("pattern"))
                and not isinstance(value, dict | list)
            ),
            None,
        )
        choice_types: tuple[str, ...] = ()
        if element_id.endswith("[x]") and element.get("type"):
            choice_types = tuple(t["code"][:1].upper() + t["code"][1:] for t in element["type"])
        max_text = element.get("max", "*")
        rules.append(
            _ElementRule(
                element_id=element_id,
                label=element.get("short") or element_id.rsplit(".", 1)[-1],
                steps=tuple(steps),
                min=int(element.get("min", 0)),
                max=None if max_text == "*" else int(max_text),
                fixed=fixed,
                choice_types=choice_types,
            )
        )
    contexts = tuple(
        c["expression"] for c in sd.get("context", []) if c.get("type") == "element"
    )
    return _Definition(sd["url"], root, contexts, tuple(rules), tuple(constraints))


# --- invariants of our profiles, keyed as in fhir_profiles/ ----------------------------------

Finding = tuple[IssueCode, str, str]
Checker = Callable[[JsonDict, str], Iterator[Finding]]
_CHECKERS: dict[str, Checker] = {}


def _checker(key: str) -> Callable[[Checker], Checker]:
    """Register the implementation of the invariant `key`."""

    def register(function: Checker) -> Checker:
        _CHECKERS[key] = function
        return function

    return register


def constraint_keys() -> frozenset[str]:
    """Return the invariant keys this module implements."""
    return frozenset(_CHECKERS)


_PARTIAL_DATE = re.compile(r"^(\d{4})(?:-(\d{2}))?\Z", re.ASCII)


@_checker("rs-pat-1")
def _resident_id_valid(patient: JsonDict, expr: str) -> Iterator[Finding]:
    """Check each resident identity number and its agreement with birthDate and gender."""
    birth_date = _as_date(patient.get("birthDate"))
    partial = _PARTIAL_DATE.match(str(patient.get("birthDate") or ""))
    gender = patient.get("gender")
    for index, identifier in enumerate(patient.get("identifier") or []):
        if not isinstance(identifier, dict) or identifier.get("system") != (
            codes.RESIDENT_ID_SYSTEM
        ):
            continue
        value = identifier.get("value")
        if value is None:
            continue  # the slice's required value is reported by cardinality
        where = f"{expr}.identifier[{index}].value"
        problems = resident_id.validate(
            value, birth_date, gender if isinstance(gender, str) else None
        )
        for problem in problems:
            kind: IssueCode = "business-rule" if problem.code.endswith("mismatch") else "value"
            yield kind, where, problem.en
        if partial and not problems:
            encoded = resident_id.normalise(value)[6:14]
            given = "".join(part for part in partial.groups() if part)
            if not encoded.startswith(given):
                yield (
                    "business-rule",
                    where,
                    f"The birth date in the resident identity number ({encoded}) does not "
                    f"fall in birthDate ({patient['birthDate']}).",
                )


_SHANGHAI = ZoneInfo("Asia/Shanghai")


@_checker("rs-pat-4")
def _birth_date_not_in_the_future(patient: JsonDict, expr: str) -> Iterator[Finding]:
    """Refuse a birthDate after today in Asia/Shanghai, as the web registration form does; a partial
    date (YYYY, YYYY-MM) is refused when it starts after today."""
    value = patient.get("birthDate")
    if not isinstance(value, str):
        return
    partial = _PARTIAL_DATE.match(value)
    if partial:
        year, month = partial.groups()
        born = _as_date(f"{year}-{month or '01'}-01")
    else:
        born = _as_date(value)
    today = datetime.now(_SHANGHAI).date()
    if born is not None and born > today:
        yield (
            "business-rule",
            f"{expr}.birthDate",
            f"birthDate ({value}) is after today ({today.isoformat()}, Asia/Shanghai).",
        )


def _district_findings(resource: JsonDict, expr: str, what: str) -> Iterator[Finding]:
    """Report a missing or blank address[0].district."""
    addresses = resource.get("address") or []
    if not addresses or not isinstance(addresses[0], dict):
        return
    district = addresses[0].get("district")
    if not isinstance(district, str) or not district.strip():
        yield (
            "required",
            f"{expr}.address[0].district",
            f"address[0].district ({what}) is required.",
        )


@_checker("rs-pat-3")
def _patient_district(patient: JsonDict, expr: str) -> Iterator[Finding]:
    """Warn when the patient's insured region is unknown."""
    if not patient.get("address"):
        yield (
            "required",
            f"{expr}.address",
            "An address with district (the insured region) is needed for settlement.",
        )
        return
    yield from _district_findings(patient, expr, "the insured region, needed for settlement")


def _type_codings(organization: JsonDict, expr: str, system: str) -> list[str]:
    """Return the expressions of the Organization.type codings in `system`."""
    return [
        coding_expr
        for index, concept in enumerate(organization.get("type") or [])
        for coding_expr, coding in _codings(concept, f"{expr}.type[{index}]")
        if coding.get("system") == system
    ]


@_checker("rs-org-1")
def _organization_level_or_kind(organization: JsonDict, expr: str) -> Iterator[Finding]:
    """Check that an organisation has one facility level or one organisation kind."""
    levels = _type_codings(organization, expr, codes.FACILITY_LEVEL_SYSTEM)
    kinds = _type_codings(organization, expr, codes.ORGANIZATION_KIND_SYSTEM)
    if not levels and not kinds:
        yield (
            "required",
            f"{expr}.type",
            "Organization.type needs a facility-level coding "
            f"({codes.FACILITY_LEVEL_SYSTEM}) for a health facility, or an organization-kind "
            f"coding ({codes.ORGANIZATION_KIND_SYSTEM}) for another organisation.",
        )
    if levels and kinds:
        yield (
            "business-rule",
            kinds[0],
            "An organisation with a facility level is a health facility and cannot also have "
            "an organization kind.",
        )
    if len(levels) > 1:
        yield (
            "business-rule",
            levels[1],
            f"A health facility has exactly one facility-level coding, found {len(levels)}.",
        )
    if len(kinds) > 1:
        yield (
            "business-rule",
            kinds[1],
            f"An organisation has exactly one organization-kind coding, found {len(kinds)}.",
        )


@_checker("rs-org-2")
def _capability_needs_level(organization: JsonDict, expr: str) -> Iterator[Finding]:
    """Check that only health facilities carry capabilities."""
    if _type_codings(organization, expr, codes.FACILITY_LEVEL_SYSTEM):
        return
    for capability in _type_codings(organization, expr, codes.CAPABILITY_SYSTEM):
        yield (
            "business-rule",
            capability,
            "A capability coding is allowed only on a health facility (with a facility level).",
        )


@_checker("rs-org-3")
def _organization_district(organization: JsonDict, expr: str) -> Iterator[Finding]:
    """Check that the organisation's county is known."""
    yield from _district_findings(organization, expr, "the county")


@_checker("rs-pov-1")
def _poverty_period(extension: JsonDict, expr: str) -> Iterator[Finding]:
    """Check that a poverty-registration period has a start not after its end."""
    period = extension.get("valuePeriod")
    if not isinstance(period, dict):
        return
    if not period.get("start"):
        yield "required", f"{expr}.valuePeriod.start", "A poverty registration needs a start date."
        return
    start, end = _as_date(period.get("start")), _as_date(period.get("end"))
    if start and end and start > end:
        yield (
            "value",
            f"{expr}.valuePeriod",
            f"The poverty registration starts ({start}) after it ends ({end}).",
        )


@_checker("rs-inc-1")
def _household_income(extension: JsonDict, expr: str) -> Iterator[Finding]:
    """Check that the household income is a non-negative amount of CNY."""
    money = extension.get("valueMoney")
    if not isinstance(money, dict):
        return
    if money.get("currency") != codes.CURRENCY:
        yield (
            "value",
            f"{expr}.valueMoney.currency",
            f"The household annual income must be in {codes.CURRENCY}, "
            f"not {money.get('currency')!r}.",
        )
    amount = _as_decimal(money.get("value"))
    if amount is None:
        yield "required", f"{expr}.valueMoney.value", "The household annual income needs a value."
    elif amount < 0:
        yield "value", f"{expr}.valueMoney.value", "The household annual income cannot be negative."


@dataclass(frozen=True, slots=True)
class _Vital:
    """Expected UCUM unit and plausible range of a vital sign."""

    name: str
    unit: str
    low: Decimal
    high: Decimal | None


_VITALS: Final[Mapping[str, _Vital]] = {
    codes.LOINC_RESPIRATORY_RATE: _Vital(
        "Respiration rate", codes.UCUM_PER_MINUTE, Decimal(0), None
    ),
    codes.LOINC_HEART_RATE: _Vital("Heart rate", codes.UCUM_PER_MINUTE, Decimal(0), None),
    codes.LOINC_OXYGEN_SATURATION: _Vital("SpO2", codes.UCUM_PERCENT, Decimal(0), Decimal(100)),
    codes.LOINC_BODY_TEMPERATURE: _Vital(
        "Body temperature", codes.UCUM_CELSIUS, Decimal(25), Decimal(45)
    ),
    codes.LOINC_SYSTOLIC_BP: _Vital("Systolic blood pressure", codes.UCUM_MM_HG, Decimal(0), None),
    codes.LOINC_DIASTOLIC_BP: _Vital(
        "Diastolic blood pressure", codes.UCUM_MM_HG, Decimal(0), None
    ),
}


def _loinc_codes(node: JsonDict) -> list[str]:
    """Return the LOINC codes of node.code."""
    return [
        coding.get("code", "")
        for _, coding in _codings(node.get("code"), "")
        if coding.get("system") == codes.LOINC_SYSTEM
    ]


def _vital_of(node: JsonDict) -> tuple[str, _Vital] | None:
    """Return the LOINC code and spec of the vital sign that node.code names, if any."""
    return next(((c, _VITALS[c]) for c in _loinc_codes(node) if c in _VITALS), None)


def _vital_findings(node: JsonDict, expr: str, loinc: str, vital: _Vital) -> Iterator[Finding]:
    """Check the value type, unit and plausibility of one vital sign."""
    label = f"{vital.name} ({loinc})"
    key = _value_key(node)
    if key is not None and key != "valueQuantity":
        yield "value", f"{expr}.{key}", f"{label} needs a valueQuantity, not {key}."
        return
    quantity = node.get("valueQuantity")
    if not isinstance(quantity, dict):
        return
    unit_ok = True
    if quantity.get("system") != codes.UCUM_SYSTEM:
        unit_ok = False
        yield (
            "value",
            f"{expr}.valueQuantity.system",
            f"{label} needs a UCUM unit: valueQuantity.system must be {codes.UCUM_SYSTEM}.",
        )
    if quantity.get("code") != vital.unit:
        unit_ok = False
        yield (
            "value",
            f"{expr}.valueQuantity.code",
            f"{label} must be in UCUM {vital.unit!r}, not {quantity.get('code')!r}.",
        )
    amount = _as_decimal(quantity.get("value"))
    if amount is None:
        yield "required", f"{expr}.valueQuantity.value", f"{label} needs a numeric value."
        return
    if not unit_ok:
        return
    if amount < vital.low or (vital.high is not None and amount > vital.high):
        bounds = (
            f"between {vital.low} and {vital.high}"
            if vital.high is not None
            else f"at least {vital.low}"
        )
        yield (
            "value",
            f"{expr}.valueQuantity.value",
            f"{label} of {amount} {vital.unit} is implausible: it must be {bounds}.",
        )


def _components(observation: JsonDict, expr: str) -> Iterator[tuple[str, JsonDict]]:
    """Yield (expression, component) of an Observation."""
    for index, component in enumerate(observation.get("component") or []):
        if isinstance(component, dict):
            yield f"{expr}.component[{index}]", component


@_checker("rs-obs-1")
def _vital_signs(observation: JsonDict, expr: str) -> Iterator[Finding]:
    """Check units and plausible values of vital signs and blood pressure components."""
    vital = _vital_of(observation)
    if vital is not None:
        yield from _vital_findings(observation, expr, *vital)
    for component_expr, component in _components(observation, expr):
        vital = _vital_of(component)
        if vital is not None:
            yield from _vital_findings(component, component_expr, *vital)


@_checker("rs-obs-2")
def _blood_pressure_components(observation: JsonDict, expr: str) -> Iterator[Finding]:
    """Check that a blood pressure panel has systolic and diastolic components."""
    if codes.LOINC_BLOOD_PRESSURE_PANEL not in _loinc_codes(observation):
        return
    present = {
        code
        for _, component in _components(observation, expr)
        for code in _loinc_codes(component)
    }
    for loinc, name in (
        (codes.LOINC_SYSTOLIC_BP, "systolic"),
        (codes.LOINC_DIASTOLIC_BP, "diastolic"),
    ):
        if loinc not in present:
            yield (
                "required",
                f"{expr}.component",
                f"A blood pressure panel ({codes.LOINC_BLOOD_PRESSURE_PANEL}) needs a {name} "
                f"component ({loinc}).",
            )


def _own_code(observation: JsonDict) -> str | None:
    """Return the code of node.code in our observation code system, if any."""
    return next(
        (
            coding.get("code")
            for _, coding in _codings(observation.get("code"), "")
            if coding.get("system") == codes.OBSERVATION_SYSTEM
        ),
        None,
    )


_EXPECTED_VALUE_TYPES: Final[Mapping[str, tuple[str, str]]] = {
    codes.ObservationCode.ACVPU: ("Consciousness (acvpu)", "valueString"),
    codes.ObservationCode.SUPPLEMENTAL_OXYGEN: ("Supplemental oxygen", "valueBoolean"),
    codes.LOINC_PREGNANCY_STATUS: (
        f"Pregnancy status ({codes.LOINC_PREGNANCY_STATUS})", "valueCodeableConcept"
    ),
}


@_checker("rs-obs-3")
def _coded_observations(observation: JsonDict, expr: str) -> Iterator[Finding]:
    """Check the value type of consciousness, oxygen and pregnancy observations."""
    own = _own_code(observation)
    kind = own if own in _EXPECTED_VALUE_TYPES else None
    if kind is None and codes.LOINC_PREGNANCY_STATUS in _loinc_codes(observation):
        kind = codes.LOINC_PREGNANCY_STATUS
    if kind is None:
        return
    label, expected = _EXPECTED_VALUE_TYPES[kind]
    key = _value_key(observation)
    if key is None:
        return
    if key != expected:
        yield "value", f"{expr}.{key}", f"{label} needs a {expected}, not {key}."
    elif kind == codes.ObservationCode.ACVPU and observation[key] not in codes.ACVPU_VALUES:
        yield (
            "value",
            f"{expr}.valueString",
            f"{label} must be one of A, C, V, P, U, not {observation[key]!r}.",
        )


def _is_known(node: JsonDict) -> bool:
    """Return True when node.code is one of the observations our rules read."""
    own = _own_code(node)
    loinc = set(_loinc_codes(node))
    return (
        own in _EXPECTED_VALUE_TYPES
        or bool(loinc & set(_VITALS))
        or codes.LOINC_PREGNANCY_STATUS in loinc
    )


@_checker("rs-obs-4")
def _value_present(observation: JsonDict, expr: str) -> Iterator[Finding]:
    """Check that a known observation has a value or says why it has none."""
    nodes = [(expr, observation)] if not observation.get("component") else []
    nodes += list(_components(observation, expr))
    for node_expr, node in nodes:
        if _is_known(node) and _value_key(node) is None and not node.get("dataAbsentReason"):
            yield (
                "required",
                f"{node_expr}.value[x]",
                "The observation needs a value or a dataAbsentReason.",
            )


@_checker("rs-obs-5")
def _systolic_not_below_diastolic(observation: JsonDict, expr: str) -> Iterator[Finding]:
    """Warn when systolic pressure is below diastolic pressure."""
    values: dict[str, tuple[str, Decimal]] = {}
    for component_expr, component in _components(observation, expr):
        quantity = component.get("valueQuantity")
        if not isinstance(quantity, dict) or quantity.get("code") != codes.UCUM_MM_HG:
            continue
        amount = _as_decimal(quantity.get("value"))
        for loinc in _loinc_codes(component):
            if amount is not None:
                values[loinc] = (f"{component_expr}.valueQuantity.value", amount)
    systolic = values.get(codes.LOINC_SYSTOLIC_BP)
    diastolic = values.get(codes.LOINC_DIASTOLIC_BP)
    if systolic and diastolic and 0 <= systolic[1] < diastolic[1]:
        yield (
            "business-rule",
            systolic[0],
            f"Systolic pressure {systolic[1]} is below diastolic pressure {diastolic[1]}.",
        )


# --- the conformance store and the validator --------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Concept:
    """Displays of one code."""

    display: str
    zh: str | None


@dataclass(frozen=True, slots=True)
class _CodeTable:
    """The concepts of one of our code systems."""

    url: str
    complete: bool
    concepts: Mapping[str, _Concept]


class Conformance:
    """Our conformance resources, loaded once, and the checks they define."""

    def __init__(self, resources: Mapping[str, JsonDict]) -> None:
        """Index `resources` (file name -> resource) and compile the profiles."""
        self._resources = [resources[name] for name in sorted(resources)]
        self._by_url: dict[str, JsonDict] = {}
        self._code_tables: dict[str, _CodeTable] = {}
        self._profiles: dict[str, _Definition] = {}
        self._extensions: dict[str, _Definition] = {}
        for name in sorted(resources):
            self._index(resources[name], name)
        self._check_consistency()

    @classmethod
    def from_directory(cls, directory: Path = PROFILES_DIR) -> Conformance:
        """Load every *.json file of `directory`."""
        if not directory.is_dir():
            raise ProfileLoadError(f"FHIR profile folder not found: {directory}")
        resources: dict[str, JsonDict] = {}
        for path in sorted(directory.glob("*.json")):
            try:
                resource = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                raise ProfileLoadError(f"{path.name}: cannot read JSON: {error}") from error
            resources[path.name] = resource
        return cls(resources)

    def _index(self, resource: Any, source: str) -> None:
        """Add one conformance resource to the indexes."""
        if not isinstance(resource, dict):
            raise ProfileLoadError(f"{source}: not a JSON object")
        missing = [
            key
            for key in ("resourceType", "id", "url", "version", "name", "status")
            if not resource.get(key)
        ]
        if missing:
            raise ProfileLoadError(f"{source}: missing {', '.join(missing)}")
        if resource["resourceType"] not in CONFORMANCE_TYPES:
            raise ProfileLoadError(f"{source}: unexpected resourceType {resource['resourceType']}")
        url = resource["url"]
        if url in self._by_url:
            raise ProfileLoadError(f"{source}: duplicate url {url}")
        self._by_url[url] = resource
        if resource["resourceType"] == "CodeSystem":
            self._code_tables[url] = _CodeTable(
                url=url,
                complete=resource.get("content") == "complete",
                concepts={
                    concept["code"]: _Concept(
                        concept.get("display", concept["code"]),
                        next(
                            (
                                d["value"]
                                for d in concept.get("designation", [])
                                if str(d.get("language", "")).lower().startswith("zh")
                            ),
                            None,
                        ),
                    )
                    for concept in resource.get("concept", [])
                },
            )
        elif resource["resourceType"] == "StructureDefinition":
            self._index_structure(resource, source)

    def _index_structure(self, sd: JsonDict, source: str) -> None:
        """Compile a profile or an extension definition."""
        definition = _compile(sd, source)
        unknown = [c.key for c in definition.constraints if c.key not in _CHECKERS]
        if unknown:
            raise ProfileLoadError(f"{source}: no implementation for {', '.join(unknown)}")
        if sd.get("type") == "Extension":
            self._extensions[definition.url] = definition
        elif sd.get("kind") == "resource" and sd.get("derivation") == "constraint":
            if definition.type in self._profiles:
                raise ProfileLoadError(f"{source}: a second profile for {definition.type}")
            self._profiles[definition.type] = definition
        else:
            raise ProfileLoadError(f"{source}: neither a resource profile nor an extension")

    def _check_consistency(self) -> None:
        """Check that value sets include known code systems."""
        for resource in self._resources:
            if resource["resourceType"] != "ValueSet":
                continue
            for include in resource.get("compose", {}).get("include", []):
                system = include.get("system", "")
                if system.startswith(codes.BASE) and system not in self._code_tables:
                    raise ProfileLoadError(
                        f"ValueSet {resource['id']}: unknown code system {system}"
                    )

    # -- lookups --

    def resources(self) -> list[JsonDict]:
        """Return a copy of every conformance resource."""
        return copy.deepcopy(self._resources)

    def by_url(self, url: str) -> JsonDict | None:
        """Return a copy of the resource with canonical `url` (optionally `url|version`)."""
        base, _, version = url.partition("|")
        resource = self._by_url.get(base)
        if resource is None or (version and resource.get("version") != version):
            return None
        return copy.deepcopy(resource)

    def codes_of(self, system: str) -> frozenset[str]:
        """Return the codes of our code system `system` (empty when unknown)."""
        table = self._code_tables.get(system)
        return frozenset(table.concepts) if table else frozenset()

    def display(self, system: str, code: str, language: str = "en") -> str | None:
        """Return the display of system|code in `language` ('zh...' or English)."""
        table = self._code_tables.get(system)
        concept = table.concepts.get(code) if table else None
        if concept is None:
            return None
        if language.lower().startswith("zh") and concept.zh:
            return concept.zh
        return concept.display

    # -- validation --

    def validate(self, resource: JsonDict) -> list[ProfileIssue]:
        """Return every problem of `resource` (contained and Bundle entries included)."""
        issues: list[ProfileIssue] = []
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str):
            return [ProfileIssue("error", "structure", "resourceType", "resourceType is missing.")]
        self._validate_resource(resource, resource_type, issues)
        return issues

    def _validate_resource(self, resource: JsonDict, expr: str, issues: list[ProfileIssue]) -> None:
        """Check one resource whose expression is `expr`."""
        resource_type = str(resource.get("resourceType"))
        profile = self._profiles.get(resource_type)
        if profile is not None:
            self._apply(profile, resource, expr, issues)
        self._check_required_bindings(resource, resource_type, expr, issues)
        if resource_type == "Condition":
            issues.extend(_condition_invariants(resource, expr))
        self._walk(resource, expr, resource_type, issues, is_root=True)

    def _apply(
        self, definition: _Definition, node: JsonDict, expr: str, issues: list[ProfileIssue]
    ) -> None:
        """Apply the compiled rules and invariants of a definition to `node`."""
        for rule in definition.rules:
            issues.extend(_rule_issues(rule, node, expr))
        for constraint in definition.constraints:
            for code, where, message in _CHECKERS[constraint.key](node, expr):
                issues.append(ProfileIssue(constraint.severity, code, where, message))

    def _check_required_bindings(
        self, resource: JsonDict, resource_type: str, expr: str, issues: list[ProfileIssue]
    ) -> None:
        """Check FHIR's required bindings on status-like elements."""
        for path, (value_set, allowed) in _REQUIRED_CODES.items():
            root, _, rest = path.partition(".")
            if root != resource_type:
                continue
            for where, value in _select(resource, _plain_steps(rest), expr):
                if value not in allowed:
                    issues.append(
                        ProfileIssue(
                            "error",
                            "code-invalid",
                            where,
                            f"{value!r} is not a code of {value_set}; "
                            f"allowed: {', '.join(sorted(allowed))}.",
                        )
                    )
        for path, (value_set, system, allowed) in _REQUIRED_CODINGS.items():
            root, _, rest = path.partition(".")
            if root != resource_type:
                continue
            for where, coding in _select(resource, _plain_steps(rest), expr):
                if (
                    isinstance(coding, dict)
                    and coding.get("system") == system
                    and coding.get("code") not in allowed
                ):
                    issues.append(
                        ProfileIssue(
                            "error",
                            "code-invalid",
                            f"{where}.code",
                            f"{coding.get('code')!r} is not a code of {value_set}; "
                            f"allowed: {', '.join(sorted(allowed))}.",
                        )
                    )
        for path, (value_set, system, allowed) in _REQUIRED_CONCEPTS.items():
            root, _, rest = path.partition(".")
            if root != resource_type:
                continue
            for where, concept in _select(resource, _plain_steps(rest), expr):
                issues.extend(_concept_issues(concept, where, value_set, system, allowed))

    def _walk(
        self,
        node: Any,
        expr: str,
        element_path: str,
        issues: list[ProfileIssue],
        is_root: bool = False,
    ) -> None:
        """Visit every element: our codings, identity numbers, extensions, nested resources."""
        if isinstance(node, list):
            for index, item in enumerate(node):
                self._walk(item, f"{expr}[{index}]", element_path, issues)
            return
        if not isinstance(node, dict):
            return
        if not is_root and isinstance(node.get("resourceType"), str):
            self._validate_resource(node, expr, issues)
            return
        issues.extend(self._coding_issues(node, expr))
        if (
            node.get("system") == codes.RESIDENT_ID_SYSTEM
            and isinstance(node.get("value"), str)
            and element_path != "Patient.identifier"
        ):
            issues.extend(
                ProfileIssue("error", "value", f"{expr}.value", problem.en)
                for problem in resident_id.validate(node["value"])
            )
        for key, value in node.items():
            if key in ("extension", "modifierExtension") and isinstance(value, list):
                self._check_extensions(value, f"{expr}.{key}", element_path, issues)
            self._walk(value, f"{expr}.{key}", f"{element_path}.{key}", issues)

    def _coding_issues(self, node: JsonDict, expr: str) -> Iterator[ProfileIssue]:
        """Check a Coding in one of our systems, a known HL7 system or ICD-10."""
        system = node.get("system")
        if not isinstance(system, str) or "value" in node:
            return  # not a Coding (an Identifier, ContactPoint or Quantity has a value)
        code = node.get("code")
        table = self._code_tables.get(system)
        if table is not None:
            if not isinstance(code, str):
                yield ProfileIssue(
                    "error", "required", f"{expr}.code", f"A coding of {system} needs a code."
                )
            elif code not in table.concepts:
                yield ProfileIssue(
                    "error" if table.complete else "warning",
                    "code-invalid",
                    f"{expr}.code",
                    f"{code!r} is not a code of {system}; "
                    f"known: {', '.join(table.concepts)}.",
                )
        elif system.startswith(f"{codes.BASE}/CodeSystem/"):
            yield ProfileIssue(
                "error", "code-invalid", f"{expr}.system", f"Unknown code system {system}."
            )
        elif system in _KNOWN_EXTERNAL_CODES and code not in _KNOWN_EXTERNAL_CODES[system]:
            yield ProfileIssue(
                "error",
                "code-invalid",
                f"{expr}.code",
                f"{code!r} is not a code of {system}; "
                f"allowed: {', '.join(sorted(_KNOWN_EXTERNAL_CODES[system]))}.",
            )
        elif (
            system == codes.ICD10_SYSTEM
            and isinstance(code, str)
            and not _ICD10_CODE.fullmatch(code)
        ):
            yield ProfileIssue(
                "error",
                "code-invalid",
                f"{expr}.code",
                f"{code!r} is not an ICD-10 code (a letter and two digits, optionally a dot and "
                "more, such as I63.9); the referral rules could not match it.",
            )

    def _check_extensions(
        self, extensions: list[Any], expr: str, element_path: str, issues: list[ProfileIssue]
    ) -> None:
        """Check each of our extensions: where it is used and its own definition."""
        for index, extension in enumerate(extensions):
            if not isinstance(extension, dict):
                continue
            url = extension.get("url")
            where = f"{expr}[{index}]"
            definition = self._extensions.get(url) if isinstance(url, str) else None
            if definition is None:
                if isinstance(url, str) and url.startswith(f"{codes.BASE}/StructureDefinition/"):
                    issues.append(
                        ProfileIssue(
                            "error", "structure", f"{where}.url", f"Unknown extension {url}."
                        )
                    )
                continue
            if definition.contexts and element_path not in definition.contexts:
                issues.append(
                    ProfileIssue(
                        "error",
                        "structure",
                        where,
                        f"The extension {url} is allowed on {', '.join(definition.contexts)} "
                        f"only, not on {element_path}.",
                    )
                )
            self._apply(definition, extension, where, issues)


def _json(value: Any) -> str:
    """Return `value` as JSON text for a message."""
    return json.dumps(value, ensure_ascii=False, default=str)


def _plain_steps(path: str) -> tuple[_Step, ...]:
    """Return the steps of a dotted path without slices."""
    return tuple(_Step(name, None, None) for name in path.split(".") if name)


def _rule_issues(rule: _ElementRule, node: JsonDict, expr: str) -> Iterator[ProfileIssue]:
    """Check cardinality, fixed value and choice types of one element rule."""
    *parent_steps, last = rule.steps
    for parent_expr, parent in _select(node, parent_steps, expr):
        found = _children(parent, last, parent_expr)
        where = f"{parent_expr}.{last.name}"
        if len(found) < rule.min:
            detail = f" ({rule.label})" if last.slice_name else ""
            yield ProfileIssue(
                "error",
                "required",
                where,
                f"{where}{detail} is required"
                + (f": at least {rule.min}, found {len(found)}." if rule.min > 1 else "."),
            )
        if rule.max is not None and len(found) > rule.max:
            yield ProfileIssue(
                "error",
                "structure",
                where,
                f"{where} allows at most {rule.max} {rule.label}, found {len(found)}.",
            )
        for found_expr, value in found:
            if rule.fixed is not None and value != rule.fixed[1]:
                yield ProfileIssue(
                    "error",
                    "value",
                    found_expr,
                    f"{found_expr} must be {_json(rule.fixed[1])}, not {_json(value)}.",
                )
            if rule.choice_types:
                key = found_expr.rsplit(".", 1)[-1]
                allowed = [f"{last.name[:-3]}{t}" for t in rule.choice_types]
                if key not in allowed:
                    yield ProfileIssue(
                        "error",
                        "value",
                        found_expr,
                        f"{key} is not allowed here; use {' or '.join(allowed)}.",
                    )


def _concept_issues(
    concept: Any, expr: str, value_set: str, system: str, allowed: frozenset[str]
) -> Iterator[ProfileIssue]:
    """Check a CodeableConcept against a required binding to one code system."""
    own = [(e, c) for e, c in _codings(concept, expr) if c.get("system") == system]
    if not own:
        yield ProfileIssue(
            "error",
            "code-invalid",
            expr,
            f"{expr} needs a coding from {system} ({value_set}).",
        )
    for coding_expr, coding in own:
        if coding.get("code") not in allowed:
            yield ProfileIssue(
                "error",
                "code-invalid",
                f"{coding_expr}.code",
                f"{coding.get('code')!r} is not a code of {value_set}; "
                f"allowed: {', '.join(sorted(allowed))}.",
            )


def _condition_invariants(condition: JsonDict, expr: str) -> Iterator[ProfileIssue]:
    """Check the FHIR Condition invariants con-4 and con-5."""
    clinical = condition.get("clinicalStatus")
    refuted = _has_code(
        condition.get("verificationStatus"), codes.CONDITION_VER_STATUS_SYSTEM, "entered-in-error"
    )
    if refuted and clinical:
        yield ProfileIssue(
            "error",
            "invariant",
            f"{expr}.clinicalStatus",
            "con-5: clinicalStatus must be absent when verificationStatus is entered-in-error.",
        )
    abated = any(_is_choice_of("abatement", key) for key in condition)
    if abated and clinical and not refuted and not any(
        _has_code(clinical, codes.CONDITION_CLINICAL_SYSTEM, code)
        for code in ("inactive", "resolved", "remission")
    ):
        yield ProfileIssue(
            "error",
            "invariant",
            f"{expr}.clinicalStatus",
            "con-4: an abated condition must have clinicalStatus inactive, resolved or remission.",
        )


# --- module-level access to the default store ------------------------------------------------


@cache
def default() -> Conformance:
    """Return the conformance store loaded from fhir_profiles/ (once)."""
    return Conformance.from_directory(PROFILES_DIR)


def validate(resource: JsonDict) -> list[ProfileIssue]:
    """Return every problem of `resource` against our profiles and rules."""
    return default().validate(resource)


def all_conformance_resources() -> list[JsonDict]:
    """Return every CodeSystem, ValueSet and StructureDefinition of fhir_profiles/."""
    return default().resources()


def by_url(url: str) -> JsonDict | None:
    """Return the conformance resource with canonical `url` (or `url|version`), if any."""
    return default().by_url(url)


def display(system: str, code: str, language: str = "en") -> str | None:
    """Return the display of one of our codes in English or zh-CN."""
    return default().display(system, code, language)


def codes_of(system: str) -> frozenset[str]:
    """Return the codes of one of our code systems."""
    return default().codes_of(system)
