"""Clinic pages: search, registration, first visit, the rules' decision, confirm/override, follow-ups."""

from __future__ import annotations

import re
from datetime import date
from html import unescape
from typing import Any

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from referral_service.domain.fhir_store import StoredResource
from referral_service.extensions import database
from referral_service.fhir import codes
from tests.functional.test_web_support import (
    CALM,
    CLINIC,
    HOSPITAL,
    MCH,
    County,
    build_county,
    confirm_referral_of,
    discharged_home,
    field_errors,
    record_visit,
    registration_form,
    resident,
    visit_form,
    waiting_task,
)


@pytest.fixture
def county(app: Flask) -> County:
    return build_county(app)


def stored(res_type: str, res_id: str) -> dict[str, Any]:
    with database.unit_of_work() as db:
        raw = db.scalar(
            select(StoredResource.content).where(
                StoredResource.res_type == res_type, StoredResource.res_id == res_id
            )
        )
    assert raw is not None, f"{res_type}/{res_id}"
    return dict(orjson.loads(raw))


def stored_of(res_type: str, **where: str) -> list[dict[str, Any]]:
    with database.unit_of_work() as db:
        rows = db.scalars(select(StoredResource.content).where(StoredResource.res_type == res_type))
        found = [dict(orjson.loads(r)) for r in rows]
    return [r for r in found if all(str(r.get(k)) == v for k, v in where.items())]


def json_of(client: FlaskClient, url: str) -> Any:
    data = client.get(url).json
    assert data is not None, url
    return data


# ------------------------------------------------------------------------------ search


def test_patient_search_by_name_identity_number_and_household(county: County) -> None:
    client = county.client("clinic")
    by_name = client.get("/clinic/patients?q=王建").get_data(as_text=True)
    assert "王建国" in by_name and "李秀英" not in by_name
    number = resident(date(1950, 3, 7), "male", 3)
    by_id = client.get(f"/clinic/patients?q={number}").get_data(as_text=True)
    results = by_id.split("<tbody>", 1)[1]
    assert "王建国" in results
    assert number not in results and number[:6] + "********" + number[-4:] in results  # masked in lists
    assert "王建国" in client.get(f"/clinic/patients?q={number[:10]}").get_data(as_text=True)
    nothing = client.get("/clinic/patients?q=欧阳").get_data(as_text=True)
    assert "No patient found" in nothing
    assert client.get("/clinic/patients").status_code == 200  # no query: just the form


def test_household_number_finds_the_members(county: County) -> None:
    client = county.client("clinic")
    page = client.get(f"/clinic/patients/{county.patients['woman']}").get_data(as_text=True)
    household = re.search(r"Household number</dt><dd>([^<]+)</dd>", page)
    assert household, page
    found = client.get(f"/clinic/patients?q={household.group(1)}").get_data(as_text=True)
    assert "李秀英" in found


# ------------------------------------------------------------------------------ registration

GOOD = resident(date(1958, 4, 12), "female", 12)
BAD_CHECK = GOOD[:-1] + ("1" if GOOD[-1] != "1" else "2")


def test_registration_creates_patient_household_coverage_and_poverty_registration(county: County) -> None:
    client = county.client("clinic")
    form = registration_form(
        family_name="赵",
        given_name="小红",
        resident_id=resident(date(1990, 5, 1), "female", 21),
        birth_date="1990-05-01",
        poverty_registered="true",
        poverty_start="2019-03-01",
        coverage_member_number="620429000777",
    )
    response = client.post("/clinic/patients/new", data=form)
    assert response.status_code == 302
    patient_id = response.headers["Location"].rsplit("/", 1)[-1]
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "赵小红" in page and "The patient is registered." in page
    assert "Registered poor today." in page and "basic medical insurance" in page
    assert "¥9,600.00" in page or "CN¥9,600.00" in page
    patient = stored("Patient", patient_id)
    assert patient["identifier"][0] == {"system": codes.RESIDENT_ID_SYSTEM, "value": form["resident_id"]}
    assert patient["generalPractitioner"] == [{"reference": f"Organization/{CLINIC}"}]
    assert patient["address"][0]["district"] == "青山县"
    assert patient["extension"][0]["valuePeriod"] == {"start": "2019-03-01"}
    coverage = stored_of("Coverage")
    mine = [c for c in coverage if c["beneficiary"]["reference"] == f"Patient/{patient_id}"]
    assert mine[0]["type"]["coding"][0]["code"] == "basic" and mine[0]["subscriberId"] == "620429000777"
    groups = [
        g
        for g in stored_of("Group")
        if {"reference": f"Patient/{patient_id}"} in [m["entity"] for m in g["member"]]
    ]
    assert groups and groups[0]["extension"][0]["valueMoney"] == {"value": 9600.0, "currency": "CNY"}


