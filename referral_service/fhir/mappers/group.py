"""Group (household, 户) <-> registry Household: members and annual income."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from ...domain.actor import Actor
from ...domain.errors import Problem, Unprocessable
from ...domain.registry import Household, Patient
from ..codes import BASE
from .common import clip, ensure_unique, ref_id

INCOME_URL = f"{BASE}/StructureDefinition/household-annual-income"
HOUSEHOLD_CODE_SYSTEM = f"{BASE}/sid/household"


def _income(resource: dict[str, Any]) -> Decimal:
    for ext in resource.get("extension") or []:
        if ext.get("url") == INCOME_URL:
            money = ext.get("valueMoney") or {}
            if money.get("currency", "CNY") != "CNY":
                raise Unprocessable(
                    "household income must be in CNY",
                    [
                        Problem(
                            "currency must be CNY",
                            expression="Group.extension.valueMoney.currency",
                            code="value",
                        )
                    ],
                )
            try:
                return Decimal(str(money.get("value", "0"))).quantize(Decimal("0.01"))
            except InvalidOperation:
                break
    return Decimal("0.00")


def to_domain(session: Session, resource: dict[str, Any], actor: Actor, is_create: bool) -> None:
    """Insert or update the household and point its members at it."""
    hid = str(resource["id"])
    row = session.get(Household, hid)
    members = [ref_id(m.get("entity"), "Patient") for m in resource.get("member") or []]
    member_ids = [m for m in members if m]
    first = session.get(Patient, member_ids[0]) if member_ids else None
    if row is None:
        row = Household(id=hid, district=(first.district if first else None) or "")
        session.add(row)
    row.annual_income = _income(resource)
    codes = [
        i.get("value") for i in resource.get("identifier") or [] if i.get("system") == HOUSEHOLD_CODE_SYSTEM
    ]
    row.code = clip(codes[0], 64) if codes else row.code
    ensure_unique(session, Household, Household.code, row.code, hid, "household code", "Group.identifier")
    if first is not None:
        row.district = first.district or row.district
        row.township = first.township
        row.village = first.village
    session.flush()
    session.execute(update(Patient).where(Patient.household_id == hid).values(household_id=None))
    if member_ids:
        session.execute(update(Patient).where(Patient.id.in_(member_ids)).values(household_id=hid))


def from_domain(row: Household) -> dict[str, Any]:
    """The FHIR Group of a household."""
    resource: dict[str, Any] = {
        "resourceType": "Group",
        "id": row.id,
        "extension": [
            {"url": INCOME_URL, "valueMoney": {"value": row.annual_income, "currency": "CNY"}}
        ],
    }
    if row.code:
        resource["identifier"] = [{"system": HOUSEHOLD_CODE_SYSTEM, "value": row.code}]
    resource.update(
        {
            "type": "person",
            "actual": True,
            "name": f"户 {row.code or row.id}",
            "quantity": len(row.members),
            "member": [{"entity": {"reference": f"Patient/{m.id}"}} for m in row.members],
        }
    )
    return resource
