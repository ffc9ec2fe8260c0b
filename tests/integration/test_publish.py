"""Publishing the seeded registry as FHIR: the API then serves and searches it like any resource."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import func, select

from referral_service.domain.fhir_store import StoredResource, TokenIndex
from referral_service.domain.registry import Patient
from referral_service.extensions import database
from referral_service.seed.demo_county import seed_demo
from referral_service.seed.materialize import materialize
from tests.functional.fhir_helpers import Fhir, token_for


def test_seeded_registry_is_served_over_fhir(app: Flask) -> None:
    seed_demo(database.engine, patients=300, seed=7)
    with database.unit_of_work() as s:
        counts = materialize(s, chunk=128)
    assert counts["Patient"] == 300
    assert counts["Organization"] == 79
    with database.unit_of_work() as s:
        assert materialize(s) == dict.fromkeys(counts, 0)  # idempotent: nothing left to publish
    with database.session() as s:
        assert (
            s.scalar(
                select(func.count()).select_from(StoredResource).where(StoredResource.res_type == "Patient")
            )
            == 300
        )
        assert (
            s.scalar(
                select(func.count())
                .select_from(TokenIndex)
                .where(TokenIndex.param == "identifier", TokenIndex.res_type == "Patient")
            )
            >= 290
        )
        patient = s.scalars(
            select(Patient).where(Patient.resident_id.is_not(None)).order_by(Patient.id)
        ).first()
        assert patient is not None
    client = app.test_client()
    fhir = Fhir(client, token_for(client, "county-his", "demo-secret"))
    found = fhir.get(
        "Patient?identifier=http://referral-service.example/fhir/sid/resident-id|" + patient.resident_id
    ).json
    assert found["total"] == 1
    resource = found["entry"][0]["resource"]
    assert resource["id"] == patient.id
    assert resource["name"][0]["family"] == patient.family_name
    assert (
        resource["generalPractitioner"][0]["reference"] == f"Organization/{patient.general_practitioner_id}"
    )
    org = fhir.get("Organization/qs-county-hospital")
    assert org.status_code == 200
    assert org.json["name"] == "青山县人民医院"