def test_the_patient_page_names_the_insurance_status_in_chinese(county: County) -> None:
    client = county.client("clinic", lang="zh")
    response = client.post("/clinic/patients/new", data=registration_form(
        given_name="小兰", resident_id=resident(date(1991, 6, 2), "female", 23), birth_date="1991-06-02"))
    assert response.status_code == 302
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    insurance = page.split("<h2>医疗保险</h2>", 1)[1].split("</section>", 1)[0]
    assert "基本医疗保险 · 有效 · 起" in insurance and "active" not in insurance  # no member number: no gap


def test_joining_an_existing_household(county: County) -> None:
    client = county.client("clinic")
    page = client.get(f"/clinic/patients/{county.patients['woman']}").get_data(as_text=True)
    code = re.search(r"Household number</dt><dd>([^<]+)</dd>", page).group(1)  # type: ignore[union-attr]
    form = registration_form(
        given_name="小明",
        gender="male",
        birth_date="2015-06-01",
        resident_id=resident(date(2015, 6, 1), "male", 31),
        household_mode="existing",
        household_code=code,
        household_income=None,
        coverage_basic=None,
    )
    response = client.post("/clinic/patients/new", data=form)
    assert response.status_code == 302, field_errors(response.get_data(as_text=True))
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "李秀英" in page and "李小明" in page
    assert "No insurance recorded" in page


def test_a_newborn_registers_without_an_identity_number(county: County) -> None:
    form = registration_form(
        given_name="宝宝",
        resident_id="",
        birth_date=date.today().isoformat(),
        household_mode="none",
        coverage_basic=None,
    )
    response = county.client("clinic").post("/clinic/patients/new", data=form)
    assert response.status_code == 302
    assert "identifier" not in stored("Patient", response.headers["Location"].rsplit("/", 1)[-1])


# Validation does not depend on the database engine: these run on SQLite only, to keep the suite fast.
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"family_name": ""}, "family_name", "This field is required."),
        ({"gender": ""}, "gender", "This field is required."),
        ({"gender": "x"}, "gender", "Choose one of the options."),
        ({"birth_date": "1958-13-40"}, "birth_date", "Enter a date as YYYY-MM-DD."),
        ({"birth_date": "2999-01-01"}, "birth_date", "Enter a birth date between 1900 and today."),
        ({"resident_id": "62042519580412011"}, "resident_id", "must have 18 characters"),
        ({"resident_id": "620425580412011"}, "resident_id", "15-digit legacy"),
        ({"resident_id": BAD_CHECK}, "resident_id", "check character"),
        ({"birth_date": "1958-04-13"}, "resident_id", "differs from birthDate"),
        ({"gender": "male"}, "resident_id", "denotes female"),
        ({"phone": "call me"}, "phone", "Enter a telephone number"),
        ({"village": ""}, "village", "This field is required."),
        (
            {"household_mode": "existing", "household_code": ""},
            "household_code",
            "Give the household number.",
        ),
        (
            {"household_mode": "existing", "household_code": "nope"},
            "household_code",
            "No household has this number.",
        ),
        ({"household_income": ""}, "household_income", "Give the household's annual income."),
        ({"household_income": "-5"}, "household_income", "Enter an amount between 0 and"),
        ({"poverty_registered": "true"}, "poverty_start", "Give the date of poverty registration."),
        (
            {"poverty_registered": "true", "poverty_start": "2020-01-01", "poverty_end": "2019-01-01"},
            "poverty_end",
            "The end cannot be before the start.",
        ),
        ({"coverage_start": ""}, "coverage_start", "Give the start of the insurance cover."),
        ({"coverage_start": "9999-12-31"}, "coverage_start", "Enter a date between 1900-01-01 and 2199"),
        ({"birth_date": "1899-12-31", "resident_id": None}, "birth_date", "Enter a birth date between 1900"),
    ],
)
def test_registration_errors_are_shown_beside_the_field(
    county: County, changes: dict[str, str], field: str, message: str
) -> None:
    form = registration_form(**changes)
    response = county.client("clinic").post("/clinic/patients/new", data=form)
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    errors = field_errors(html)
    assert message in errors.get(field, ""), errors
    assert f'href="#{field}"' in html  # the summary links to the field
    assert f'id="{field}"' in html and 'aria-invalid="true"' in html
    for name in ("family_name", "given_name", "village", "phone"):  # nothing typed is lost
        if form.get(name):
            assert f'value="{form[name]}"' in html, name


