"""Factories for monitoring tests: ledger rows written directly, and FHIR Tasks, CarePlans, Encounters
stored with a chosen version history (so waiting times are exact)."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select, update

from referral_service.domain.fhir_store import ResourceVersion, StoredResource
from referral_service.domain.ledger import Payable, Settlement
from referral_service.domain.registry import Household, Organization, Patient
from referral_service.extensions import database
from referral_service.fhir.store import ResourceStore

SHANGHAI = ZoneInfo("Asia/Shanghai")
_seq = itertools.count(1)


def at(text: str) -> datetime:
    """An aware instant from ISO text; zone-less text is Asia/Shanghai."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=SHANGHAI)


def money(value: str | int) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.01"))


def org(
    org_id: str,
    *,
    level: str | None = "county",
    kind: str | None = None,
    township: str | None = None,
    district: str = "青山县",
) -> str:
    with database.unit_of_work() as session:
        session.add(
            Organization(
                id=org_id, name=org_id, facility_level=level, kind=kind, district=district, township=township
            )
        )
    return org_id


def household(hid: str, income: str | int, members: int, *, township: str | None = "城关镇") -> list[str]:
    """A household and its members; returns the member patient ids (hid-1, hid-2, ...)."""
    ids = [f"{hid}-{i + 1}" for i in range(members)]
    with database.unit_of_work() as session:
        session.add(Household(id=hid, annual_income=money(income), district="青山县", township=township))
        session.flush()
        for pid in ids:
            session.add(
                Patient(
                    id=pid,
                    family_name="王",
                    given_name=pid,
                    gender="female",
                    district="青山县",
                    township=township,
                    household_id=hid,
                )
            )
    return ids


def patient(pid: str, *, township: str | None = "城关镇", household_id: str | None = None) -> str:
    with database.unit_of_work() as session:
        session.add(
            Patient(
                id=pid,
                family_name="李",
                given_name=pid,
                gender="male",
                district="青山县",
                township=township,
                household_id=household_id,
            )
        )
    return pid


def settlement(
    patient_id: str,
    provider_id: str,
    *,
    discharge: str,
    settled: str | None = None,
    total: str | int = "1000",
    patient_pay: str | int = "100",
    registered_poor: bool = False,
    claim_type: str = "inpatient",
    status: str = "active",
    reversed_at: str | None = None,
    funds: dict[str, str | int] | None = None,
) -> str:
    """A settlement row (components not given are 0); returns its id."""
    n = next(_seq)
    day = date.fromisoformat(discharge)
    funds = funds or {}
    sid = f"s-{n}"
    with database.unit_of_work() as session:
        session.add(
            Settlement(
                id=sid,
                claim_id=f"claim-{n}",
                claim_response_id=f"cr-{n}",
                eob_id=f"eob-{n}",
                provider_id=provider_id,
                identifier_system="urn:test",
                identifier_value=str(n),
                content_hash="x" * 64,
                patient_id=patient_id,
                household_id=None,
                claim_type=claim_type,
                facility_level="county",
                discharge_date=day,
                accumulator_year=day.year,
                registered_poor=registered_poor,
                referred=True,
                unreferred_out_of_county=False,
                episode_id=None,
                policy_id="test",
                policy_version="1",
                total=money(total),
                eligible=money(total),
                basic_deductible=money(0),
                basic_insurance=money(funds.get("basic-insurance", 0)),
                critical_illness=money(funds.get("critical-illness", 0)),
                medical_assistance=money(funds.get("medical-assistance", 0)),
                poverty_safety_net=money(funds.get("poverty-safety-net", 0)),
                class_b_self_pay=money(0),
                out_of_list=money(0),
                patient_pay=money(patient_pay),
                deductible_borne=money(0),
                ci_r1_added=money(0),
                trace=[],
                status=status,
                sequence=n,
                settled_at=at(settled or f"{discharge}T12:00:00"),
                reversed_at=at(reversed_at) if reversed_at else None,
            )
        )
    return sid


