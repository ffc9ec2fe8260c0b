"""FHIR shapes of the referral workflow: GuidanceResponse, ServiceRequest, Task, CarePlan, EpisodeOfCare."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

from ...rules import Decision
from .. import codes

RULE_SET_BASE = f"{codes.BASE}/RuleSet"
TASK_CODE_SYSTEM = "http://hl7.org/fhir/CodeSystem/task-code"
DECISION_URL = f"{codes.BASE}/StructureDefinition/referral-decision"


def ref(kind: str, rid: str) -> dict[str, str]:
    """A literal reference."""
    return {"reference": f"{kind}/{rid}"}


def news2_parameters(decision: Decision) -> dict[str, Any]:
    """The NEWS2 breakdown as a contained Parameters resource.

    Each item's measured value is a string (numbers as written, ACVPU letters), except supplemental
    oxygen, which is `valueBoolean` like the supplemental-oxygen Observation it comes from.
    """
    n = decision.news2
    params: list[dict[str, Any]] = [
        {"name": "total", "valueInteger": n.total},
        {"name": "max-single", "valueInteger": n.max_single},
        {"name": "complete", "valueBoolean": n.complete},
    ]
    for item in n.items:
        part: list[dict[str, Any]] = [{"name": "parameter", "valueString": item.parameter}]
        if isinstance(item.value, bool):  # supplemental oxygen: a boolean, as its Observation
            part.append({"name": "value", "valueBoolean": item.value})
        elif item.value is not None:
            part.append({"name": "value", "valueString": str(item.value)})
        if item.score is not None:
            part.append({"name": "score", "valueInteger": item.score})
        params.append({"name": "item", "part": part})
    params += [{"name": "missing", "valueString": m} for m in n.missing]
    if not n.complete:
        params += [
            {"name": "message-zh", "valueString": n.message_zh},
            {"name": "message-en", "valueString": n.message_en},
        ]
    return {"resourceType": "Parameters", "id": "news2", "parameter": params}


def guidance_response(
    gr_id: str,
    decision: Decision,
    *,
    patient_id: str,
    encounter_id: str,
    when: str,
    result_id: str | None,
    notes: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """The stored decision: matched rules, rule-set version, NEWS2 breakdown, proposed referral.

    `note` holds every explanation in Chinese, then in English (each rule's, then each of the
    workflow's `notes`, given as (zh, en) pairs), so integrators and both languages of the web
    pages read the same reasons.
    """
    resource: dict[str, Any] = {
        "resourceType": "GuidanceResponse",
        "id": gr_id,
        "contained": [news2_parameters(decision)],
        "extension": [
            {
                "url": DECISION_URL,
                "extension": [
                    {"url": "outcome", "valueCode": decision.outcome},
                    *([{"url": "urgency", "valueCode": decision.urgency}] if decision.urgency else []),
                    *(
                        [{"url": "capability", "valueCode": decision.capability}]
                        if decision.capability
                        else []
                    ),
                ],
            }
        ],
        "identifier": [{"system": f"{codes.BASE}/sid/guidance", "value": encounter_id}],
        "requestIdentifier": {"system": f"{codes.BASE}/sid/encounter", "value": encounter_id},
        "moduleCanonical": f"{RULE_SET_BASE}/{decision.rule_set_id}|{decision.rule_set_version}",
        "status": "success",
        "subject": ref("Patient", patient_id),
        "encounter": ref("Encounter", encounter_id),
        "occurrenceDateTime": when,
        "reasonCode": [
            {
                "coding": [{"system": codes.REFERRAL_RULE_SYSTEM, "code": m.id, "display": m.explanation_en}],
                "text": m.explanation_zh,
            }
            for m in decision.matched_rules
        ],
        "note": [{"text": m.explanation_zh} for m in decision.matched_rules]
        + [{"text": m.explanation_en} for m in decision.matched_rules]
        + [{"text": text} for pair in notes for text in pair],
        "outputParameters": {"reference": "#news2"},
    }
    if result_id:
        resource["result"] = ref("ServiceRequest", result_id)
    return resource


def service_request(
    sr_id: str,
    *,
    kind: str,
    status: str,
    priority: str,
    patient_id: str,
    encounter_id: str,
    requester_id: str,
    performer_id: str,
    authored: str,
    based_on: str | None = None,
    reasons: list[str] | None = None,
    supporting: list[dict[str, str]] | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """An up- or down-referral."""
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": sr_id,
        "identifier": [{"system": f"{codes.BASE}/sid/referral", "value": sr_id}],
        "status": status,
        "intent": "order",
        "category": [
            {
                "coding": [
                    {
                        "system": codes.SNOMED_SYSTEM,
                        "code": codes.REFERRAL_CATEGORY,
                        "display": "Patient referral",
                    }
                ]
            }
        ],
        "priority": priority,
        "code": {"coding": [{"system": codes.REFERRAL_TYPE_SYSTEM, "code": kind}]},
        "subject": ref("Patient", patient_id),
        "encounter": ref("Encounter", encounter_id),
        "authoredOn": authored,
        "requester": ref("Organization", requester_id),
        "performer": [ref("Organization", performer_id)],
    }
    if based_on:
        resource["basedOn"] = [ref("ServiceRequest", based_on)]
    if reasons:
        resource["reasonReference"] = [ref("Condition", c) for c in reasons]
    if supporting:
        resource["supportingInfo"] = supporting
    if note:
        resource["note"] = [{"text": note}]
    return resource


def task(
    task_id: str,
    *,
    status: str,
    sr_id: str,
    patient_id: str,
    owner_id: str,
    requester_id: str,
    priority: str,
    when: str,
) -> dict[str, Any]:
    """The Task that carries a referral to its receiving organisation."""
    return {
        "resourceType": "Task",
        "id": task_id,
        "identifier": [{"system": f"{codes.BASE}/sid/referral-task", "value": task_id}],
        "basedOn": [ref("ServiceRequest", sr_id)],
        "status": status,
        "intent": "order",
        "priority": priority,
        "code": {"coding": [{"system": TASK_CODE_SYSTEM, "code": "fulfill"}]},
        "focus": ref("ServiceRequest", sr_id),
        "for": ref("Patient", patient_id),
        "authoredOn": when,
        "lastModified": when,
        "requester": ref("Organization", requester_id),
        "owner": ref("Organization", owner_id),
    }


def care_plan(
    cp_id: str,
    *,
    patient_id: str,
    sr_id: str,
    clinic_id: str,
    start: date,
    days: list[int],
    when: str,
    status: str = "active",
) -> dict[str, Any]:
    """Follow-up visits at the township clinic after discharge (康复回家).

    Proposed with its down-referral as `draft`; `active` once the hospital confirms the referral.
    """
    return {
        "resourceType": "CarePlan",
        "id": cp_id,
        "identifier": [{"system": f"{codes.BASE}/sid/care-plan", "value": cp_id}],
        # The down-referral it follows. Not `basedOn`, which R4 lets point at a CarePlan only.
        "supportingInfo": [ref("ServiceRequest", sr_id)],
        "status": status,
        "intent": "plan",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://snomed.info/sct",
                        "code": "736372004",
                        "display": "Discharge care plan",
                    }
                ]
            }
        ],
        "title": "出院康复随访 / follow-up after discharge",
        "subject": ref("Patient", patient_id),
        "period": {"start": start.isoformat()},
        "created": when,
        "author": ref("Organization", clinic_id),
        "activity": [
            {
                "detail": {
                    "kind": "Appointment",
                    "code": {"text": f"随访 day {d} / follow-up visit day {d}"},
                    "status": "scheduled",
                    "scheduledPeriod": {"start": (start + timedelta(days=d)).isoformat()},
                    "performer": [ref("Organization", clinic_id)],
                }
            }
            for d in days
        ],
    }


def episode_of_care(
    eoc_id: str,
    *,
    patient_id: str,
    organization_id: str,
    referrals: list[str],
    start: str,
    status: str,
) -> dict[str, Any]:
    """Ties an up-referral and its down-referral together."""
    return {
        "resourceType": "EpisodeOfCare",
        "id": eoc_id,
        "identifier": [{"system": f"{codes.BASE}/sid/episode", "value": eoc_id}],
        "status": status,
        "patient": ref("Patient", patient_id),
        "managingOrganization": ref("Organization", organization_id),
        "period": {"start": start},
        "referralRequest": [ref("ServiceRequest", r) for r in referrals],
    }