def test_duplicate_identity_number_is_refused_beside_the_field(county: County) -> None:
    number = resident(date(1950, 3, 7), "male", 3)  # the elder's
    form = registration_form(resident_id=number, birth_date="1950-03-07", gender="male")
    response = county.client("clinic").post("/clinic/patients/new", data=form)
    assert response.status_code == 422
    assert "already registered" in field_errors(response.get_data(as_text=True))["resident_id"]


def test_registration_errors_in_chinese(county: County) -> None:
    client = county.client("clinic", lang="zh")
    response = client.post(
        "/clinic/patients/new", data=registration_form(family_name="", resident_id=BAD_CHECK)
    )
    errors = field_errors(response.get_data(as_text=True))
    assert errors["family_name"] == "此项为必填项。"
    assert "校验码错误" in errors["resident_id"]


def test_registration_refuses_days_outside_1900_to_2199_in_chinese(county: County) -> None:
    client = county.client("clinic", lang="zh")
    patients = len(stored_of("Patient"))
    form = registration_form(
        poverty_registered="true",
        poverty_start="0001-01-01",
        poverty_end="9999-12-31",
        coverage_start="9999-12-31",
    )
    response = client.post("/clinic/patients/new", data=form)
    assert response.status_code == 422
    errors = field_errors(response.get_data(as_text=True))
    for name in ("poverty_start", "poverty_end", "coverage_start"):
        assert errors.get(name) == "请填写 1900-01-01 至 2199-12-31 之间的日期。", errors
    for born in ("1899-12-31", "2999-01-01"):
        form = registration_form(birth_date=born, resident_id=None)
        response = client.post("/clinic/patients/new", data=form)
        assert response.status_code == 422
        errors = field_errors(response.get_data(as_text=True))
        assert errors.get("birth_date") == "出生日期应在1900年至今天之间。", errors
    assert len(stored_of("Patient")) == patients  # nothing was registered
    # the edges of the range are days like any other
    form = registration_form(
        birth_date="1900-01-01", resident_id=None, poverty_registered="true", poverty_start="1900-01-01"
    )
    assert client.post("/clinic/patients/new", data=form).status_code == 302


def test_live_identity_number_check(county: County) -> None:
    client = county.client("clinic")
    good = resident(date(1970, 1, 2), "male", 40)
    wrong = good[:-1] + ("1" if good[-1] != "1" else "2")
    answer = json_of(client, f"/api/resident-id?value={good}")
    assert answer == {
        "valid": True,
        "problems": [],
        "birth_date": "1970-01-02",
        "gender": "male",
        "registered": False,
    }
    bad = json_of(client, f"/api/resident-id?value={wrong}")
    assert bad["valid"] is False and "check character" in bad["problems"][0]
    mismatch = json_of(client, f"/api/resident-id?value={good}&birth_date=1970-01-03&gender=female")
    assert len(mismatch["problems"]) == 2
    taken = json_of(client, f"/api/resident-id?value={resident(date(1950, 3, 7), 'male', 3)}")
    assert taken["registered"] is True and taken["valid"] is False
    zh = json_of(county.client("clinic", lang="zh"), f"/api/resident-id?value={wrong}")
    assert zh["problems"][0].startswith("校验码错误")


def test_icd10_lookup_by_code_and_chinese_name(county: County) -> None:
    client = county.client("clinic")
    codes_j18 = client.get("/api/icd10?q=j18").json
    assert codes_j18 is not None
    assert codes_j18[:2] == [
        {"code": "J18.0", "name": "Bronchopneumonia, unspecified"},
        {"code": "J18.9", "name": "Pneumonia, unspecified"},
    ]
    zh = county.client("clinic", lang="zh").get("/api/icd10?q=脑梗死").json
    assert zh is not None and {"code": "I63.9", "name": "脑梗死"} in zh
    assert client.get("/api/icd10?q=").json == []
    page = client.get("/icd10?q=I63").get_data(as_text=True)
    assert "I63.9" in page and "Cerebral infarction" in page


# ------------------------------------------------------------------------------ first visit


