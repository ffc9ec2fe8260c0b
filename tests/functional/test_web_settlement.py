"""One-stop settlement at the discharge desk: preview with trace, confirm, the A4 slip, reversal."""

from __future__ import annotations

from datetime import date

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from referral_service.domain.ledger import Settlement
from referral_service.extensions import database
from tests.functional.test_web_clinic import stored
from tests.functional.test_web_support import (
    County,
    build_county,
    confirm_referral_of,
    field_errors,
    record_visit,
    registration_form,
    resident,
    waiting_task,
)

CHARGES = {
    "charges-0-description": "床位费",
    "charges-0-charge_class": "A",
    "charges-0-amount": "8000",
    "charges-1-description": "乙类药品",
    "charges-1-charge_class": "B",
    "charges-1-amount": "2000",
    "charges-2-description": "自费药品",
    "charges-2-charge_class": "C",
    "charges-2-amount": "500",
}


@pytest.fixture
def county(app: Flask) -> County:
    return build_county(app)


def _discharged(county: County, patient_id: str, **charges: str) -> tuple[FlaskClient, str]:
    clinic = county.client("clinic")
    confirm_referral_of(clinic, record_visit(clinic, patient_id))
    hospital = county.client("hospital")
    task = waiting_task(hospital)
    stay = hospital.post(f"/hospital/referrals/{task}/admit").headers["Location"].split("/")[-2]
    data = {"disposition": "home", "diagnosis": "I63.9", **charges}
    assert hospital.post(f"/hospital/admissions/{stay}/discharge", data=data).status_code == 302
    return hospital, stay


def _settlements() -> int:
    with database.unit_of_work() as db:
        return int(db.scalar(select(func.count()).select_from(Settlement)) or 0)


def test_preview_then_confirm_then_slip(county: County) -> None:
    hospital, stay = _discharged(county, county.patients["elder"], **CHARGES)
    claim = stored("Claim", f"claim-{stay}")
    assert claim["referral"]["reference"].startswith("ServiceRequest/ref-up-")
    assert 'id="to-settlement"' in hospital.get(f"/hospital/discharges/{stay}").get_data(as_text=True)
    preview = hospital.get(f"/hospital/settlements/{stay}").get_data(as_text=True)
    assert "Preview: nothing is settled yet" in preview
    assert "CN¥10,500.00" in preview and "CN¥7,440.00" in preview and "CN¥3,060.00" in preview
    assert "T = A + B + C = 8000.00 + 2000.00 + 500.00 = 10500.00" in preview  # the trace
    assert _settlements() == 0  # a preview stores nothing
    assert hospital.post(f"/hospital/settlements/{stay}/confirm").status_code == 302
    settled = hospital.get(f"/hospital/settlements/{stay}").get_data(as_text=True)
    assert "Settled" in settled and 'id="print-slip"' in settled and "Preview" not in settled
    assert _settlements() == 1
    slip = hospital.get(f"/hospital/settlements/{stay}/slip").get_data(as_text=True)
    assert (
        '<html lang="zh-CN">' in slip and "基本医疗保险一站式结算单" in slip
    )  # Chinese on an English screen
    assert "基本医保支付" in slip and "¥7,440.00" in slip and "个人自付" in slip and "¥3,060.00" in slip
    assert "620425********" in slip  # the identity number is masked on paper
    # Settling twice changes nothing (the claim is idempotent).
    assert hospital.post(f"/hospital/settlements/{stay}/confirm").status_code == 302
    assert _settlements() == 1


def test_reversal_needs_a_reason_and_allows_settling_again(county: County) -> None:
    hospital, stay = _discharged(county, county.patients["elder"], **CHARGES)
    hospital.post(f"/hospital/settlements/{stay}/confirm")
    missing = hospital.post(f"/hospital/settlements/{stay}/reverse", data={"reason": " "})
    assert missing.status_code == 422
    assert field_errors(missing.get_data(as_text=True))["reason"] == "This field is required."
    done = hospital.post(f"/hospital/settlements/{stay}/reverse", data={"reason": "费用录入错误"})
    assert done.status_code == 302
    page = hospital.get(f"/hospital/settlements/{stay}").get_data(as_text=True)
    assert "费用录入错误" in page and "Preview: nothing is settled yet" in page
    assert hospital.get(f"/hospital/settlements/{stay}/slip").get_data(as_text=True).count("已冲销") == 1
    assert hospital.post(f"/hospital/settlements/{stay}/confirm").status_code == 302
    with database.unit_of_work() as db:
        states = sorted(db.scalars(select(Settlement.status)))
    assert states == ["active", "reversed"]


def test_no_insurance_means_no_settlement(county: County) -> None:
    clinic = county.client("clinic")
    form = registration_form(
        given_name="无保",
        resident_id=resident(date(1962, 2, 2), "female", 61),
        birth_date="1962-02-02",
        coverage_basic=None,
    )
    patient = clinic.post("/clinic/patients/new", data=form).headers["Location"].rsplit("/", 1)[-1]
    hospital, stay = _discharged(county, patient, **CHARGES)
    page = hospital.get(f"/hospital/settlements/{stay}").get_data(as_text=True)
    assert "The stay cannot be settled:" in page and "no active basic Coverage" in page
    assert "confirm-settlement" not in page


def test_without_charges_there_is_nothing_to_settle(county: County) -> None:
    hospital, stay = _discharged(county, county.patients["elder"])
    assert "nothing to settle" in hospital.get(f"/hospital/discharges/{stay}").get_data(as_text=True)
    assert hospital.get(f"/hospital/settlements/{stay}").status_code == 404


def test_settlement_pages_belong_to_the_hospital(county: County) -> None:
    _, stay = _discharged(county, county.patients["elder"], **CHARGES)
    for role in ("clinic", "insurer", "monitor", "admin"):
        client = county.client(role)
        assert client.get(f"/hospital/settlements/{stay}").status_code == 403, role
        assert client.post(f"/hospital/settlements/{stay}/confirm").status_code == 403, role
    assert _settlements() == 0
