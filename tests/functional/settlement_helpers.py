"""Builders for settlement tests: a county, a patient with coverage, referrals and claims."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any

from flask.testing import FlaskClient

from referral_service.domain import resident_id
from referral_service.fhir.codes import BASE, CHARGE_CLASS_SYSTEM, COVERAGE_TYPE_SYSTEM
from tests.functional.fhir_helpers import Fhir, active_referral, organization, token_for

POVERTY_URL = f"{BASE}/StructureDefinition/poverty-registration"


class County:
    """Organisations, clients and helpers for one test county."""

    def __init__(self, client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]) -> None:
        cid, secret = make_api_client("county-platform", "system/*.cruds", "qs-health-commission")
        self.platform = Fhir(client, token_for(client, cid, secret))
        orgs = [
            organization("bureau", level=None, kind="insurer", name="医保局"),
            organization("th-01", level="township"),
            organization("vc-01", level="village"),
            organization("hosp", level="county", name="县医院"),
            organization("city", level="city", district="云州市", name="市医院"),
        ]
        for org in orgs:
            assert self.platform.put(f"Organization/{org['id']}", org).status_code == 201
        self.his: dict[str, Fhir] = {}
        for org in ("th-01", "hosp", "city"):
            cid, secret = make_api_client(f"{org}-his", "system/*.cruds", org)
            self.his[org] = Fhir(client, token_for(client, cid, secret))
        self.seq = 0

    def patient(
        self,
        *,
        poor: bool = False,
        poor_from: str = "2018-01-01",
        poor_to: str | None = None,
        coverage_from: str = "2018-01-01",
    ) -> tuple[str, str]:
        """A patient of the county with basic coverage; returns (patient id, coverage id)."""
        self.seq += 1
        number = resident_id.generate("620421", date(1960, 1, 1), "male", self.seq)
        body: dict[str, Any] = {
            "resourceType": "Patient",
            "identifier": [{"system": f"{BASE}/sid/resident-id", "value": number}],
            "name": [{"family": "李", "given": ["强"]}],
            "gender": "male",
            "birthDate": "1960-01-01",
            "address": [{"district": "青山县"}],
            "generalPractitioner": [{"reference": "Organization/th-01"}],
        }
        if poor:
            period = {"start": poor_from} | ({"end": poor_to} if poor_to else {})
            body["extension"] = [{"url": POVERTY_URL, "valuePeriod": period}]
        pid = self.platform.post("Patient", body).json["id"]
        cov = self.platform.post(
            "Coverage",
            basic_coverage(pid, {"start": coverage_from}),
        )
        assert cov.status_code == 201, cov.json
        return pid, cov.json["id"]

    def referral(
        self,
        pid: str,
        *,
        performer: str,
        requester: str = "th-01",
        kind: str = "up-referral",
        based_on: str | None = None,
        authored: str = "2026-03-01",
    ) -> str:
        """An active referral posted by the platform; returns its id."""
        body = active_referral(pid, kind, requester, performer, based_on=based_on, authored=authored)
        response = self.platform.post("ServiceRequest", body)
        assert response.status_code == 201, response.json
        return str(response.json["id"])


def basic_coverage(pid: str, period: dict[str, str]) -> dict[str, Any]:
    """The patient's basic medical insurance with the county's bureau over the period."""
    return {
        "resourceType": "Coverage",
        "status": "active",
        "type": {"coding": [{"system": COVERAGE_TYPE_SYSTEM, "code": "basic"}]},
        "beneficiary": {"reference": f"Patient/{pid}"},
        "payor": [{"reference": "Organization/bureau"}],
        "period": period,
    }


def claim(
    pid: str,
    cov: str,
    provider: str,
    items: list[tuple[str, str]],
    *,
    inpatient: bool = True,
    discharge: str = "2026-03-10",
    referral: str | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """A Claim with items as (amount, class) pairs."""
    body: dict[str, Any] = {
        "resourceType": "Claim",
        "status": "active",
        "use": "claim",
        "created": "2026-03-10",
        "identifier": [{"system": f"http://his.example/{provider}/claim", "value": key or uuid.uuid4().hex}],
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/claim-type",
                    "code": "institutional" if inpatient else "professional",
                }
            ]
        },
        "patient": {"reference": f"Patient/{pid}"},
        "provider": {"reference": f"Organization/{provider}"},
        "priority": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/processpriority", "code": "normal"}]
        },
        "billablePeriod": {"start": min("2026-03-01", discharge[:10]), "end": discharge},
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"reference": f"Coverage/{cov}"}}],
        "item": [
            {
                "sequence": i + 1,
                "productOrService": {"text": f"item {i + 1}"},
                "category": {"coding": [{"system": CHARGE_CLASS_SYSTEM, "code": cls}]},
                "net": {"value": float(Decimal(amount)), "currency": "CNY"},
            }
            for i, (amount, cls) in enumerate(items)
        ],
    }
    if referral:
        body["referral"] = {"reference": f"ServiceRequest/{referral}"}
    return body


def components(claim_response: dict[str, Any]) -> dict[str, Decimal]:
    """The settlement components of a ClaimResponse as exact decimals."""
    out = {}
    for total in claim_response["total"]:
        code = total["category"]["coding"][0]["code"]
        assert code not in out, f"{code} twice"
        assert total["amount"]["currency"] == "CNY"
        out[code] = Decimal(str(total["amount"]["value"])).quantize(Decimal("0.01"))
    return out
