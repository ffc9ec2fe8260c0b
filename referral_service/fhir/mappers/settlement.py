"""ClaimResponse and ExplanationOfBenefit of a settlement (one-stop result per settlement component)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ...domain.ledger import Settlement
from .. import codes

COMPONENT_SYSTEM = codes.SETTLEMENT_COMPONENT_SYSTEM
CLAIM_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/claim-type"
POLICY_URL = f"{codes.BASE}/StructureDefinition/settlement-policy"
SETTLEMENT_SYSTEM = f"{codes.BASE}/sid/settlement"
COMPONENTS = (
    "total",
    "eligible",
    "basic-deductible",
    "basic-insurance",
    "critical-illness",
    "medical-assistance",
    "poverty-safety-net",
    "class-b-self-pay",
    "out-of-list",
    "patient-pay",
)
FUND_PAYERS = ("basic-insurance", "critical-illness", "medical-assistance", "poverty-safety-net")
# The funds as payers in ExplanationOfBenefit.insurance[]: identified by their settlement-component
# code; basic and critical illness insurance are carried by the patient's basic Coverage.
FUND_SYSTEM = f"{codes.BASE}/sid/fund"
FUND_NAMES = {
    "basic-insurance": "基本医疗保险 / basic medical insurance",
    "critical-illness": "大病保险 / critical illness insurance",
    "medical-assistance": "医疗救助 / medical assistance",
    "poverty-safety-net": "兜底保障 / poverty safety net",
}
ON_THE_BASIC_COVERAGE = ("basic-insurance", "critical-illness")
ADJUDICATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/adjudication"


def money(value: Decimal) -> dict[str, Any]:
    """A CNY Money element (JSON number with at most two decimals)."""
    return {"value": value, "currency": "CNY"}  # Decimal: written with exactly two places


def component_values(s: Settlement) -> dict[str, Decimal]:
    """The ten components of a stored settlement."""
    return {
        "total": s.total,
        "eligible": s.eligible,
        "basic-deductible": s.basic_deductible,
        "basic-insurance": s.basic_insurance,
        "critical-illness": s.critical_illness,
        "medical-assistance": s.medical_assistance,
        "poverty-safety-net": s.poverty_safety_net,
        "class-b-self-pay": s.class_b_self_pay,
        "out-of-list": s.out_of_list,
        "patient-pay": s.patient_pay,
    }


def _totals(s: Settlement) -> list[dict[str, Any]]:
    return [
        {"category": {"coding": [{"system": COMPONENT_SYSTEM, "code": code}]}, "amount": money(v)}
        for code, v in component_values(s).items()
    ]


def _policy_extension(s: Settlement) -> dict[str, Any]:
    return {
        "url": POLICY_URL,
        "extension": [
            {"url": "id", "valueString": s.policy_id},
            {"url": "version", "valueString": s.policy_version},
        ],
    }


def claim_response(s: Settlement, *, claim_type: str, insurer_id: str | None, created: str) -> dict[str, Any]:
    """The adjudication answered to `$submit`: every settlement component exactly once."""
    funds = s.basic_insurance + s.critical_illness + s.medical_assistance + s.poverty_safety_net
    resource: dict[str, Any] = {
        "resourceType": "ClaimResponse",
        "id": s.claim_response_id,
        "extension": [_policy_extension(s)],
        "identifier": [{"system": SETTLEMENT_SYSTEM, "value": s.id}],
        "status": "cancelled" if s.status == "reversed" else "active",
        "type": {"coding": [{"system": CLAIM_TYPE_SYSTEM, "code": claim_type}]},
        "use": "claim",
        "patient": {"reference": f"Patient/{s.patient_id}"},
        "created": created,
        "requestor": {"reference": f"Organization/{s.provider_id}"},
        "request": {"reference": f"Claim/{s.claim_id}"},
        "outcome": "complete",
        "disposition": "一站式结算完成 / settled in one step"
        + (f"; 已冲销 / reversed: {s.reversal_reason}" if s.status == "reversed" else ""),
        "total": _totals(s),
        "payment": {
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/ex-paymenttype", "code": "complete"}
                ]
            },
            "amount": money(funds),
        },
        "processNote": [
            {"number": i + 1, "type": "display", "text": f"{step['zh']} / {step['en']}: {step['formula']}"}
            for i, step in enumerate(s.trace)
        ],
    }
    if insurer_id:
        resource["insurer"] = {"reference": f"Organization/{insurer_id}"}
    else:
        resource["insurer"] = {"display": "医疗保障局 / medical insurance bureau"}
    return resource


def insurance(s: Settlement, coverage_id: str) -> list[dict[str, Any]]:
    """EOB.insurance[]: every payer fund the settlement used (DESIGN 9, "payer of a component").

    The basic fund always (focal: the claim's Coverage); each other fund when it pays something.
    Each names its fund by identifier (`FUND_SYSTEM`, the settlement-component code that its
    amounts carry in `item.adjudication` and `adjudication`); basic and critical illness insurance
    also reference the basic Coverage that carries them; medical assistance and the safety net
    follow poverty registration and have no Coverage resource.
    """
    entries = []
    for fund in FUND_PAYERS:
        if fund != "basic-insurance" and s.amount_of(fund) <= 0:
            continue
        payer: dict[str, Any] = {}
        if fund in ON_THE_BASIC_COVERAGE:
            payer["reference"] = f"Coverage/{coverage_id}"
        payer |= {"identifier": {"system": FUND_SYSTEM, "value": fund}, "display": FUND_NAMES[fund]}
        entries.append({"focal": fund == "basic-insurance", "coverage": payer})
    return entries


def _adjudication(system: str, code: str, amount: Decimal) -> dict[str, Any]:
    return {"category": {"coding": [{"system": system, "code": code}]}, "amount": money(amount)}


def explanation_of_benefit(
    s: Settlement,
    claim: dict[str, Any],
    *,
    claim_type: str,
    insurer_id: str | None,
    coverage_id: str,
    created: str,
    used: dict[str, Decimal],
    caps: dict[str, Decimal | None],
    item_components: list[dict[str, Decimal]],
) -> dict[str, Any]:
    """The EOB: the payers used, items with what each payer pays of them, totals and this year's
    balances.

    `item_components`: the settlement's components shared over the claim's items
    (`settlement.allocation.allocate`, in item order). Each item's `adjudication` has its
    `submitted` amount, then each of the ten settlement components (the funds' amounts are what that
    payer in `insurance[]` pays of the item); each component's item amounts sum to the claim's.
    """
    items = []
    claimed = claim.get("item") or []
    for index, (item, shares) in enumerate(zip(claimed, item_components, strict=True), start=1):
        entry: dict[str, Any] = {
            "sequence": item.get("sequence", index),
            "category": item.get("category"),
            "productOrService": item.get("productOrService") or {"text": "charge"},
            "quantity": item.get("quantity"),
            "unitPrice": item.get("unitPrice"),
            "factor": item.get("factor"),
            "net": item.get("net") or money(shares["total"]),
            "adjudication": [
                _adjudication(ADJUDICATION_SYSTEM, "submitted", shares["total"]),
                *(_adjudication(COMPONENT_SYSTEM, code, shares[code]) for code in COMPONENTS),
            ],
        }
        items.append({k: v for k, v in entry.items() if v is not None})
    balances = []
    for name, amount in used.items():
        balance: dict[str, Any] = {"type": {"text": name}, "usedMoney": money(amount)}
        cap = caps.get(name)
        if cap is not None:
            balance["allowedMoney"] = money(cap)
        balances.append(balance)
    resource: dict[str, Any] = {
        "resourceType": "ExplanationOfBenefit",
        "id": s.eob_id,
        "extension": [_policy_extension(s)],
        "identifier": [{"system": SETTLEMENT_SYSTEM, "value": s.id}],
        "status": "cancelled" if s.status == "reversed" else "active",
        "type": {"coding": [{"system": CLAIM_TYPE_SYSTEM, "code": claim_type}]},
        "use": "claim",
        "patient": {"reference": f"Patient/{s.patient_id}"},
        "billablePeriod": claim.get("billablePeriod"),
        "created": created,
        "insurer": {"reference": f"Organization/{insurer_id}"} if insurer_id else {"display": "医疗保障局"},
        "provider": {"reference": f"Organization/{s.provider_id}"},
        "claim": {"reference": f"Claim/{s.claim_id}"},
        "claimResponse": {"reference": f"ClaimResponse/{s.claim_response_id}"},
        "outcome": "complete",
        "insurance": insurance(s, coverage_id),
        "item": items,
        "adjudication": [
            {"category": {"coding": [{"system": COMPONENT_SYSTEM, "code": code}]}, "amount": money(v)}
            for code, v in component_values(s).items()
        ],
        "total": _totals(s),
        "payment": {
            "amount": money(
                s.basic_insurance + s.critical_illness + s.medical_assistance + s.poverty_safety_net
            )
        },
        "benefitBalance": [
            {
                "category": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/ex-benefitcategory",
                            "code": "1",
                            "display": "Medical Care",
                        }
                    ]
                },
                "unit": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/benefit-unit", "code": "individual"}
                    ]
                },
                "term": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/benefit-term", "code": "annual"}
                    ]
                },
                "financial": [
                    {**{k: v for k, v in b.items() if k != "usedMoney"}, "usedMoney": b["usedMoney"]}
                    for b in balances
                ],
            }
        ],
    }
    return {k: v for k, v in resource.items() if v is not None}