def payable(
    hospital_id: str,
    fund: str,
    amount: str | int,
    *,
    created: str,
    status: str = "unpaid",
    paid_amount: str | int = 0,
    paid_at: str | None = None,
    patient_id: str = "pay-patient",
) -> int:
    """A payable on a settlement of its own; returns its id."""
    with database.unit_of_work() as session:
        if session.get(Patient, patient_id) is None:
            session.add(Patient(id=patient_id, family_name="赵", given_name="付", gender="male"))
    sid = settlement(
        patient_id,
        hospital_id,
        discharge=at(created).astimezone(SHANGHAI).date().isoformat(),
        settled=created,
        funds={fund: amount},
    )
    with database.unit_of_work() as session:
        row = Payable(
            settlement_id=sid,
            fund=fund,
            hospital_id=hospital_id,
            amount=money(amount),
            created_at=at(created),
            status=status,
            paid_amount=money(paid_amount),
            paid_at=at(paid_at) if paid_at else None,
        )
        session.add(row)
        session.flush()
        return row.id


def store_versions(res_type: str, res_id: str, versions: list[tuple[dict[str, Any], str]]) -> None:
    """Store successive versions of a resource, each stamped with the given instant."""
    with database.unit_of_work() as session:
        store = ResourceStore(session)
        for body, when in versions:
            existing = store.current(res_type, res_id, for_update=True)
            stored = store.save(
                res_type,
                {**body, "resourceType": res_type, "id": res_id},
                method="PUT" if existing else "POST",
                owner_org_id=None,
                existing=existing,
            )
            moment = at(when).astimezone(UTC)
            pk = session.scalar(
                select(StoredResource.pk).where(
                    StoredResource.res_type == res_type, StoredResource.res_id == res_id
                )
            )
            session.execute(
                update(ResourceVersion)
                .where(
                    ResourceVersion.resource_pk == pk,
                    ResourceVersion.version_id == stored.version_id,
                )
                .values(last_updated=moment)
            )
            session.execute(update(StoredResource).where(StoredResource.pk == pk).values(last_updated=moment))


def task(
    task_id: str, owner: str, patient_id: str, history: list[tuple[str, str]], *, priority: str = "routine"
) -> None:
    """A referral Task moving through (status, instant) steps."""
    body = {
        "intent": "order",
        "priority": priority,
        "for": {"reference": f"Patient/{patient_id}"},
        "owner": {"reference": f"Organization/{owner}"},
        "authoredOn": history[0][1],
    }
    store_versions("Task", task_id, [({**body, "status": status}, when) for status, when in history])


def care_plan(
    cp_id: str, clinic: str, patient_id: str, activities: list[tuple[str, str]], *, status: str = "active"
) -> None:
    """A down-referral CarePlan with (date, status) follow-up activities."""
    body = {
        "status": status,
        "intent": "plan",
        "subject": {"reference": f"Patient/{patient_id}"},
        "author": {"reference": f"Organization/{clinic}"},
        "activity": [
            {"detail": {"kind": "Appointment", "status": st, "scheduledPeriod": {"start": day}}}
            for day, st in activities
        ],
    }
    store_versions("CarePlan", cp_id, [(body, "2024-01-01T00:00:00Z")])


def inpatient_stay(
    enc_id: str,
    hospital: str,
    patient_id: str,
    *,
    start: str,
    end: str | None,
    status: str = "finished",
    klass: str = "IMP",
) -> None:
    """An Encounter (inpatient by default) with its period."""
    period = {"start": start, **({"end": end} if end else {})}
    body = {
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": klass},
        "subject": {"reference": f"Patient/{patient_id}"},
        "serviceProvider": {"reference": f"Organization/{hospital}"},
        "period": period,
    }
    store_versions("Encounter", enc_id, [(body, "2024-01-01T00:00:00Z")])
