"""Control characters in a URL, query or form are refused with 400 before any handler (both engines).

A NUL reached PostgreSQL from web paths (/clinic/visits/%00), the sign-in form and FHIR ids: 500s.
"""

from __future__ import annotations

from flask import Flask
from sqlalchemy import func, select

from referral_service.domain.registry import Patient
from referral_service.extensions import database
from tests.functional.test_web_support import PASSWORD, build_county, registration_form


def _patients() -> int:
    with database.session() as db:
        return int(db.scalar(select(func.count()).select_from(Patient)) or 0)


def test_web_paths_queries_and_forms_with_a_nul_are_refused(app: Flask) -> None:
    county = build_county(app)
    clinic = county.client("clinic")
    for path in ("/clinic/visits/%00", "/clinic/patients?q=a%00", "/clinic/patients?q%01=x",
                 "/hospital/settlements/a%00b/slip"):
        page = clinic.get(path)
        assert page.status_code == 400, path
        assert "control character" in page.get_data(as_text=True)
    assert clinic.get("/clinic/patients?q=%E7%8E%8B%09").status_code == 200  # a tab is fine
    before = _patients()
    refused = clinic.post("/clinic/patients", data=registration_form(family_name="李\x00"))
    assert refused.status_code == 400 and _patients() == before
    signin = county.client().post("/login", data={"username": "clinic\x00", "password": PASSWORD})
    assert signin.status_code == 400


def test_fhir_requests_with_a_nul_get_an_operation_outcome(app: Flask) -> None:
    county = build_county(app)
    client = county.app.test_client()
    for path in ("/fhir/Patient?name=%00", "/fhir/Patient/%00", "/fhir/metadata?x=%00"):
        answer = client.get(path)
        assert answer.status_code == 400, path
        assert answer.get_json()["resourceType"] == "OperationOutcome"
        assert answer.get_json()["issue"][0]["code"] == "value"
