"""Every web page for every role: allowed (200), other roles (403), anonymous (to sign-in)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from flask import Flask

from tests.functional.test_web_support import (
    ROLES,
    County,
    build_county,
    confirm_down_referral_of,
    confirm_referral_of,
    record_visit,
    waiting_task,
)


@pytest.fixture
def county(app: Flask) -> County:
    return build_county(app)


@dataclass
class Journey:
    """Ids of one referral journey, so that every page has something to show."""

    patient: str
    visit: str
    task: str
    stay: str
    care_plan: str


@pytest.fixture
def journey(county: County) -> Journey:
    clinic = county.client("clinic")
    patient = county.patients["elder"]
    visit = record_visit(clinic, patient)
    confirm_referral_of(clinic, visit)
    hospital = county.client("hospital")
    task = waiting_task(hospital)
    admitted = hospital.post(f"/hospital/referrals/{task}/admit")
    stay = admitted.headers["Location"].split("/")[-2]
    charges = {"charges-0-description": "床位费", "charges-0-charge_class": "A", "charges-0-amount": "3000"}
    done = hospital.post(
        f"/hospital/admissions/{stay}/discharge",
        data={"disposition": "home", "diagnosis": "I63.9", **charges},
    )
    assert done.status_code == 302, done.get_data(as_text=True)
    confirm_down_referral_of(hospital, stay)
    assert hospital.post(f"/hospital/settlements/{stay}/confirm").status_code == 302
    follow = clinic.get("/clinic/follow-ups").get_data(as_text=True)
    care_plan = re.search(r"/clinic/follow-ups/([^\"]+)\"", follow)
    assert care_plan, follow
    return Journey(patient, visit, task, stay, care_plan.group(1))


def pages(j: Journey) -> list[tuple[str, frozenset[str]]]:
    clinic, hospital = frozenset({"clinic"}), frozenset({"hospital"})
    staff = frozenset({"clinic", "hospital"})
    return [
        ("/clinic", clinic),
        ("/clinic/patients?q=王", clinic),
        ("/clinic/patients/new", clinic),
        (f"/clinic/patients/{j.patient}", clinic),
        (f"/clinic/patients/{j.patient}/visit", clinic),
        (f"/clinic/visits/{j.visit}", clinic),
        ("/clinic/referrals", clinic),
        ("/clinic/follow-ups", clinic),
        (f"/clinic/follow-ups/{j.care_plan}", clinic),
        ("/hospital", hospital),
        (f"/hospital/referrals/{j.task}", hospital),
        (f"/hospital/discharges/{j.stay}", hospital),
        (f"/hospital/settlements/{j.stay}", hospital),
        (f"/hospital/settlements/{j.stay}/slip", hospital),
        ("/icd10?q=J18", staff),
        ("/api/icd10?q=J18", staff),
        ("/api/resident-id?value=11010519491231002X", staff),
        ("/office", frozenset({"insurer", "monitor", "admin"})),
    ]


def test_every_page_for_every_role(county: County, journey: Journey) -> None:
    for role in ROLES:
        client = county.client(role)
        for path, allowed in pages(journey):
            response = client.get(path)
            expected = 200 if role in allowed else 403
            assert response.status_code == expected, (role, path, response.status_code)
            if expected == 403:
                assert "Your role may not open this page." in response.get_data(as_text=True)


def test_anonymous_visitors_are_sent_to_sign_in(county: County, journey: Journey) -> None:
    client = county.client()
    for path, _ in pages(journey):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/login?next="), path


def test_home_sends_each_role_to_its_start_page(county: County) -> None:
    starts = {
        "clinic": "/clinic",
        "hospital": "/hospital",
        "insurer": "/office",
        "monitor": "/office",
        "admin": "/office",
    }
    for role, start in starts.items():
        assert county.client(role).get("/").headers["Location"] == start
    assert county.client().get("/").headers["Location"] == "/login"


def test_menus_follow_the_role(county: County) -> None:
    clinic = county.client("clinic").get("/clinic").get_data(as_text=True)
    assert 'href="/clinic/patients/new"' in clinic and 'href="/hospital"' not in clinic
    hospital = county.client("hospital").get("/hospital").get_data(as_text=True)
    assert 'href="/hospital"' in hospital and 'href="/clinic/patients"' not in hospital


def test_another_clinic_cannot_open_the_patient_or_the_visit(county: County, journey: Journey) -> None:
    other = county.client("clinic2")
    assert other.get(f"/clinic/patients/{journey.patient}").status_code == 404
    assert other.get(f"/clinic/visits/{journey.visit}").status_code == 404
    assert other.get(f"/clinic/follow-ups/{journey.care_plan}").status_code == 404
    assert journey.patient not in other.get("/clinic/patients?q=王").get_data(as_text=True)


def test_the_clinic_role_cannot_move_a_hospital_task(county: County, journey: Journey) -> None:
    clinic = county.client("clinic")
    visit = record_visit(clinic, county.patients["woman"])
    confirm_referral_of(clinic, visit)
    task = waiting_task(county.client("hospital"))
    # The clinic (requester, not owner) may not accept the task: its role may not even try.
    assert clinic.post(f"/hospital/referrals/{task}/accept").status_code == 403