def test_first_visit_with_low_spo2_proposes_an_emergency_referral(county: County) -> None:
    client = county.client("clinic")
    encounter_id = record_visit(client, county.patients["elder"])
    page = client.get(f"/clinic/visits/{encounter_id}").get_data(as_text=True)
    assert "Refer up to the county hospital" in page and "emergency" in page
    assert "news2-high" in page and "news2-medium" in page
    assert "88 %" in page and "Total 9; highest single parameter 3." in page
    assert '<dd class="target">青山县人民医院</dd>' in page
    assert "Confirm and send the referral" in page
    assert re.search(r"Rule set up-referral-[a-z]+, version [0-9.]+</p>", page)  # not "id|version"
    # Stored as the API stores it, with the same rules run.
    encounter = stored("Encounter", encounter_id)
    assert encounter["class"] == {"system": codes.V3_ACT_CODE_SYSTEM, "code": "AMB"}
    assert encounter["status"] == "finished"
    assert encounter["serviceProvider"] == {"reference": f"Organization/{CLINIC}"}
    assert len(encounter["diagnosis"]) == 2
    observations = [
        o for o in stored_of("Observation") if o["encounter"]["reference"] == f"Encounter/{encounter_id}"
    ]
    by_code = {o["code"]["coding"][0]["code"]: o for o in observations}
    assert by_code["59408-5"]["valueQuantity"] == {
        "value": 88,
        "unit": "%",
        "system": codes.UCUM_SYSTEM,
        "code": "%",
    }
    assert by_code["8310-5"]["valueQuantity"]["value"] == 38.6
    assert [c["code"]["coding"][0]["code"] for c in by_code["85354-9"]["component"]] == ["8480-6", "8462-4"]
    assert by_code["acvpu"]["valueString"] == "A" and by_code["supplemental-oxygen"]["valueBoolean"] is False
    guidance = stored("GuidanceResponse", f"gr-{encounter_id}")
    assert [r["coding"][0]["code"] for r in guidance["reasonCode"]] == ["news2-high", "news2-medium"]
    referral = stored("ServiceRequest", f"ref-up-{encounter_id}")
    assert (referral["status"], referral["priority"], referral["performer"]) == (
        "draft",
        "stat",
        [{"reference": f"Organization/{HOSPITAL}"}],
    )
    claim = stored("Claim", f"claim-{encounter_id}")  # settled as the visit ended (one-stop, outpatient)
    assert claim["status"] == "active" and claim["type"]["coding"][0]["code"] == "professional"
    assert claim["item"][0]["net"] == {"value": 35.5, "currency": "CNY"}
    assert claim["item"][0]["category"]["coding"][0] == {"system": codes.CHARGE_CLASS_SYSTEM, "code": "A"}
    assert claim["insurance"][0]["coverage"]["reference"].startswith("Coverage/")


def test_a_proposal_outside_the_county_is_noted_in_the_users_language(county: County) -> None:
    """No county hospital in 青山县 any more: the one outside is proposed, and the page says so."""
    from html import unescape

    from referral_service.domain.registry import Organization

    with database.unit_of_work() as db:
        for org_id in (HOSPITAL, MCH):
            org = db.get(Organization, org_id)
            assert org is not None
            org.district = "邻县"
    encounter_id = record_visit(county.client("clinic"), county.patients["elder"])
    en = unescape(county.client("clinic").get(f"/clinic/visits/{encounter_id}").get_data(as_text=True))
    note = "no county hospital is registered in the clinic's county (青山县): proposed 青山县人民医院 (邻县)"
    assert note in en
    assert "本县（青山县）未登记县级医院" not in en
    zh = county.client("clinic", lang="zh").get(f"/clinic/visits/{encounter_id}").get_data(as_text=True)
    assert "本县（青山县）未登记县级医院：建议转往县外的青山县人民医院（邻县）" in zh
    assert "no county hospital is registered" not in zh


def test_calm_visit_is_treated_here(county: County) -> None:
    client = county.client("clinic")
    encounter_id = record_visit(
        client, county.patients["elder"], **CALM, **{"charges-0-amount": "", "charges-0-description": ""}
    )
    page = client.get(f"/clinic/visits/{encounter_id}").get_data(as_text=True)
    assert "Treat here at the clinic" in page and "Proposed referral" not in page
    assert stored_of("ServiceRequest") == []


def test_incomplete_news2_is_reported(county: County) -> None:
    client = county.client("clinic")
    encounter_id = record_visit(client, county.patients["woman"], spo2="", respiration_rate="")
    page = client.get(f"/clinic/visits/{encounter_id}").get_data(as_text=True)
    assert "NEWS2 incomplete: no respiration rate, SpO2" in page
    assert page.count("not measured") == 2


