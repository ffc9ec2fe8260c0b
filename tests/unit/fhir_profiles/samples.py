"""Sample valid resources (plain dicts), helpers to check them, and the `make` factory."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from referral_service.fhir import codes, profiles
from referral_service.fhir.profiles import ProfileIssue

Resource = dict[str, Any]

LOINC = codes.LOINC_SYSTEM
UCUM = codes.UCUM_SYSTEM


def coding(system: str, code: str) -> Resource:
    """Return a CodeableConcept with one coding."""
    return {"coding": [{"system": system, "code": code}]}


def quantity(value: Any, unit: str) -> Resource:
    """Return a UCUM Quantity."""
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _patient() -> Resource:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": codes.RESIDENT_ID_SYSTEM, "value": "11010519491231002X"}],
        "name": [{"text": "王芳"}],
        "gender": "female",
        "birthDate": "1949-12-31",
        "address": [{"district": "青山县", "city": "云州市"}],
        "extension": [
            {
                "url": codes.POVERTY_REGISTRATION_URL,
                "valuePeriod": {"start": "2018-01-01", "end": "2020-12-31"},
            }
        ],
    }


def _organization() -> Resource:
    return {
        "resourceType": "Organization",
        "name": "青山县人民医院",
        "type": [
            coding(codes.FACILITY_LEVEL_SYSTEM, "county"),
            coding(codes.CAPABILITY_SYSTEM, "general"),
        ],
        "address": [{"district": "青山县"}],
    }


def _encounter() -> Resource:
    return {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": codes.V3_ACT_CODE_SYSTEM, "code": "AMB"},
        "subject": {"reference": "Patient/p1"},
        "serviceProvider": {"reference": "Organization/o1"},
        "period": {"start": "2024-03-01T09:00:00+08:00"},
    }


def _observation() -> Resource:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": coding(LOINC, codes.LOINC_HEART_RATE),
        "subject": {"reference": "Patient/p1"},
        "valueQuantity": quantity(72, "/min"),
    }


def _blood_pressure() -> Resource:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": coding(LOINC, codes.LOINC_BLOOD_PRESSURE_PANEL),
        "subject": {"reference": "Patient/p1"},
        "component": [
            {
                "code": coding(LOINC, codes.LOINC_SYSTOLIC_BP),
                "valueQuantity": quantity(120, "mm[Hg]"),
            },
            {
                "code": coding(LOINC, codes.LOINC_DIASTOLIC_BP),
                "valueQuantity": quantity(80, "mm[Hg]"),
            },
        ],
    }


def _household() -> Resource:
    return {
        "resourceType": "Group",
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": "Patient/p1"}}],
        "extension": [
            {
                "url": codes.HOUSEHOLD_ANNUAL_INCOME_URL,
                "valueMoney": {"value": 12000, "currency": "CNY"},
            }
        ],
    }


_FACTORIES: dict[str, Callable[[], Resource]] = {
    "patient": _patient,
    "organization": _organization,
    "encounter": _encounter,
    "observation": _observation,
    "blood_pressure": _blood_pressure,
    "household": _household,
}


def make(kind: str, **changes: Any) -> Resource:
    """Return a fresh valid resource of `kind`; a change of None removes the element."""
    resource = copy.deepcopy(_FACTORIES[kind]())
    for key, value in changes.items():
        if value is None:
            resource.pop(key, None)
        else:
            resource[key] = value
    return resource


def check(resource: Resource) -> list[ProfileIssue]:
    """Parse `resource` with fhir.resources (as the API does), then run the profile checks."""
    get_fhir_model_class(resource["resourceType"]).model_validate(copy.deepcopy(resource))
    return profiles.validate(resource)


def at(issues: list[ProfileIssue], expression: str) -> list[ProfileIssue]:
    """Return the issues whose expression is `expression`."""
    return [issue for issue in issues if issue.expression == expression]


def errors(issues: list[ProfileIssue]) -> list[ProfileIssue]:
    """Return the issues of severity error."""
    return [issue for issue in issues if issue.severity == "error"]
