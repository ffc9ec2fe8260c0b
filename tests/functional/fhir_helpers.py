"""Helpers for FHIR API tests: token-carrying client and sample resources."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from referral_service.fhir.codes import (
    BASE,
    FACILITY_LEVEL_SYSTEM,
    ICD10_SYSTEM,
    LOINC_SYSTEM,
    OBSERVATION_SYSTEM,
    ORGANIZATION_KIND_SYSTEM,
    REFERRAL_TYPE_SYSTEM,
    V3_ACT_CODE_SYSTEM,
)

FHIR = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
RESIDENT_ID = f"{BASE}/sid/resident-id"


def token_for(client: FlaskClient, client_id: str, secret: str, scope: str | None = None) -> str:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    data = {"grant_type": "client_credentials"}
    if scope:
        data["scope"] = scope
    response = client.post("/oauth/token", data=data, headers={"Authorization": f"Basic {raw}"})
    assert response.status_code == 200, response.json
    return str(response.json["access_token"])


class Fhir:
    """A FHIR client over the Flask test client with a bearer token."""

    def __init__(self, client: FlaskClient, token: str) -> None:
        self.client = client
        self.token = token

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": FHIR}
        headers.update(extra or {})
        return headers

    def get(self, path: str, **kw: Any) -> TestResponse:
        return self.client.get(f"/fhir/{path}", headers=self._headers(kw.pop("headers", None)), **kw)

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> TestResponse:
        return self.client.post(f"/fhir/{path}", json=body, headers=self._headers(headers), content_type=FHIR)

    def put(self, path: str, body: Any, headers: dict[str, str] | None = None) -> TestResponse:
        return self.client.put(f"/fhir/{path}", json=body, headers=self._headers(headers), content_type=FHIR)

    def delete(self, path: str) -> TestResponse:
        return self.client.delete(f"/fhir/{path}", headers=self._headers())

    def patch(self, path: str, operations: Any, headers: dict[str, str] | None = None,
              content_type: str = JSON_PATCH) -> TestResponse:
        """PATCH with a JSON Patch (or, given another `content_type`, whatever `operations` is)."""
        return self.client.patch(f"/fhir/{path}", data=json.dumps(operations), headers=self._headers(headers),
                                 content_type=content_type)


def active_referral(
    pid: str, kind: str, requester: str, performer: str, *, based_on: str | None = None,
    authored: str = "2026-03-01",
) -> dict[str, Any]:
    """A referral a HIS made itself and posts already `active` (DESIGN 9)."""
    body: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "code": {"coding": [{"system": REFERRAL_TYPE_SYSTEM, "code": kind}]},
        "subject": {"reference": f"Patient/{pid}"},
        "requester": {"reference": f"Organization/{requester}"},
        "performer": [{"reference": f"Organization/{performer}"}],
        "authoredOn": authored,
    }
    if based_on:
        body["basedOn"] = [{"reference": f"ServiceRequest/{based_on}"}]
    return body


def organization(
    org_id: str | None = None,
    level: str | None = "township",
    district: str = "青山县",
    kind: str | None = None,
    name: str = "测试卫生院",
) -> dict[str, Any]:
    types = []
    if level:
        types.append({"coding": [{"system": FACILITY_LEVEL_SYSTEM, "code": level}]})
    if kind:
        types.append({"coding": [{"system": ORGANIZATION_KIND_SYSTEM, "code": kind}]})
    org: dict[str, Any] = {
        "resourceType": "Organization",
        "name": name,
        "type": types,
        "address": [{"district": district}],
    }
    if org_id:
        org["id"] = org_id
    return org


def patient(
    resident_id: str | None = "62042119900307002X",
    family: str = "王",
    given: str = "芳",
    gender: str = "female",
    birth: str = "1990-03-07",
    gp: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Patient",
        "name": [{"family": family, "given": [given]}],
        "gender": gender,
        "birthDate": birth,
        "address": [{"district": "青山县", "line": ["城关镇", "王家庄村"]}],
    }
    if resident_id:
        body["identifier"] = [{"system": RESIDENT_ID, "value": resident_id}]
    if gp:
        body["generalPractitioner"] = [{"reference": f"Organization/{gp}"}]
    return body


RESIDENT_SAMPLE = "620421199003070021"


def township_visit(pid: str, status: str = "finished") -> dict[str, Any]:
    """An outpatient visit of the patient at township clinic th-01 (a finished one gets the rules'
    decision, `GuidanceResponse/gr-{id}`)."""
    return {
        "resourceType": "Encounter",
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{pid}"},
        "serviceProvider": {"reference": "Organization/th-01"},
    }


def created_id(fhir: Fhir, path: str, body: dict[str, Any]) -> str:
    """POST the resource (201 expected) and answer its id."""
    response = fhir.post(path, body)
    assert response.status_code == 201, response.json
    return str(response.json["id"])


def ordered_ids(response: Any) -> list[str]:
    """The ids of a searchset's matches, in order (the answer must be 200)."""
    assert response.status_code == 200, response.json
    return [e["resource"]["id"] for e in response.json.get("entry", []) if e["search"]["mode"] == "match"]