# Validation does not depend on the database engine: these run on SQLite only, to keep the suite fast.
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"complaint": " "}, "complaint", "This field is required."),
        ({"spo2": "abc"}, "spo2", "Enter a number."),
        ({"spo2": "101"}, "spo2", "Enter a value between 50 and 100."),
        ({"respiration_rate": "22.5"}, "respiration_rate", "Enter a whole number."),
        ({"temperature": "38.055"}, "temperature", "Use at most two decimal places."),
        ({"spo2": "91.55"}, "spo2", "Use at most one decimal place."),
        ({"temperature": "3.8e1"}, "temperature", "Enter a number."),
        ({"spo2": "NaN"}, "spo2", "Enter a number."),
        ({"temperature": "45"}, "temperature", "Enter a value between 30 and 44."),
        ({"pulse": "300"}, "pulse", "Enter a value between 20 and 250."),
        ({"diastolic_bp": ""}, "diastolic_bp", "Give both systolic and diastolic pressure."),
        (
            {"systolic_bp": "60", "diastolic_bp": "80"},
            "systolic_bp",
            "Systolic pressure cannot be below diastolic",
        ),
        ({"consciousness": "Z"}, "consciousness", "Choose one of the options."),
        ({"pregnancy": "pregnant"}, "pregnancy", "The patient is registered as male."),
        ({"diagnosis": ["", ""]}, "diagnoses", "Give at least one diagnosis."),
        ({"diagnosis": ["J18.9", "pneumonia"]}, "diagnosis-1", "Not an ICD-10 code"),
        ({"charges-0-amount": "-1"}, "charges-0-amount", "Enter an amount between 0.01 and 1000000 yuan."),
        ({"charges-0-amount": "1.234"}, "charges-0-amount", "Use at most two decimal places."),
        ({"charges-0-amount": "1e3"}, "charges-0-amount", "Enter an amount in yuan, in digits (such as 35"),
        ({"charges-0-amount": "NaN"}, "charges-0-amount", "Enter an amount in yuan, in digits"),
        ({"charges-0-amount": "Infinity"}, "charges-0-amount", "Enter an amount in yuan, in digits"),
        ({"charges-0-amount": "1_000"}, "charges-0-amount", "Enter an amount in yuan, in digits"),
        ({"charges-0-amount": "0x10"}, "charges-0-amount", "Enter an amount in yuan, in digits"),
        ({"charges-0-description": ""}, "charges-0-description", "This field is required."),
        ({"charges-0-charge_class": "D"}, "charges-0-charge_class", "Choose one of the options."),
    ],
)
def test_visit_errors_are_shown_beside_the_field(
    county: County, changes: dict[str, Any], field: str, message: str
) -> None:
    client = county.client("clinic")
    form = visit_form(**changes)
    response = client.post(f"/clinic/patients/{county.patients['elder']}/visit", data=form)
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert message in field_errors(html).get(field, ""), field_errors(html)
    if "complaint" not in changes:
        assert "咳嗽三天，气促" in html  # what was typed stays
    for code in form["diagnosis"]:
        assert not code.strip() or f'value="{code}"' in html
    assert stored_of("Encounter") == []  # nothing stored on a validation error


def _summary_links(html: str) -> dict[str, str]:
    summary = html.split('id="error-summary"', 1)[1].split("</div>", 1)[0]
    return {m.group(1): unescape(m.group(2)) for m in re.finditer(r'<a href="#([^"]+)">(.*?)</a>', summary)}


def test_the_error_summary_says_which_field_each_message_is_about(county: County) -> None:
    """Two "This field is required." in a row say nothing; each names its field, in the user's language."""
    response = county.client("clinic", lang="zh").post(
        f"/clinic/patients/{county.patients['elder']}/visit",
        data=visit_form(**{"complaint": "", "spo2": "abc", "diagnosis": ["J18.9", "pneumonia"],
                           "charges-0-description": ""}),
    )
    assert response.status_code == 422
    assert _summary_links(response.get_data(as_text=True)) == {
        "complaint": "主诉：此项为必填项。",
        "spo2": "血氧饱和度：请填写数字。",
        "diagnosis-1": "诊断 2：不是有效的 ICD-10 编码（一个字母加两位数字，可带小数点和细分码）。",
        "charges-0-description": "项目 1：此项为必填项。",
    }
    client = county.client("clinic")
    encounter_id = record_visit(client, county.patients["elder"])
    override = client.post(f"/clinic/referrals/ref-up-{encounter_id}/override", data={"reason": ""})
    assert _summary_links(override.get_data(as_text=True)) == {
        "action": "What instead: This field is required.", "reason": "Reason: This field is required.",
    }


