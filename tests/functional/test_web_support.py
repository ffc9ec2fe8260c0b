"""Shared fixtures of the web-form tests: a small county, one signed-in client per role (no tests here)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from html import unescape
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from referral_service.domain import resident_id
from referral_service.domain.registry import Organization
from referral_service.extensions import database
from referral_service.seed.materialize import materialize
from referral_service.services.accounts import create_user
from referral_service.services.actors import actor_for
from referral_service.services.registration import register_patient

PASSWORD = "web-test-password"
CLINIC, OTHER_CLINIC, HOSPITAL, MCH = "t-th-01", "t-th-02", "t-county", "t-mch"
INSURER, POVERTY, COMMISSION = "t-insurer", "t-poverty", "t-commission"
ROLES = ("clinic", "hospital", "insurer", "monitor", "admin")
USER_ORGS = {
    "clinic": CLINIC,
    "clinic2": OTHER_CLINIC,
    "hospital": HOSPITAL,
    "insurer": INSURER,
    "monitor": POVERTY,
    "admin": COMMISSION,
}


@dataclass
class County:
    """The small county every web test starts from."""

    app: Flask
    patients: dict[str, str]  # label -> patient id

    def client(self, username: str | None = None, *, lang: str = "en") -> FlaskClient:
        """A test client, signed in as `username` (None: anonymous), in `lang`."""
        client = self.app.test_client()
        with client.session_transaction() as sess:
            sess["lang"] = lang
        if username is not None:
            response = client.post("/login", data={"username": username, "password": PASSWORD})
            assert response.status_code == 302, response.get_data(as_text=True)
        return client


def resident(birth: date, gender: str, sequence: int = 7) -> str:
    """A valid identity number from a region code no demo data uses."""
    return resident_id.generate("620425", birth, gender, sequence)


def registration_form(**overrides: Any) -> dict[str, Any]:
    """A complete registration form (what the browser posts)."""
    form = {
        "family_name": "李",
        "given_name": "秀英",
        "gender": "female",
        "birth_date": "1958-04-12",
        "resident_id": resident(date(1958, 4, 12), "female", 12),
        "phone": "13912345678",
        "district": "青山县",
        "township": "城关镇",
        "village": "东关村",
        "household_mode": "new",
        "household_income": "9600",
        "coverage_basic": "true",
        "coverage_start": "2018-01-01",
    }
    form.update(overrides)
    return {k: v for k, v in form.items() if v is not None}


def visit_form(**overrides: Any) -> dict[str, Any]:
    """A first-visit form with low SpO2 (NEWS2 high: emergency referral)."""
    form: dict[str, Any] = {
        "complaint": "咳嗽三天，气促",
        "respiration_rate": "24",
        "spo2": "88",
        "pulse": "112",
        "temperature": "38.6",
        "systolic_bp": "105",
        "diastolic_bp": "70",
        "consciousness": "A",
        "diagnosis": ["J18.9", "R50.9", ""],
        "charges-0-description": "血常规",
        "charges-0-charge_class": "A",
        "charges-0-amount": "35.50",
        "charges-1-description": "",
        "charges-1-charge_class": "A",
        "charges-1-amount": "",
    }
    form.update(overrides)
    return form


CALM = {
    "respiration_rate": "16",
    "spo2": "98",
    "pulse": "76",
    "temperature": "36.7",
    "systolic_bp": "124",
    "diastolic_bp": "78",
    "diagnosis": ["J06.9"],
}


def _org(org_id: str, **fields: Any) -> Organization:
    values: dict[str, Any] = {"name": org_id, "district": "青山县", "city": "云州市"}
    values.update(fields)
    return Organization(id=org_id, **values)


def build_county(app: Flask) -> County:
    """Two township clinics, two county hospitals, three offices, a user per role, two patients.

    Each test module wraps this in its own `county` fixture (on the `app` fixture's clean database).
    """
    with database.unit_of_work() as db:
        db.add_all(
            [
                _org(
                    CLINIC,
                    name="城关镇卫生院",
                    facility_level="township",
                    capabilities=["general"],
                    township="城关镇",
                ),
                _org(
                    OTHER_CLINIC,
                    name="新集乡卫生院",
                    facility_level="township",
                    capabilities=["general"],
                    township="新集乡",
                ),
                _org(HOSPITAL, name="青山县人民医院", facility_level="county", capabilities=["general"]),
                _org(
                    MCH,
                    name="青山县妇幼保健院",
                    facility_level="county",
                    capabilities=["obstetrics", "paediatrics"],
                ),
                _org(INSURER, name="青山县医疗保障局", kind="insurer"),
                _org(POVERTY, name="青山县乡村振兴局", kind="poverty-office"),
                _org(COMMISSION, name="青山县卫生健康局", kind="health-commission"),
            ]
        )
        db.flush()
        for username, org in USER_ORGS.items():
            role = "clinic" if username == "clinic2" else username
            create_user(
                db,
                username=username,
                password=PASSWORD,
                role=role,
                organization_id=org,
                display_name=f"{username} user",
                locale="zh",
            )
        materialize(db, ("Organization",))
    patients = {}
    with database.unit_of_work() as db:
        actor = actor_for(db, name="clinic", kind="user", organization_id=CLINIC)
        patients["elder"] = register_patient(
            db,
            actor,
            registration_form(
                birth_date="1950-03-07",
                gender="male",
                given_name="建国",
                family_name="王",
                resident_id=resident(date(1950, 3, 7), "male", 3),
                coverage_member_number="620429000098",
            ),
        ).patient_id
        patients["woman"] = register_patient(
            db,
            actor,
            registration_form(
                resident_id=resident(date(1958, 4, 12), "female", 11), coverage_member_number="620429000099"
            ),
        ).patient_id
    return County(app, patients)


def _confirm_on(client: FlaskClient, page_url: str, referrals: str) -> str:
    """Press the confirm button of the referral proposed on a decision page (its form posts to
    `{referrals}/<id>/confirm`); returns the ServiceRequest id."""
    page = client.get(page_url).get_data(as_text=True)
    sr_id = re.search(rf"{referrals}/([^/]+)/confirm", page)
    assert sr_id, page
    assert client.post(f"{referrals}/{sr_id.group(1)}/confirm").status_code == 302
    return sr_id.group(1)


def confirm_referral_of(client: FlaskClient, encounter_id: str) -> str:
    """Confirm the proposed referral shown on the decision page; returns the ServiceRequest id."""
    return _confirm_on(client, f"/clinic/visits/{encounter_id}", "/clinic/referrals")


def record_visit(client: FlaskClient, patient_id: str, **overrides: Any) -> str:
    """Record a first visit through the form; returns the Encounter id."""
    response = client.post(f"/clinic/patients/{patient_id}/visit", data=visit_form(**overrides))
    assert response.status_code == 302, response.get_data(as_text=True)
    return str(response.headers["Location"]).rsplit("/", 1)[-1]


def waiting_task(client: FlaskClient) -> str:
    """The first referral Task in the hospital's inbox."""
    page = client.get("/hospital").get_data(as_text=True)
    found = re.search(r"/hospital/referrals/([^\"]+)\"", page)
    assert found, page
    return found.group(1)


def confirm_down_referral_of(client: FlaskClient, stay_id: str) -> str:
    """Confirm the down-referral proposed on the discharge's decision page; returns the ServiceRequest id."""
    return _confirm_on(client, f"/hospital/discharges/{stay_id}", "/hospital/down-referrals")


def discharged_home(
    county: County, patient_id: str, *, confirm: bool = True, **charges: str
) -> tuple[FlaskClient, str]:
    """A first visit referred up, admitted and discharged home with I63.9 (the rules propose to refer the
    patient back down; `confirm`: the hospital confirms that down-referral) and the given charge fields;
    returns (the hospital's client, the stay's Encounter id)."""
    clinic = county.client("clinic")
    confirm_referral_of(clinic, record_visit(clinic, patient_id))
    hospital = county.client("hospital")
    task = waiting_task(hospital)
    stay = hospital.post(f"/hospital/referrals/{task}/admit").headers["Location"].split("/")[-2]
    data = {"disposition": "home", "diagnosis": "I63.9", **charges}
    assert hospital.post(f"/hospital/admissions/{stay}/discharge", data=data).status_code == 302
    if confirm:
        confirm_down_referral_of(hospital, stay)
    return hospital, stay


def field_errors(html: str) -> dict[str, str]:
    """Error messages beside fields: {input id: message}."""
    return {
        m.group(1): unescape(re.sub(r"<[^>]+>", " ", m.group(2))).strip()
        for m in re.finditer(r'<p class="field-error" id="([^"]+)-error">(.*?)</p>', html, re.S)
    }
