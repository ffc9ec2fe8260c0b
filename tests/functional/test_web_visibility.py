"""The web pages show an organisation only what DESIGN section 8 lets it see, as the FHIR API does.

What it may not see is not named anywhere on a page: no name, no link, no identity number.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import pytest
from flask import Flask

from referral_service.domain.fhir_store import PatientAccess
from referral_service.extensions import database
from tests.functional.test_web_support import (
    OTHER_CLINIC,
    County,
    build_county,
    field_errors,
    registration_form,
    resident,
)


@pytest.fixture
def county(app: Flask) -> County:
    return build_county(app)


def _household_code(county: County, patient_id: str) -> str:
    page = county.client("clinic").get(f"/clinic/patients/{patient_id}").get_data(as_text=True)
    found = re.search(r"Household number</dt><dd>([^<]+)</dd>", page)
    assert found, page
    return found.group(1)


def _son_form(household_code: str) -> dict[str, Any]:
    """The registration of 李小明 into the household with that number."""
    return registration_form(
        given_name="小明",
        gender="male",
        birth_date="2015-06-01",
        resident_id=resident(date(2015, 6, 1), "male", 31),
        household_mode="existing",
        household_code=household_code,
        household_income=None,
        coverage_basic=None,
    )


def _register_son(county: County) -> str:
    """The clinic registers 李小明 into 李秀英's household; returns his patient id."""
    form = _son_form(_household_code(county, county.patients["woman"]))
    response = county.client("clinic").post("/clinic/patients/new", data=form)
    assert response.status_code == 302, field_errors(response.get_data(as_text=True))
    return str(response.headers["Location"]).rsplit("/", 1)[-1]


def _treated_by_other_clinic(patient_id: str) -> None:
    """The other clinic treated the patient: the standing access link a visit or a received referral
    leaves (DESIGN section 8: an organisation sees the patients it treated, referred or received)."""
    with database.unit_of_work() as db:
        db.add(PatientAccess(patient_id=patient_id, org_id=OTHER_CLINIC, reason="treated"))


def test_household_members_the_clinic_may_not_see_are_counted_not_named(county: County) -> None:
    woman = county.patients["woman"]
    son = _register_son(county)
    _treated_by_other_clinic(son)
    other = county.client("clinic2")
    assert other.get(f"/clinic/patients/{woman}").status_code == 404  # as the API answers her
    page = other.get(f"/clinic/patients/{son}").get_data(as_text=True)
    assert "李小明" in page  # the patient it treated, and his household
    assert "李秀英" not in page and woman not in page
    assert "1 other household member not in your care" in page
    zh = county.client("clinic2", lang="zh").get(f"/clinic/patients/{son}").get_data(as_text=True)
    assert "另有 1 名家庭成员不在本机构诊疗范围内" in zh and "李秀英" not in zh
    # The clinic that registered both sees both, and nothing is held back.
    own = county.client("clinic").get(f"/clinic/patients/{son}").get_data(as_text=True)
    assert "李秀英" in own and f"/clinic/patients/{woman}" in own
    assert "not in your care" not in own



def test_a_household_the_clinic_may_not_see_answers_as_an_unknown_number(county: County) -> None:
    code = _household_code(county, county.patients["woman"])
    other = county.client("clinic2")
    answers = {}
    for label, number in (("hidden", code), ("unknown", "no-such-household")):
        response = other.post("/clinic/patients/new", data=_son_form(number))
        answers[label] = (response.status_code, field_errors(response.get_data(as_text=True)))
    assert answers["hidden"] == answers["unknown"]
    assert answers["unknown"] == (422, {"household_code": "No household has this number."})