def test_a_name_from_the_list_is_accepted_as_diagnosis(county: County) -> None:
    client = county.client("clinic")
    encounter_id = record_visit(client, county.patients["elder"], **{**CALM, "diagnosis": ["脑梗死"]})
    page = client.get(f"/clinic/visits/{encounter_id}").get_data(as_text=True)
    assert "county-only-dx" in page and "I63.9" in page


# ------------------------------------------------------------------------------ confirm / override


def test_confirming_sends_the_referral(county: County) -> None:
    client = county.client("clinic")
    encounter_id = record_visit(client, county.patients["elder"])
    sr_id = confirm_referral_of(client, encounter_id)
    page = client.get(f"/clinic/visits/{encounter_id}").get_data(as_text=True)
    assert "The referral is confirmed and sent to the hospital." in page
    assert "waiting for the hospital" in page and "Confirm and send" not in page
    assert stored("ServiceRequest", sr_id)["status"] == "active"
    assert stored("Task", f"task-{sr_id}")["status"] == "requested"
    assert client.post(f"/clinic/referrals/{sr_id}/confirm").status_code == 409  # not twice
    listing = client.get("/clinic/referrals").get_data(as_text=True)
    assert "王建国" in listing and "waiting for the hospital" in listing


def test_override_needs_a_reason(county: County) -> None:
    client = county.client("clinic")
    encounter_id = record_visit(client, county.patients["elder"])
    sr_id = f"ref-up-{encounter_id}"
    response = client.post(
        f"/clinic/referrals/{sr_id}/override", data={"action": "no-referral", "reason": " "}
    )
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert field_errors(html)["reason"] == "This field is required."
    assert '<details class="override" open>' in html and 'value="no-referral" checked' in html
    nothing = client.post(f"/clinic/referrals/{sr_id}/override", data={"action": "change", "reason": "x"})
    assert "Choose another hospital or urgency." in field_errors(nothing.get_data(as_text=True))["target_id"]
    assert stored("ServiceRequest", sr_id)["status"] == "draft"


def test_every_link_of_the_error_summary_leads_to_a_field(county: County) -> None:
    """The radio group included: its link lands on the first choice, which says it is in error."""
    client = county.client("clinic")
    encounter_id = record_visit(client, county.patients["elder"])
    response = client.post(f"/clinic/referrals/ref-up-{encounter_id}/override", data={"reason": ""})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    summary = html.split('id="error-summary"', 1)[1].split("</div>", 1)[0]
    targets = re.findall(r'href="#([^"]+)"', summary)
    assert "action" in targets and "reason" in targets
    for target in targets:
        assert re.search(rf'<(input|select|textarea)[^>]* id="{target}"', html), target
    first = re.search(r'<input [^>]*id="action"[^>]*>', html)
    assert first is not None
    assert 'aria-invalid="true"' in first.group(0) and 'aria-describedby="action-error"' in first.group(0)


def test_override_to_treat_here(county: County) -> None:
    client = county.client("clinic")
    encounter_id = record_visit(client, county.patients["elder"])
    sr_id = f"ref-up-{encounter_id}"
    done = client.post(
        f"/clinic/referrals/{sr_id}/override", data={"action": "no-referral", "reason": "家属要求在本院治疗"}
    )
    assert done.status_code == 302
    page = client.get(f"/clinic/visits/{encounter_id}").get_data(as_text=True)
    assert "withdrawn" in page and "家属要求在本院治疗" in page
    assert stored("ServiceRequest", sr_id)["status"] == "revoked"
    assert stored("Task", f"task-{sr_id}")["status"] == "cancelled"


def test_override_to_another_hospital_and_urgency(county: County) -> None:
    client = county.client("clinic")
    encounter_id = record_visit(client, county.patients["woman"])
    sr_id = f"ref-up-{encounter_id}"
    unknown = client.post(
        f"/clinic/referrals/{sr_id}/override",
        data={"action": "change", "target_id": "nowhere", "reason": "x"},
    )
    assert "Choose a hospital from the list." in field_errors(unknown.get_data(as_text=True))["target_id"]
    done = client.post(
        f"/clinic/referrals/{sr_id}/override",
        data={"action": "change", "target_id": MCH, "priority": "urgent", "reason": "孕期，妇幼更合适"},
    )
    assert done.status_code == 302
    referral = stored("ServiceRequest", sr_id)
    assert referral["status"] == "active" and referral["priority"] == "urgent"
    assert referral["performer"] == [{"reference": f"Organization/{MCH}"}]
    page = client.get(f"/clinic/visits/{encounter_id}").get_data(as_text=True)
    assert "青山县妇幼保健院" in page and "孕期，妇幼更合适" in page


