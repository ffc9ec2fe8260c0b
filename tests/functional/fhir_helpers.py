"""Helpers for FHIR API tests: token-carrying client and sample resources."""

from __future__ import annotations

import base64
from typing import Any

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from referral_service.fhir.codes import BASE, FACILITY_LEVEL_SYSTEM, ORGANIZATION_KIND_SYSTEM

FHIR = "application/fhir+json"
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
