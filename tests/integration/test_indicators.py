"""Monitoring indicators on constructed data, answers worked out by hand (both engines)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from flask import Flask

from referral_service.domain.errors import BadRequest
from referral_service.extensions import database
from referral_service.services import indicators
from referral_service.services.indicators import Filters, MonitoringConfigError, Period
from tests.support import monitoring as f

MARCH = Period(date(2024, 3, 1), date(2024, 3, 31))


def d(text: str) -> Decimal:
    return Decimal(text)


@pytest.fixture
def thresholds_file(tmp_path: Path) -> Iterator[Path]:
    """A thresholds file the test may write; the default file is configured again afterwards."""
    yield tmp_path / "monitoring.toml"
    indicators.configure(indicators.DEFAULT_CONFIG)


# ------------------------------------------------------------------- discharge -> settlement


def test_days_from_discharge_to_settlement_per_hospital(app: Flask) -> None:
    f.org("h1")
    f.org("h2")
    f.patient("p1", township="城关镇")
    f.patient("p2", township="新集乡")
    f.settlement("p1", "h1", discharge="2024-03-01", settled="2024-03-01T10:00:00")  # 0 days
    f.settlement("p1", "h1", discharge="2024-03-02", settled="2024-03-04T23:30:00")  # 2 days
    # 01:00 in Shanghai is still the day before in UTC: the day counts in Shanghai (1 day, not 0).
    f.settlement("p2", "h2", discharge="2024-03-05", settled="2024-03-06T01:00:00")
    f.settlement("p1", "h1", discharge="2024-02-29", settled="2024-03-09T10:00:00")  # before the period
    f.settlement("p1", "h1", discharge="2024-03-07", settled="2024-03-20T10:00:00", status="reversed")
    with database.unit_of_work() as session:
        rows = indicators.discharge_to_settlement(session, MARCH)
        by_township = indicators.discharge_to_settlement(session, MARCH, Filters(township="新集乡"))
    h1, h2, total = rows
    assert (h1.hospital_id, h1.settlements, h1.same_day, h1.late, h1.mean_days, h1.max_days) == (
        "h1",
        2,
        1,
        1,
        1.0,
        2,
    )
    assert (h2.hospital_id, h2.settlements, h2.same_day, h2.late, h2.mean_days, h2.max_days) == (
        "h2",
        1,
        0,
        1,
        1.0,
        1,
    )
    assert (total.hospital_id, total.settlements, total.same_day, total.late, total.max_days) == (
        None,
        3,
        1,
        2,
        2,
    )
    assert [(r.hospital_id, r.settlements) for r in by_township] == [("h2", 1), (None, 1)]


def test_unsettled_inpatient_discharges_older_than_a_day(app: Flask) -> None:
    f.org("h1")
    f.patient("p1")
    f.patient("p2")
    f.inpatient_stay("e-settled", "h1", "p1", start="2024-03-01", end="2024-03-05")
    f.settlement("p1", "h1", discharge="2024-03-05")
    f.inpatient_stay("e-open", "h1", "p2", start="2024-03-01", end="2024-03-08T20:00:00+08:00")
    f.inpatient_stay("e-yesterday", "h1", "p1", start="2024-03-09", end="2024-03-09")  # 1 day: not yet
    f.inpatient_stay("e-running", "h1", "p1", start="2024-03-01", end=None, status="in-progress")
    f.inpatient_stay("e-visit", "h1", "p1", start="2024-03-01", end="2024-03-01", klass="AMB")
    with database.unit_of_work() as session:
        found = indicators.unsettled_discharges(session, date(2024, 3, 10))
    assert [(u.encounter_id, u.patient_id, u.hospital_id, u.discharge_date, u.days) for u in found] == [
        ("e-open", "p2", "h1", date(2024, 3, 8), 2)
    ]


# ------------------------------------------------------------------- settlement -> payment


def _paid_cohort() -> None:
    f.org("h2")
    # March payables of h2: basic insurance paid after 0, 3, 10, 20 and 40 days; critical illness after 5.
    f.payable(
        "h2",
        "basic-insurance",
        1000,
        created="2024-03-10T10:00:00",
        status="paid",
        paid_amount=1000,
        paid_at="2024-03-10T18:00:00",
    )
    f.payable(
        "h2",
        "basic-insurance",
        1000,
        created="2024-03-05T10:00:00",
        status="paid",
        paid_amount=1000,
        paid_at="2024-03-08T09:00:00",
    )
    f.payable(
        "h2",
        "basic-insurance",
        1000,
        created="2024-03-01T10:00:00",
        status="paid",
        paid_amount=1000,
        paid_at="2024-03-11T09:00:00",
    )
    f.payable(
        "h2",
        "basic-insurance",
        1000,
        created="2024-03-02T10:00:00",
        status="paid",
        paid_amount=1000,
        paid_at="2024-03-22T09:00:00",
    )
    f.payable(
        "h2",
        "basic-insurance",
        1000,
        created="2024-03-03T10:00:00",
        status="paid",
        paid_amount=1000,
        paid_at="2024-04-12T09:00:00",
    )
    f.payable(
        "h2",
        "critical-illness",
        1000,
        created="2024-03-03T10:00:00",
        status="paid",
        paid_amount=1000,
        paid_at="2024-03-08T09:00:00",
    )
    f.payable(
        "h2",
        "basic-insurance",
        1000,
        created="2024-02-20T10:00:00",
        status="paid",  # not March
        paid_amount=1000,
        paid_at="2024-03-08T09:00:00",
    )


def test_settlement_to_payment_median_and_p90(app: Flask) -> None:
    _paid_cohort()
    with database.unit_of_work() as session:
        rows = indicators.paid_delays(session, MARCH)
        only_ci = indicators.paid_delays(session, MARCH, Filters(fund="critical-illness"))
    basic, ci, total = rows
    # days 0, 3, 10, 20, 40: median 10; p90 at rank 1 + 0.9 * 4 = 4.6 -> 20 + 0.6 * (40 - 20) = 32
    assert (
        basic.hospital_id,
        basic.fund,
        basic.paid,
        basic.median_days,
        basic.p90_days,
        basic.mean_days,
        basic.max_days,
    ) == ("h2", "basic-insurance", 5, 10.0, 32.0, 14.6, 40)
    assert (ci.fund, ci.paid, ci.median_days, ci.p90_days) == ("critical-illness", 1, 5.0, 5.0)
    # all six: 0, 3, 5, 10, 20, 40: median at rank 3.5 -> 7.5; p90 at rank 5.5 -> 30
    assert (
        total.hospital_id,
        total.fund,
        total.paid,
        total.median_days,
        total.p90_days,
        total.mean_days,
    ) == (None, None, 6, 7.5, 30.0, 13.0)
    assert [(r.fund, r.paid) for r in only_ci] == [("critical-illness", 1), (None, 1)]


def test_unpaid_amounts_by_age_band_oldest_and_overdue(app: Flask) -> None:
    _paid_cohort()
    f.org("h1")
    basic = "basic-insurance"
    f.payable("h1", basic, "100.00", created="2024-03-31T23:30:00")  # age 0 (Shanghai day)
    f.payable("h1", basic, "200.00", created="2024-03-01T09:00:00")  # age 30: not overdue yet
    f.payable("h1", basic, "300.00", created="2024-02-29T09:00:00")  # 31
    f.payable("h1", basic, "400.00", created="2024-01-31T09:00:00")  # 60
    f.payable(
        "h1",
        basic,
        "500.00",
        created="2024-01-30T09:00:00",
        status="partial",  # 61, 380 left
        paid_amount="120.00",
        paid_at="2024-02-15T09:00:00",
    )
    f.payable("h1", basic, "600.00", created="2023-12-31T09:00:00")  # 91
    f.payable(
        "h1",
        basic,
        "700.00",
        created="2024-01-01T09:00:00",
        status="paid",  # 90, paid only later
        paid_amount="700.00",
        paid_at="2024-04-05T09:00:00",
    )
    f.payable("h1", basic, "800.00", created="2024-01-01T09:00:00", status="cancelled")
    f.payable("h1", basic, "900.00", created="2024-04-01T00:30:00")  # after the day
    f.payable("h2", "medical-assistance", "50.00", created="2024-03-20T09:00:00")  # 11
    with database.unit_of_work() as session:
        rows = indicators.unpaid_balances(session, date(2024, 3, 31))
        ma_only = indicators.unpaid_balances(session, date(2024, 3, 31), Filters(fund="medical-assistance"))
    h1, h2_basic, h2_ma, total = rows
    assert (h1.hospital_id, h1.fund, h1.unpaid, h1.outstanding) == ("h1", basic, 7, d("2680.00"))
    assert h1.by_age == {"0-30": d("300.00"), "31-60": d("700.00"), "61-90": d("1080.00"), ">90": d("600.00")}
    assert (h1.oldest_since, h1.oldest_days, h1.overdue, h1.overdue_amount) == (
        date(2023, 12, 31),
        91,
        5,
        d("2380.00"),
    )
    # the h2 payable paid on 12 April was still owed on 31 March (28 days old)
    assert (
        h2_basic.hospital_id,
        h2_basic.fund,
        h2_basic.unpaid,
        h2_basic.outstanding,
        h2_basic.oldest_days,
    ) == ("h2", basic, 1, d("1000.00"), 28)
    assert (h2_ma.fund, h2_ma.outstanding, h2_ma.overdue) == ("medical-assistance", d("50.00"), 0)
    assert (total.hospital_id, total.unpaid, total.outstanding, total.overdue, total.overdue_amount) == (
        None,
        9,
        d("3730.00"),
        5,
        d("2380.00"),
    )
    assert total.by_age == {
        "0-30": d("1350.00"),
        "31-60": d("700.00"),
        "61-90": d("1080.00"),
        ">90": d("600.00"),
    }
    assert [(r.hospital_id, r.outstanding) for r in ma_only] == [("h2", d("50.00")), (None, d("50.00"))]
    with database.unit_of_work() as session:
        both = indicators.payment_delays(session, MARCH)
    assert both.as_of == date(2024, 3, 31) and both.unpaid[-1].outstanding == d("3730.00")
    assert both.paid[-1].paid == 6


# ------------------------------------------------------------------- poverty checks (Gansu)


def test_registered_poor_stays_failing_the_gansu_checks(app: Flask) -> None:
    f.org("h1")
    f.org("h2")
    f.patient("p1")

    def stay(total: str, pay: str, **kw: object) -> str:
        kw.setdefault("registered_poor", True)
        return f.settlement(
            "p1", str(kw.pop("hospital", "h1")), discharge="2024-03-10", total=total, patient_pay=pay, **kw
        )  # type: ignore[arg-type]

    stay("10000", "1500.00")  # reimbursed exactly 85%: passes
    g2 = stay("10000", "1500.01")  # 84.9999%: fails
    stay("30000", "3000.00")  # pays exactly 3,000: passes
    g4 = stay("30000", "3000.01", hospital="h2")  # over 3,000: fails
    g5 = stay("1000", "200")  # 80%
    g6 = stay("40000", "6500")  # 83.75% and over 3,000
    stay("40000", "9000", registered_poor=False)
    stay("40000", "9000", claim_type="outpatient")
    stay("40000", "9000", status="reversed")
    with database.unit_of_work() as session:
        checks = indicators.poverty_checks(session, MARCH)
        h2_only = indicators.poverty_checks(session, MARCH, Filters(hospital_id="h2"))
    assert (checks.stays, checks.failing, checks.low_reimbursement, checks.high_patient_pay) == (6, 4, 3, 2)
    reasons = {s.settlement_id: s.reasons for s in checks.failing_stays}
    assert reasons == {
        g2: ("reimbursement-below-minimum",),
        g4: ("patient-pay-above-cap",),
        g5: ("reimbursement-below-minimum",),
        g6: ("reimbursement-below-minimum", "patient-pay-above-cap"),
    }
    assert {s.settlement_id: s.reimbursement_ratio for s in checks.failing_stays}[g6] == d("0.8375")
    assert (h2_only.stays, h2_only.failing, [s.settlement_id for s in h2_only.failing_stays]) == (1, 1, [g4])


# ------------------------------------------------------------------- referral Tasks


def _tasks() -> datetime:
    f.org("h1")
    f.org("h2")
    f.patient("p1", township="城关镇")
    f.patient("p2", township="新集乡")
    f.task("t1", "h1", "p1", [("requested", "2024-03-01T00:00:00Z"), ("accepted", "2024-03-01T23:00:00Z")])
    f.task("t2", "h1", "p1", [("requested", "2024-03-02T00:00:00Z"), ("accepted", "2024-03-03T00:00:01Z")])
    f.task("t2b", "h1", "p1", [("requested", "2024-03-02T00:00:00Z"), ("accepted", "2024-03-03T00:00:00Z")])
    f.task(
        "t3",
        "h1",
        "p2",
        [
            ("requested", "2024-03-04T00:00:00Z"),
            ("received", "2024-03-04T01:00:00Z"),
            ("accepted", "2024-03-04T02:30:00Z"),
        ],
        priority="urgent",
    )
    f.task("t4", "h2", "p2", [("requested", "2024-03-05T00:00:00Z")], priority="stat")
    f.task("t5", "h2", "p1", [("requested", "2024-03-31T11:00:00Z")])
    f.task(
        "t6",
        "h2",
        "p1",
        [
            ("draft", "2024-02-20T00:00:00Z"),
            ("requested", "2024-03-06T00:00:00Z"),
            ("rejected", "2024-03-06T05:00:00Z"),
        ],
    )
    f.task(
        "t7",
        "h1",
        "p1",
        [
            ("draft", "2024-02-27T00:00:00Z"),
            ("requested", "2024-02-28T00:00:00Z"),
            ("received", "2024-03-20T00:00:00Z"),
        ],
    )
    return datetime(2024, 3, 31, 12, 0, tzinfo=UTC)


def test_referral_tasks_accepted_in_time_or_not(app: Flask) -> None:
    now = _tasks()
    with database.unit_of_work() as session:
        rows = indicators.referral_timeliness(session, MARCH, now=now)
        township = indicators.referral_timeliness(session, MARCH, Filters(township="新集乡"), now=now)
    counts = {
        r.owner_id: (
            r.requested,
            r.accepted_in_time,
            r.accepted_late,
            r.waiting_in_time,
            r.waiting_late,
            r.closed_unaccepted,
        )
        for r in rows
    }
    assert counts == {"h1": (4, 2, 2, 0, 0, 0), "h2": (3, 0, 0, 1, 1, 1), None: (7, 2, 2, 1, 1, 1)}
    assert rows[-1].not_accepted_in_time == 3
    assert [(r.owner_id, r.requested, r.accepted_late, r.waiting_late) for r in township] == [
        ("h1", 1, 1, 0),
        ("h2", 1, 0, 1),
        (None, 2, 1, 1),
    ]


def test_waiting_tasks_past_their_limit(app: Flask) -> None:
    now = _tasks()
    with database.unit_of_work() as session:
        late = indicators.waiting_tasks(session, now)
        h2 = indicators.waiting_tasks(session, now, Filters(hospital_id="h2"), late_only=False)
    # t7 waits since it was requested (28 Feb), not since it was received (20 Mar)
    assert [(t.task_id, t.priority, t.status, t.limit_hours, t.waited_hours) for t in late] == [
        ("t7", "routine", "received", 24, 32 * 24 + 12.0),
        ("t4", "stat", "requested", 2, 26 * 24 + 12.0),
    ]
    assert late[0].requested_at == datetime(2024, 2, 28, tzinfo=UTC)
    assert [(t.task_id, t.waited_hours) for t in h2] == [("t4", 636.0), ("t5", 1.0)]


def test_urgent_limit_comes_from_the_configuration(app: Flask, thresholds_file: Path) -> None:
    now = _tasks()
    thresholds_file.write_text("[referrals]\naccept_within_hours = 700\naccept_within_hours_urgent = 2\n")
    indicators.configure(thresholds_file)
    with database.unit_of_work() as session:
        late = indicators.waiting_tasks(session, now)
    assert [t.task_id for t in late] == ["t7", "t4"]  # t7 waited 780 h > 700; t4 is stat (2 h)
    thresholds_file.write_text("[referrals]\naccept_within_hours = 800\naccept_within_hours_urgent = 700\n")
    indicators.configure(thresholds_file)
    with database.unit_of_work() as session:
        assert indicators.waiting_tasks(session, now) == []


# ------------------------------------------------------------------- follow-ups


def _care_plans() -> None:
    f.org("c1", level="township")
    f.org("c2", level="township")
    f.patient("p1", township="城关镇")
    f.patient("p2", township="新集乡")
    f.patient("p3", township="新集乡")
    f.care_plan(
        "cp1",
        "c1",
        "p1",
        [("2024-03-08", "completed"), ("2024-04-05", "scheduled"), ("2024-06-04", "scheduled")],
    )
    f.care_plan("cp2", "c1", "p2", [("2024-03-10", "scheduled"), ("2024-04-07", "scheduled")])
    f.care_plan("cp3", "c2", "p3", [("2024-03-01", "scheduled")], status="completed")
    f.care_plan("cp4", "c2", "p3", [("2024-03-30", "scheduled"), ("2024-03-31", "scheduled")])
    # Proposed with a down-referral the hospital has not confirmed (draft), or withdrawn with it
    # (revoked): no clinic's follow-ups, so neither due nor missed.
    f.care_plan("cp5", "c1", "p1", [("2024-03-05", "scheduled"), ("2024-03-20", "scheduled")], status="draft")
    f.care_plan("cp6", "c2", "p2", [("2024-03-06", "cancelled")], status="revoked")


def test_follow_ups_due_in_the_period(app: Flask) -> None:
    _care_plans()
    with database.unit_of_work() as session:
        rows = indicators.follow_ups(session, MARCH, date(2024, 3, 31))
        c2 = indicators.follow_ups(session, MARCH, date(2024, 3, 31), Filters(hospital_id="c2"))
    assert [(r.clinic_id, r.due, r.completed, r.missed, r.upcoming) for r in rows] == [
        ("c1", 2, 1, 1, 0),
        ("c2", 2, 0, 1, 1),
        (None, 4, 1, 2, 1),
    ]
    assert [(r.clinic_id, r.missed) for r in c2] == [("c2", 1), (None, 1)]


def test_missed_follow_ups_by_care_plan(app: Flask, thresholds_file: Path) -> None:
    _care_plans()
    with database.unit_of_work() as session:
        today = indicators.missed_follow_ups(session, date(2024, 3, 31))
        later = indicators.missed_follow_ups(session, date(2024, 4, 6))
    assert [(m.care_plan_id, m.patient_id, m.clinic_id, m.missed_dates, m.days_overdue) for m in today] == [
        ("cp2", "p2", "c1", (date(2024, 3, 10),), 21),
        ("cp4", "p3", "c2", (date(2024, 3, 30),), 1),
    ]
    assert [(m.care_plan_id, m.missed_dates) for m in later] == [
        ("cp1", (date(2024, 4, 5),)),
        ("cp2", (date(2024, 3, 10),)),
        ("cp4", (date(2024, 3, 30), date(2024, 3, 31))),
    ]
    assert "cp5" not in {m.care_plan_id for m in later}  # draft: not confirmed yet
    thresholds_file.write_text("[follow_ups]\ngrace_days = 1\n")
    indicators.configure(thresholds_file)
    with database.unit_of_work() as session:
        graced = indicators.missed_follow_ups(session, date(2024, 3, 31))
    assert [m.care_plan_id for m in graced] == ["cp2"]  # 30 March is within the day of grace


# ------------------------------------------------------------------- households


AS_OF = date(2024, 6, 30)


def _households() -> None:
    f.org("h1")
    a = f.household("ha", 20000, 2)  # OOP exactly 40%: only the 10% and 25% shares
    f.settlement(a[0], "h1", discharge="2024-01-10", patient_pay="8000.00")
    f.settlement(a[0], "h1", discharge="2024-07-01", patient_pay="99999")  # after the day
    b = f.household("hb", 20000, 2)  # 8,000.01 over two members: just over 40%
    f.settlement(b[0], "h1", discharge="2024-02-01", patient_pay="5000.00")
    f.settlement(b[1], "h1", discharge="2024-03-01", patient_pay="3000.01")
    c = f.household("hc", 8000, 2)  # exactly on the line before, one fen below after: impoverishing
    f.settlement(c[0], "h1", discharge="2024-03-01", patient_pay="0.01")
    dd = f.household("hd", "7999.98", 2)  # below the line already: deepening
    f.settlement(dd[1], "h1", discharge="2024-03-01", patient_pay="100")
    e = f.household("he", 100000, 4, township="新集乡")  # OOP exactly 10,000 and 10%: nothing
    f.settlement(e[0], "h1", discharge="2024-05-01", patient_pay="10000.00")
    ff = f.household("hf", 100000, 4, township="新集乡")  # OOP just over 10,000: watch, share just over 10%
    f.settlement(ff[0], "h1", discharge="2024-05-01", patient_pay="10000.01")
    g = f.household("hg", 0, 1, township="新集乡")  # no income at all
    f.settlement(g[0], "h1", discharge="2024-05-01", patient_pay="50")
    h = f.household("hh", "9999.99", 1, township="新集乡")  # the window and reversals
    f.settlement(h[0], "h1", discharge="2023-06-30", patient_pay="5000")  # just outside the 12 months
    f.settlement(h[0], "h1", discharge="2023-07-01", patient_pay="3000")  # first day inside
    f.settlement(
        h[0],
        "h1",
        discharge="2024-04-01",
        patient_pay="2000",
        status="reversed",
        reversed_at="2024-05-01T10:00:00",
    )
    f.settlement(
        h[0],
        "h1",
        discharge="2024-04-02",
        patient_pay="1000",
        status="reversed",
        reversed_at="2024-07-02T10:00:00",
    )  # reversed after the day: still counted on it
    f.household("hz", 5000, 2)  # no spending: never at risk


def test_household_summary_at_and_around_each_threshold(app: Flask) -> None:
    _households()
    with database.unit_of_work() as session:
        summary = indicators.household_summary(session, AS_OF)
        township = indicators.household_summary(session, AS_OF, "城关镇")
    assert summary.window_start == date(2023, 6, 30)
    assert (summary.with_oop, summary.oop_total) == (8, d("40150.03"))
    assert summary.shares_over == {">0.10": 5, ">0.25": 4, ">0.40": 3}
    assert (
        summary.catastrophic,
        summary.impoverishing,
        summary.deepening,
        summary.return_to_poverty_watch,
    ) == (3, 1, 2, 6)
    assert (township.with_oop, township.catastrophic, township.impoverishing, township.deepening) == (
        4,
        1,
        1,
        1,
    )


def test_households_at_risk_with_their_figures(app: Flask) -> None:
    _households()
    with database.unit_of_work() as session:
        risks = {r.household_id: r for r in indicators.households_at_risk(session, AS_OF)}
    assert sorted(risks) == ["hb", "hc", "hd", "hf", "hg", "hh"]
    flags = {
        k: (r.catastrophic, r.impoverishing, r.deepening, r.return_to_poverty_watch) for k, r in risks.items()
    }
    assert flags == {
        "hb": (True, False, False, True),  # per capita after 5,999.995 < 1.5 x 4,000
        "hc": (False, True, False, True),
        "hd": (False, False, True, True),
        "hf": (False, False, False, True),  # OOP over 10,000
        "hg": (True, False, True, True),
        "hh": (True, False, False, True),
    }
    hb = risks["hb"]
    assert (hb.members, hb.annual_income, hb.oop, hb.oop_share, hb.shares_over) == (
        2,
        d("20000.00"),
        d("8000.01"),
        d("0.4000"),
        ("0.10", "0.25", "0.40"),
    )
    assert (hb.per_capita_before, hb.per_capita_after) == (d("10000.00"), d("5999.99"))  # 5,999.995 floored
    assert risks["hh"].oop == d("4000.00")
    assert risks["hg"].oop_share is None and risks["hg"].shares_over == ("0.10", "0.25", "0.40")
    assert risks["hf"].shares_over == ("0.10",)
    assert (risks["hc"].per_capita_before, risks["hc"].per_capita_after) == (d("4000.00"), d("3999.99"))


def test_poverty_thresholds_come_from_the_configuration(app: Flask, thresholds_file: Path) -> None:
    _households()
    thresholds_file.write_text(
        '[poverty]\ncatastrophic_share = "0.25"\npoverty_line = "3000"\nwatch_line_multiple = "1"\n'
        'watch_oop = "100000"\nwindow_months = 6\n'
    )
    indicators.configure(thresholds_file)
    with database.unit_of_work() as session:
        summary = indicators.household_summary(session, AS_OF)
    # six months back from 30 June: discharges after 30 December 2023 (ha's 8,000 in January still counts)
    assert summary.window_start == date(2023, 12, 30)
    # hh keeps only the 1,000 reversed after the day; ha at 40% is now catastrophic
    assert (summary.with_oop, summary.oop_total) == (8, d("37150.03"))
    assert summary.catastrophic == 3  # ha, hb, hg
    assert summary.deepening == 1  # hg: hd's 3,999.99 per capita is above a 3,000 line
    assert summary.impoverishing == 0


# ------------------------------------------------------------------- inputs and configuration


def test_bad_inputs_are_refused(app: Flask) -> None:
    with pytest.raises(BadRequest, match="unknown fund"):
        Filters(fund="lottery")
    with pytest.raises(BadRequest, match="starts"):
        Period(date(2024, 3, 2), date(2024, 3, 1))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[poverty]\ncatastrophic_shar = 0.4\n", "unknown key poverty.catastrophic_shar"),
        ("[povert]\n", "unknown section"),
        ("[payments]\noverdue_days = -1\n", "payments.overdue_days"),
        ("[payments]\nage_bands = [60, 30]\n", "ascending"),
        ('[poverty_checks]\nmin_reimbursement_ratio = "abc"\n', "min_reimbursement_ratio"),
        ("[poverty]\nwindow_months = 0\n", "window_months"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_broken_thresholds_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "monitoring.toml"
    path.write_text(text)
    with pytest.raises(MonitoringConfigError, match=message):
        indicators.load_thresholds(path)


def test_the_shipped_thresholds_are_the_documented_defaults() -> None:
    assert indicators.load_thresholds(indicators.DEFAULT_CONFIG) == indicators.Thresholds()


def test_months_before_clamps_to_the_month_end() -> None:
    assert indicators.months_before(date(2024, 3, 31), 1) == date(2024, 2, 29)
    assert indicators.months_before(date(2024, 6, 30), 12) == date(2023, 6, 30)
    assert indicators.months_before(date(2024, 1, 15), 1) == date(2023, 12, 15)


def test_all_indicators_in_one_call(app: Flask) -> None:
    _paid_cohort()
    with database.unit_of_work() as session:
        result = indicators.all_indicators(session, MARCH, now=datetime(2024, 4, 2, tzinfo=UTC))
    data = indicators.plain(result)
    assert data["period"] == {"start": "2024-03-01", "end": "2024-03-31"}
    assert data["payment_delays"]["paid"][-1]["median_days"] == 7.5
    assert data["payment_delays"]["unpaid"][-1]["outstanding"] == "1000.00"
    assert set(data) >= {
        "discharge_to_settlement",
        "unsettled_discharges",
        "poverty_checks",
        "referrals",
        "follow_ups",
        "households",
    }