def test_only_the_referring_clinic_confirms(county: County) -> None:
    client = county.client("clinic")
    encounter_id = record_visit(client, county.patients["elder"])
    other = county.client("clinic2")
    assert other.post(f"/clinic/referrals/ref-up-{encounter_id}/confirm").status_code == 404
    assert stored("ServiceRequest", f"ref-up-{encounter_id}")["status"] == "draft"


def _his_referral(
    patient_id: str, kind: str, *, his: str, sender: str, receiver: str, priority: str, authored: str
) -> str:
    """An active referral (`kind`: up-referral, down-referral) that the sender's HIS client `his` POSTs
    itself, without a visit (DESIGN section 9); returns the ServiceRequest id."""
    from referral_service.services import resources
    from referral_service.services.actors import actor_for

    body = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "priority": priority,
        "code": {"coding": [{"system": codes.REFERRAL_TYPE_SYSTEM, "code": kind}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "requester": {"reference": f"Organization/{sender}"},
        "performer": [{"reference": f"Organization/{receiver}"}],
        "authoredOn": authored,
    }
    with database.unit_of_work() as db:
        client = actor_for(db, name=his, kind="client", organization_id=sender)
        return resources.create(db, client, "ServiceRequest", body).stored.res_id


def test_a_referral_without_a_visit_is_listed_with_a_link_to_the_patient(county: County) -> None:
    """No Encounter, so no decision page: the lists link to the patient instead (they used to 500)."""
    patient_id = county.patients["elder"]
    sr_id = _his_referral(
        patient_id, "up-referral", his="township-his", sender=CLINIC, receiver=HOSPITAL, priority="urgent",
        authored="2026-11-02T09:30:00+08:00",
    )
    client = county.client("clinic")
    listing = client.get("/clinic/referrals")
    assert listing.status_code == 200
    page = listing.get_data(as_text=True)
    row = page.split('id="up-referrals"', 1)[1].split("</table>", 1)[0]
    assert f'href="/clinic/patients/{patient_id}">王建国</a>' in row and "no visit recorded" in row
    assert "/clinic/visits/" not in row
    assert client.get("/clinic").status_code == 200
    hospital = county.client("hospital")
    task = waiting_task(hospital)
    assert stored("Task", task)["focus"] == {"reference": f"ServiceRequest/{sr_id}"}
    assert hospital.get(f"/hospital/referrals/{task}").status_code == 200
    declined = hospital.post(f"/hospital/referrals/{task}/decline", data={"reason": "无床位"})
    assert declined.status_code == 302
    home = client.get("/clinic")  # the declined list shows it too
    assert home.status_code == 200
    assert f'href="/clinic/patients/{patient_id}">王建国</a>' in home.get_data(as_text=True)
    assert client.get(f"/clinic/patients/{patient_id}").status_code == 200
    zh = county.client("clinic", lang="zh").get("/clinic/referrals")
    assert zh.status_code == 200 and "无就诊记录" in zh.get_data(as_text=True)


# ------------------------------------------------------------------------------ follow-ups


def test_down_referred_patient_is_followed_up(county: County) -> None:
    discharged_home(county, county.patients["elder"])
    client = county.client("clinic")
    listing = client.get("/clinic/follow-ups").get_data(as_text=True)
    assert "王建国" in listing and "0 / 3" in listing and "青山县人民医院" in listing
    referrals = client.get("/clinic/referrals").get_data(as_text=True)
    assert "waiting for the clinic" in referrals
    task = re.search(r"/clinic/down-referrals/([^/]+)/accept", listing).group(1)  # type: ignore[union-attr]
    assert client.post(f"/clinic/down-referrals/{task}/accept").status_code == 302
    care_plan = re.search(r"/clinic/follow-ups/([^\"]+)\"", listing).group(1)  # type: ignore[union-attr]
    empty = client.post(f"/clinic/follow-ups/{care_plan}", data={"notes": ""})
    assert (
        empty.status_code == 422
        and field_errors(empty.get_data(as_text=True))["notes"] == "This field is required."
    )
    done = client.post(f"/clinic/follow-ups/{care_plan}", data={"notes": "血压平稳，继续康复训练"})
    assert done.status_code == 302
    after = client.get("/clinic/follow-ups").get_data(as_text=True)
    assert "1 / 3" in after and "2 more scheduled" in after
    plan = stored("CarePlan", care_plan)
    assert [a["detail"]["status"] for a in plan["activity"]] == ["completed", "scheduled", "scheduled"]
    home = client.get("/clinic").get_data(as_text=True)
    assert "王建国" in home


def test_the_overview_counts_the_patients_to_accept_that_the_follow_ups_page_lists(county: County) -> None:
    """One list for both pages: a down-referral a hospital's HIS POSTs itself has no CarePlan, yet its
    patient is to be accepted, so the follow-ups page lists it (to accept, no follow-ups to record)."""
    discharged_home(county, county.patients["elder"])
    _his_referral(
        county.patients["woman"], "down-referral", his="county-his", sender=HOSPITAL, receiver=CLINIC,
        priority="routine", authored="2026-11-12T10:00:00+08:00",
    )
    client = county.client("clinic")
    home = client.get("/clinic").get_data(as_text=True)
    assert "2 down-referred patients to accept." in home
    listing = client.get("/clinic/follow-ups").get_data(as_text=True)
    rows = listing.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    assert rows.count("<tr") == 2 and rows.count("Accept the patient") == 2
    assert "王建国" in rows and "李秀英" in rows and "no follow-up plan" in rows
    assert rows.count("Record follow-up") == 1  # only the patient with a plan has visits to record
    task = re.findall(r"/clinic/down-referrals/([^/]+)/accept", rows)
    assert len(task) == 2
    for t in task:
        assert client.post(f"/clinic/down-referrals/{t}/accept").status_code == 302
    assert "down-referred patients to accept" not in client.get("/clinic").get_data(as_text=True)
    after = client.get("/clinic/follow-ups").get_data(as_text=True).split("<tbody>", 1)[1]
    assert after.split("</tbody>", 1)[0].count("<tr") == 2  # accepted, still in the clinic's hands


def test_the_news2_boundary_examples_are_accepted_and_scored_as_designed(county: County) -> None:
    """DESIGN section 4: 38.05 C scores 1 (above 38.0), SpO2 91.5 scores 2 (above 91)."""
    client = county.client("clinic")
    encounter_id = record_visit(
        client, county.patients["woman"], **{**CALM, "temperature": "38.05", "spo2": "91.5"}
    )
    values = {
        o["code"]["coding"][0]["code"]: o["valueQuantity"]["value"]
        for o in stored_of("Observation")
        if o["encounter"]["reference"] == f"Encounter/{encounter_id}" and "valueQuantity" in o
    }
    assert (values["8310-5"], values["59408-5"]) == (38.05, 91.5)
    guidance = stored("GuidanceResponse", f"gr-{encounter_id}")
    (parameters,) = guidance["contained"]
    scores = {}
    for item in (p for p in parameters["parameter"] if p["name"] == "item"):
        parts = {part["name"]: part for part in item["part"]}
        name = parts["parameter"]["valueString"]
        value = parts["value"].get("valueString", parts["value"].get("valueBoolean"))
        scores[name] = (value, parts["score"]["valueInteger"])
    assert scores["temperature"] == ("38.05", 1) and scores["spo2"] == ("91.5", 2)
    # Supplemental oxygen is a boolean, as in its Observation (it was the string "False").
    oxygen = next(
        {part["name"]: part for part in item["part"]}["value"]
        for item in parameters["parameter"]
        if item["name"] == "item" and item["part"][0]["valueString"] == "supplemental_oxygen"
    )
    assert oxygen == {"name": "value", "valueBoolean": False}
    assert scores["supplemental_oxygen"] == (False, 0)
    page = client.get(f"/clinic/visits/{encounter_id}").get_data(as_text=True)
    assert "38.05 °C" in page and "91.5 %" in page and "Total 3; highest single parameter 2." in page
    oxygen_row = page.split(">supplemental oxygen<", 1)[1].split("</tr>", 1)[0]
    assert "<td>no</td>" in oxygen_row


def test_money_is_plain_digits_everywhere_on_the_forms(county: County) -> None:
    """The household income on registration takes the same plain amounts as the charges."""
    client = county.client("clinic", lang="zh")
    for typed in ("1e4", "NaN", "Infinity", "9_600"):
        form = registration_form(
            given_name="收入", resident_id=resident(date(1970, 5, 5), "female", 41), birth_date="1970-05-05",
            household_income=typed,
        )
        response = client.post("/clinic/patients/new", data=form)
        assert response.status_code == 422, typed
        errors = field_errors(response.get_data(as_text=True))
        assert errors["household_income"] == "请用数字填写金额（元），如 35.50。", typed
    form = registration_form(
        given_name="收入", resident_id=resident(date(1970, 5, 5), "female", 41), birth_date="1970-05-05",
        household_income="９６００.５０",  # full-width digits from a Chinese input method
    )
    assert client.post("/clinic/patients/new", data=form).status_code == 302
