"""One-stop settlement at the discharge desk: preview with trace, confirm, the A4 slip, reversal."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from referral_service.domain.ledger import Settlement, YearAccumulator
from referral_service.extensions import database
from tests.functional.test_web_clinic import stored
from tests.functional.test_web_support import (
    CALM,
    County,
    build_county,
    confirm_referral_of,
    discharged_home,
    field_errors,
    record_visit,
    registration_form,
    resident,
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


def _uninsured(county: County) -> str:
    """A patient registered without basic medical insurance: the settlement service refuses their claims."""
    form = registration_form(
        given_name="无保",
        resident_id=resident(date(1962, 2, 2), "female", 61),
        birth_date="1962-02-02",
        coverage_basic=None,
    )
    response = county.client("clinic").post("/clinic/patients/new", data=form)
    return str(response.headers["Location"].rsplit("/", 1)[-1])


def _settlements(claim_type: str = "inpatient") -> int:
    """Settlements of stays (the clinic's first visit with charges is settled when it is saved)."""
    with database.unit_of_work() as db:
        return int(
            db.scalar(select(func.count()).select_from(Settlement).where(Settlement.claim_type == claim_type))
            or 0
        )


def test_preview_then_confirm_then_slip(county: County) -> None:
    hospital, stay = discharged_home(county, county.patients["elder"], **CHARGES)
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
    assert re.search(r"<dt>Policy</dt><dd>[a-z0-9-]+, version [0-9.]+</dd>", settled)  # not "qingshan-2018 1"
    assert re.search(r"结算政策：[a-z0-9-]+（版本 [0-9.]+）", slip)
    assert "经办人：hospital user" in slip  # the clerk by display name, not by login
    # Settling twice changes nothing (the claim is idempotent).
    assert hospital.post(f"/hospital/settlements/{stay}/confirm").status_code == 302
    assert _settlements() == 1


def test_reversal_needs_a_reason_and_allows_settling_again(county: County) -> None:
    hospital, stay = discharged_home(county, county.patients["elder"], **CHARGES)
    hospital.post(f"/hospital/settlements/{stay}/confirm")
    missing = hospital.post(f"/hospital/settlements/{stay}/reverse", data={"reason": " "})
    assert missing.status_code == 422
    assert field_errors(missing.get_data(as_text=True))["reason"] == "This field is required."
    done = hospital.post(f"/hospital/settlements/{stay}/reverse", data={"reason": "费用录入错误"})
    assert done.status_code == 302
    page = hospital.get(f"/hospital/settlements/{stay}").get_data(as_text=True)
    assert "费用录入错误" in page and "Preview: nothing is settled yet" in page
    assert "by hospital user:" in page  # who reversed it, by display name
    assert hospital.get(f"/hospital/settlements/{stay}/slip").get_data(as_text=True).count("已冲销") == 1
    assert hospital.post(f"/hospital/settlements/{stay}/confirm").status_code == 302
    with database.unit_of_work() as db:
        states = sorted(db.scalars(select(Settlement.status).where(Settlement.claim_type == "inpatient")))
    assert states == ["active", "reversed"]


def test_no_insurance_means_no_settlement(county: County) -> None:
    hospital, stay = discharged_home(county, _uninsured(county), **CHARGES)
    page = hospital.get(f"/hospital/settlements/{stay}").get_data(as_text=True)
    assert "The stay cannot be settled:" in page
    assert "The patient has no active basic medical insurance on that date." in page
    assert "Coverage" not in page  # the service's English detail is for integrators
    assert "confirm-settlement" not in page


def test_without_charges_there_is_nothing_to_settle(county: County) -> None:
    hospital, stay = discharged_home(county, county.patients["elder"])
    assert "nothing to settle" in hospital.get(f"/hospital/discharges/{stay}").get_data(as_text=True)
    assert hospital.get(f"/hospital/settlements/{stay}").status_code == 404


def test_settlement_pages_belong_to_the_hospital(county: County) -> None:
    _, stay = discharged_home(county, county.patients["elder"], **CHARGES)
    for role in ("clinic", "insurer", "monitor", "admin"):
        client = county.client(role)
        assert client.get(f"/hospital/settlements/{stay}").status_code == 403, role
        assert client.post(f"/hospital/settlements/{stay}/confirm").status_code == 403, role
    assert _settlements() == 0


# ------------------------------------------------------------------------------ outpatient (clinic visits)

D = Decimal
CALM_VISIT = {**CALM, "charges-1-description": "", "charges-1-amount": ""}


def _visit(client: FlaskClient, patient_id: str, *rows: tuple[str, str, str]) -> str:
    """A calm first visit (the rules say: treat here) with the given charges (description, class, amount)."""
    charges: dict[str, str] = {}
    for i, (description, charge_class, amount) in enumerate(rows):
        charges |= {
            f"charges-{i}-description": description,
            f"charges-{i}-charge_class": charge_class,
            f"charges-{i}-amount": amount,
        }
    return record_visit(client, patient_id, **{**CALM_VISIT, **charges})


def _ledger(claim_type: str = "outpatient") -> list[Settlement]:
    with database.unit_of_work() as db:
        rows = list(
            db.scalars(
                select(Settlement).where(Settlement.claim_type == claim_type).order_by(Settlement.settled_at)
            )
        )
        db.expunge_all()
    return rows


def _outpatient_paid(patient_id: str) -> Decimal:
    with database.unit_of_work() as db:
        acc = db.get(YearAccumulator, (patient_id, date.today().year))
        return D("0.00") if acc is None else D(acc.outpatient_basic_paid)


def test_a_visit_treated_here_is_settled_once_when_it_is_saved(county: County) -> None:
    clinic = county.client("clinic")
    rows = (("血常规", "A", "35.50"), ("乙类药", "B", "100"), ("自费药", "C", "20"))
    visit = _visit(clinic, county.patients["elder"], *rows)
    # Township outpatient (no deductible, 60 %): T = 155.50, N = 20, S = round(100 x 10 %) = 10,
    # E = 125.50, B1 = round(125.50 x 0.60) = 75.30, P = T - B1 = 80.20.
    (row,) = _ledger()
    assert (row.claim_id, row.status, row.facility_level, row.settled_by) == (
        f"claim-{visit}", "active", "township", "clinic"
    )
    assert (row.total, row.eligible, row.class_b_self_pay, row.out_of_list) == (
        D("155.50"), D("125.50"), D("10.00"), D("20.00")
    )
    assert (row.basic_deductible, row.basic_insurance, row.critical_illness, row.patient_pay) == (
        D("0.00"), D("75.30"), D("0.00"), D("80.20")
    )
    assert _outpatient_paid(county.patients["elder"]) == D("75.30")
    decision = clinic.get(f"/clinic/visits/{visit}").get_data(as_text=True)
    assert "Treat here at the clinic" in decision
    assert "Settled when the visit was saved: the funds pay CN¥75.30, the patient pays CN¥80.20." in decision
    page = clinic.get(f"/clinic/visits/{visit}/settlement").get_data(as_text=True)
    assert "Settled" in page and 'id="print-slip"' in page and "Preview" not in page
    assert "round(125.50 × 0.60) = 75.30" in page  # the trace
    slip = clinic.get(f"/clinic/visits/{visit}/settlement/slip").get_data(as_text=True)
    assert "基本医疗保险一站式结算单（门诊）" in slip and "就诊时间" in slip and "入院时间" not in slip
    assert "¥75.30" in slip and "¥80.20" in slip and "城关镇卫生院" in slip
    # Submitting again (the settle button, a reload) changes nothing: idempotent on the claim.
    assert clinic.post(f"/clinic/visits/{visit}/settlement/confirm").status_code == 302
    assert [r.id for r in _ledger()] == [row.id]
    assert _outpatient_paid(county.patients["elder"]) == D("75.30")


def test_a_referred_visit_is_settled_too_and_its_referral_changes_nothing(county: County) -> None:
    clinic = county.client("clinic")
    visit = record_visit(clinic, county.patients["elder"])  # NEWS2 high: referral proposed; 35.50 of class A
    (row,) = _ledger()
    assert (row.claim_id, row.basic_insurance, row.patient_pay, row.referred) == (
        f"claim-{visit}", D("21.30"), D("14.20"), False
    )
    confirm_referral_of(clinic, visit)
    assert [(r.id, r.status) for r in _ledger()] == [(row.id, "active")]


def test_reversing_a_visit_settlement_and_settling_it_again(county: County) -> None:
    clinic = county.client("clinic")
    visit = _visit(clinic, county.patients["elder"], ("血常规", "A", "100"))
    missing = clinic.post(f"/clinic/visits/{visit}/settlement/reverse", data={"reason": ""})
    assert missing.status_code == 422
    assert field_errors(missing.get_data(as_text=True))["reason"] == "This field is required."
    done = clinic.post(f"/clinic/visits/{visit}/settlement/reverse", data={"reason": "收费项目录错"})
    assert done.status_code == 302
    page = clinic.get(done.headers["Location"]).get_data(as_text=True)
    assert "The settlement is reversed; every fund&#39;s share is taken back." in page
    assert "收费项目录错" in page and "Preview: nothing is settled yet" in page
    assert "Later settlements to review" not in page
    assert _outpatient_paid(county.patients["elder"]) == D("0.00")
    assert "The settlement was reversed" in clinic.get(f"/clinic/visits/{visit}").get_data(as_text=True)
    twice = clinic.post(f"/clinic/visits/{visit}/settlement/reverse", data={"reason": "again"})
    assert twice.status_code == 409
    assert clinic.post(f"/clinic/visits/{visit}/settlement/confirm").status_code == 302
    assert sorted(r.status for r in _ledger()) == ["active", "reversed"]
    assert _outpatient_paid(county.patients["elder"]) == D("60.00")


def test_a_visit_settlement_belongs_to_its_clinic(county: County) -> None:
    visit = _visit(county.client("clinic"), county.patients["elder"], ("血常规", "A", "100"))
    assert county.client("clinic2").get(f"/clinic/visits/{visit}/settlement").status_code == 404
    assert county.client("clinic2").post(f"/clinic/visits/{visit}/settlement/reverse",
                                         data={"reason": "x"}).status_code == 404
    for role in ("hospital", "insurer", "monitor", "admin"):
        assert county.client(role).get(f"/clinic/visits/{visit}/settlement").status_code == 403, role
    assert [r.status for r in _ledger()] == ["active"]


def test_a_visit_without_insurance_is_saved_unsettled_and_says_why_in_chinese(county: County) -> None:
    clinic = county.client("clinic", lang="zh")
    visit = _visit(clinic, _uninsured(county), ("血常规", "A", "35.50"))
    assert _ledger() == []
    assert "本次就诊费用尚未结算。" in clinic.get(f"/clinic/visits/{visit}").get_data(as_text=True)
    page = clinic.get(f"/clinic/visits/{visit}/settlement").get_data(as_text=True)
    assert "本次就诊无法结算：" in page and "该日期患者没有有效的基本医疗保险。" in page
    assert "Coverage" not in page and "confirm-settlement" not in page
    assert clinic.get(f"/clinic/visits/{visit}/settlement/slip").status_code == 404


def test_the_hospitals_refusal_is_in_chinese(county: County) -> None:
    _, stay = discharged_home(county, _uninsured(county), **CHARGES)
    page = county.client("hospital", lang="zh").get(f"/hospital/settlements/{stay}").get_data(as_text=True)
    assert "无法结算：" in page and "该日期患者没有有效的基本医疗保险。" in page
    assert "Coverage" not in page and "no active basic" not in page


def test_a_refused_confirm_at_the_discharge_desk_says_why_in_chinese(county: County) -> None:
    _, stay = discharged_home(county, _uninsured(county), **CHARGES)
    response = county.client("hospital", lang="zh").post(f"/hospital/settlements/{stay}/confirm")
    page = response.get_data(as_text=True)
    assert response.status_code == 422
    assert "无法结算：" in page and "该日期患者没有有效的基本医疗保险。" in page
    assert "Coverage" not in page and "no active basic" not in page and "请求被拒绝" not in page
    assert _settlements() == 0


def test_a_refused_confirm_of_a_visit_says_why_in_chinese(county: County) -> None:
    clinic = county.client("clinic", lang="zh")
    visit = _visit(clinic, _uninsured(county), ("血常规", "A", "35.50"))
    response = clinic.post(f"/clinic/visits/{visit}/settlement/confirm")
    page = response.get_data(as_text=True)
    assert response.status_code == 422
    assert "本次就诊无法结算：" in page and "该日期患者没有有效的基本医疗保险。" in page
    assert "Coverage" not in page and "no active basic" not in page and "请求被拒绝" not in page
    assert _ledger() == []


# ------------------------------------------------------------------------------ later settlements to review


def test_a_reversal_lists_the_later_settlements_computed_on_the_old_totals(county: County) -> None:
    clinic = county.client("clinic")
    elder = county.patients["elder"]
    first = _visit(clinic, elder, ("检查", "A", "800"))  # B1 = min(480, cap 500) = 480
    second = _visit(clinic, elder, ("复查", "A", "100"))  # B1 = min(60, 500 - 480) = 20
    other = _visit(clinic, county.patients["woman"], ("复查", "A", "100"))  # another person: not listed
    assert [(r.claim_id, r.basic_insurance) for r in _ledger()] == [
        (f"claim-{first}", D("480.00")), (f"claim-{second}", D("20.00")), (f"claim-{other}", D("60.00"))
    ]
    done = clinic.post(f"/clinic/visits/{first}/settlement/reverse", data={"reason": "重复收费"})
    page = clinic.get(done.headers["Location"]).get_data(as_text=True)
    assert (
        "1 later settlement of this person in the same year was computed before the reversal: "
        "review it below." in page
    )
    review = page.split('id="to-review"', 1)[1].split("</section>", 1)[0]
    assert f'<a href="/clinic/visits/{second}/settlement" class="review-link">claim-{second}</a>' in review
    assert "城关镇卫生院" in review and "outpatient visit" in review
    assert "CN¥100.00" in review and "CN¥20.00" in review and "CN¥80.00" in review
    assert f"claim-{other}" not in review and f"claim-{first}<" not in review
    zh = county.client("clinic", lang="zh")
    chinese = zh.get(f"/clinic/visits/{first}/settlement").get_data(as_text=True)
    assert "需复核的后续结算" in chinese and f"/clinic/visits/{second}/settlement" in chinese
    # Reviewed: the second visit is reversed and settled again on the corrected totals; no longer listed.
    clinic.post(f"/clinic/visits/{second}/settlement/reverse", data={"reason": "冲销后重算"})
    assert clinic.post(f"/clinic/visits/{second}/settlement/confirm").status_code == 302
    again = [r for r in _ledger() if r.claim_id == f"claim-{second}" and r.status == "active"]
    assert [r.basic_insurance for r in again] == [D("60.00")]
    assert 'id="to-review"' not in clinic.get(f"/clinic/visits/{first}/settlement").get_data(as_text=True)


def test_the_discharge_desk_lists_later_settlements_it_cannot_open(county: County) -> None:
    hospital, stay = discharged_home(county, county.patients["elder"], **CHARGES)
    assert hospital.post(f"/hospital/settlements/{stay}/confirm").status_code == 302
    later = _visit(county.client("clinic"), county.patients["elder"], ("换药", "A", "50"))
    done = hospital.post(f"/hospital/settlements/{stay}/reverse", data={"reason": "费用录入错误"})
    page = hospital.get(done.headers["Location"]).get_data(as_text=True)
    assert "1 later settlement of this person in the same year" in page
    review = page.split('id="to-review"', 1)[1].split("</section>", 1)[0]
    assert f"claim-{later}" in review and "城关镇卫生院" in review and "outpatient visit" in review
    assert "review-link" not in review  # the clinic's visit: the clinic reviews it
    # The settlement made by the clinic before the stay is not listed (it was computed earlier).
    first_visit = _ledger()[0].claim_id
    assert first_visit not in review