def paged_ids(fhir: Fhir, url: str) -> list[str]:
    """The match ids of a search read one entry a page, following its next links (which must keep
    every parameter: without a chained or `_has` one, the second page would hold everything)."""
    seen: list[str] = []
    page = fhir.get(f"{url}&_count=1")
    while True:
        seen += ordered_ids(page)
        nxt = next((lk["url"] for lk in page.json["link"] if lk["relation"] == "next"), None)
        if nxt is None:
            return seen
        page = fhir.client.get(nxt, headers=fhir._headers())


def identifier_of(resource: dict[str, Any], system: str) -> str:
    """The value of the resource's identifier in the system."""
    return next(str(i["value"]) for i in resource.get("identifier") or [] if i.get("system") == system)


def vital(code: str, value: float, unit: str, enc: str, pat: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC_SYSTEM, "code": code}]},
        "subject": {"reference": pat},
        "encounter": {"reference": enc},
        "effectiveDateTime": "2026-11-02T09:05:00+08:00",
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }


def visit_bundle(
    clinic: str,
    *,
    spo2: float = 90,
    diagnoses: tuple[str, ...] = ("J18.9", "R50.9"),
    start: str = "2026-11-02T09:00:00+08:00",
    person: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A first-visit transaction: Patient (matched on the resident identity number), a finished
    ambulatory Encounter at the clinic, 7 Observations (NEWS2 inputs), one Condition per diagnosis.

    `person`: the Patient to send (default: the sample resident registered with the clinic).
    """
    person = person or patient(RESIDENT_SAMPLE, gp=clinic)
    resident = identifier_of(person, RESIDENT_ID)
    p, e = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    conds = [f"urn:uuid:{uuid.uuid4()}" for _ in diagnoses]
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": p,
            "resource": person,
            "request": {
                "method": "POST",
                "url": "Patient",
                "ifNoneExist": f"identifier={RESIDENT_ID}|{resident}",
            },
        },
        {
            "fullUrl": e,
            "resource": {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"system": V3_ACT_CODE_SYSTEM, "code": "AMB"},
                "subject": {"reference": p},
                "serviceProvider": {"reference": f"Organization/{clinic}"},
                "period": {"start": start, "end": "2026-11-02T09:30:00+08:00"},
                "diagnosis": [{"condition": {"reference": c}} for c in conds],
            },
            "request": {"method": "POST", "url": "Encounter"},
        },
    ]
    obs = [
        vital("9279-1", 22, "/min", e, p),
        vital("59408-5", spo2, "%", e, p),
        vital("8867-4", 115, "/min", e, p),
        vital("8310-5", 38.5, "Cel", e, p),
    ]
    bp = vital("85354-9", 0, "mm[Hg]", e, p)
    del bp["valueQuantity"]
    bp["component"] = [
        {
            "code": {"coding": [{"system": LOINC_SYSTEM, "code": "8480-6"}]},
            "valueQuantity": {
                "value": 100,
                "unit": "mm[Hg]",
                "system": "http://unitsofmeasure.org",
                "code": "mm[Hg]",
            },
        },
        {
            "code": {"coding": [{"system": LOINC_SYSTEM, "code": "8462-4"}]},
            "valueQuantity": {
                "value": 60,
                "unit": "mm[Hg]",
                "system": "http://unitsofmeasure.org",
                "code": "mm[Hg]",
            },
        },
    ]
    acvpu = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": OBSERVATION_SYSTEM, "code": "acvpu"}]},
        "subject": {"reference": p},
        "encounter": {"reference": e},
        "valueString": "A",
    }
    oxygen = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": OBSERVATION_SYSTEM, "code": "supplemental-oxygen"}]},
        "subject": {"reference": p},
        "encounter": {"reference": e},
        "valueBoolean": False,
    }
    for o in [*obs, bp, acvpu, oxygen]:
        entries.append({"resource": o, "request": {"method": "POST", "url": "Observation"}})
    for c, code in zip(conds, diagnoses, strict=True):
        entries.append(
            {
                "fullUrl": c,
                "resource": {
                    "resourceType": "Condition",
                    "subject": {"reference": p},
                    "encounter": {"reference": e},
                    "code": {"coding": [{"system": ICD10_SYSTEM, "code": code}]},
                    "clinicalStatus": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                "code": "active",
                            }
                        ]
                    },
                },
                "request": {"method": "POST", "url": "Condition"},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def every_stored_version_validates() -> int:
    """Every stored version passes the checks a client's write gets (structure and profiles): the
    resources the service builds itself are not validated on write. Returns how many were checked."""
    from sqlalchemy import select

    from referral_service.domain.fhir_store import ResourceVersion, StoredResource
    from referral_service.extensions import database
    from referral_service.fhir import jsonio
    from referral_service.fhir.validation import check_resource

    with database.unit_of_work() as session:
        rows = session.execute(
            select(StoredResource.res_type, StoredResource.res_id, ResourceVersion.content)
            .join(ResourceVersion, ResourceVersion.resource_pk == StoredResource.pk)
            .where(ResourceVersion.deleted.is_(False))
        ).all()
    for res_type, res_id, content in rows:
        check_resource(res_type, dict(jsonio.loads(content)), url_id=res_id)  # raises on any error
    return len(rows)
