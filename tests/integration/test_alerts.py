"""Alerts: raised by the scans once per subject and reason, updated on re-runs, cleared, reopened; the
lifecycle open -> acknowledged -> resolved with who did what; FHIR Flags kept in step (both engines)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.flag import Flag
from flask import Flask
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from referral_service.domain.actor import Actor
from referral_service.domain.errors import BadRequest, Conflict, Forbidden, NotFound
from referral_service.domain.fhir_store import StoredResource
from referral_service.domain.ledger import Payable, Settlement
from referral_service.domain.monitoring import Alert, AlertEvent
from referral_service.extensions import database
from referral_service.services import alerts
from tests.support import monitoring as f

OFFICE = Actor(
    name="monitor-his", kind="client", organization_id="poverty-office", organization_kind="poverty-office"
)
CLINIC = Actor(name="township-his", kind="client", organization_id="c1", facility_level="township")
AS_OF = date(2024, 6, 30)


def flag(flag_id: str) -> dict[str, Any]:
    with database.unit_of_work() as session:
        content = session.scalar(
            select(StoredResource.content).where(
                StoredResource.res_type == "Flag", StoredResource.res_id == flag_id
            )
        )
    assert content is not None, f"no Flag/{flag_id}"
    resource: dict[str, Any] = orjson.loads(content)
    Flag.model_validate(resource)  # a valid FHIR R4 Flag
    return resource


def alert_rows() -> list[tuple[str, str, str, str, bool]]:
    with database.unit_of_work() as session:
        return [
            tuple(r)
            for r in session.execute(  # type: ignore[misc]
                select(
                    Alert.subject_id, Alert.reason, Alert.scope, Alert.status, Alert.condition_holds
                ).order_by(Alert.subject_id, Alert.reason, Alert.scope)
            ).all()
        ]


def alert_id(subject_id: str, reason: str) -> int:
    with database.unit_of_work() as session:
        found = session.scalar(select(Alert.id).where(Alert.subject_id == subject_id, Alert.reason == reason))
    assert found is not None
    return found


def scan_poverty(as_of: date = AS_OF) -> alerts.ScanResult:
    with database.unit_of_work() as session:
        return alerts.scan_poverty_risk(session, as_of)


def _households() -> dict[str, list[str]]:
    f.org("h1")
    members = {
        "hb": f.household("hb", 20000, 2),  # catastrophic and watch
        "hc": f.household("hc", 8000, 2),  # impoverishing and watch
        "ha": f.household("ha", 20000, 2),  # exactly 40%: nothing
    }
    f.settlement(members["hb"][0], "h1", discharge="2024-02-01", patient_pay="8000.01")
    f.settlement(members["hc"][0], "h1", discharge="2024-03-01", patient_pay="0.01")
    f.settlement(members["ha"][0], "h1", discharge="2024-03-01", patient_pay="8000.00")
    return members


# ------------------------------------------------------------------- raising without duplicates


def test_poverty_scan_raises_one_alert_per_household_and_reason(app: Flask) -> None:
    _households()
    first = scan_poverty()
    assert (first.found, first.raised, first.updated, first.cleared) == (4, 4, 0, 0)
    expected = [
        ("hb", "catastrophic-health-expenditure", "", "open", True),
        ("hb", "return-to-poverty-watch", "", "open", True),
        ("hc", "impoverishing-health-expenditure", "", "open", True),
        ("hc", "return-to-poverty-watch", "", "open", True),
    ]
    assert alert_rows() == expected
    again = scan_poverty()
    assert (again.found, again.raised, again.reopened, again.updated, again.cleared) == (4, 0, 0, 0, 0)
    assert alert_rows() == expected
    with database.unit_of_work() as session:
        hb = session.get(Alert, alert_id("hb", "catastrophic-health-expenditure"))
        assert hb is not None
        assert hb.figures == {
            "members": 2,
            "annual_income": "20000.00",
            "oop": "8000.01",
            "oop_share": "0.4000",
            "shares_over": ["0.10", "0.25", "0.40"],
            "per_capita_before": "10000.00",
            "per_capita_after": "5999.99",
            "poverty_line": "4000",
            "window_months": 12,
        }
        assert (hb.category, hb.household_id, hb.township, hb.district) == (
            "poverty",
            "hb",
            "城关镇",
            "青山县",
        )
        events = session.scalars(select(AlertEvent.action).where(AlertEvent.alert_id == hb.id)).all()
        assert events == ["raised"]
        assert session.scalar(select(func.count()).select_from(AlertEvent)) == 4


def test_a_rerun_updates_the_figures(app: Flask) -> None:
    members = _households()
    scan_poverty()
    f.settlement(members["hb"][1], "h1", discharge="2024-06-01", patient_pay="1000")
    result = scan_poverty()
    assert (result.raised, result.updated) == (0, 2)  # both of hb's alerts
    with database.unit_of_work() as session:
        hb = session.get(Alert, alert_id("hb", "catastrophic-health-expenditure"))
        assert hb is not None and hb.figures["oop"] == "9000.01"


def test_the_database_refuses_a_second_alert_for_the_same_subject_and_reason(app: Flask) -> None:
    def add() -> None:
        with database.unit_of_work() as session:
            session.add(
                Alert(
                    reason="deepening-poverty",
                    category="poverty",
                    subject_type="Group",
                    subject_id="hx",
                    scope="",
                    status="open",
                    condition_holds=True,
                    figures={},
                )
            )

    add()
    with pytest.raises(IntegrityError):
        add()


# ------------------------------------------------------------------- clearing and reopening


def test_an_alert_clears_itself_when_the_condition_goes_and_reopens_when_it_returns(app: Flask) -> None:
    _households()
    scan_poverty()
    cat = alert_id("hb", "catastrophic-health-expenditure")
    with database.unit_of_work() as session:
        session.execute(
            update(Settlement)
            .where(Settlement.patient_pay == f.money("8000.01"))
            .values(status="reversed", reversed_at=datetime(2024, 6, 1, tzinfo=UTC))
        )
    cleared = scan_poverty()
    assert (cleared.found, cleared.cleared) == (2, 2)
    with database.unit_of_work() as session:
        alert = session.get(Alert, cat)
        assert alert is not None
        assert (alert.status, alert.condition_holds, alert.resolved_by) == ("resolved", False, "system")
        assert alert.resolution_note == (
            "cleared: the condition no longer holds (poverty-risk as of 2024-06-30)"
        )
    resource = flag(f"alert-{cat}")
    assert resource["status"] == "inactive" and "end" in resource["period"]

    # the stay is back (a new settlement): the same alert reopens, not a second one
    f.settlement(f"{'hb'}-1", "h1", discharge="2024-06-15", patient_pay="8000.01")
    back = scan_poverty()
    assert (back.raised, back.reopened) == (0, 2)
    assert [r for r in alert_rows() if r[0] == "hb"] == [
        ("hb", "catastrophic-health-expenditure", "", "open", True),
        ("hb", "return-to-poverty-watch", "", "open", True),
    ]
    with database.unit_of_work() as session:
        actions = session.scalars(
            select(AlertEvent.action).where(AlertEvent.alert_id == cat).order_by(AlertEvent.id)
        ).all()
    assert actions == ["raised", "resolved", "reopened"]
    resource = flag(f"alert-{cat}")
    assert resource["status"] == "active" and "end" not in resource["period"]
    assert resource["meta"]["versionId"] == "3"


def test_a_resolved_alert_stays_resolved_while_the_condition_lasts(app: Flask) -> None:
    members = _households()
    scan_poverty()
    cat = alert_id("hb", "catastrophic-health-expenditure")
    with database.unit_of_work() as session:
        alerts.resolve(session, OFFICE, cat, "medical assistance granted")
    f.settlement(members["hb"][1], "h1", discharge="2024-06-01", patient_pay="1000")
    result = scan_poverty()
    assert result.reopened == 0
    with database.unit_of_work() as session:
        alert = session.get(Alert, cat)
        assert alert is not None
        assert (alert.status, alert.figures["oop"], alert.resolved_by) == (
            "resolved",
            "9000.01",
            "monitor-his",
        )


# ------------------------------------------------------------------- lifecycle


def test_acknowledge_then_resolve_with_a_note_records_who_did_what(app: Flask) -> None:
    _households()
    scan_poverty()
    cat = alert_id("hb", "catastrophic-health-expenditure")
    with database.unit_of_work() as session:
        view = alerts.acknowledge(session, OFFICE, cat, "  visiting the household on Monday ")
    assert (view["status"], view["acknowledged_by"]) == ("acknowledged", "monitor-his")
    assert flag(f"alert-{cat}")["status"] == "active"  # still active until resolved
    with database.unit_of_work() as session, pytest.raises(Conflict, match="only an open alert"):
        alerts.acknowledge(session, OFFICE, cat)
    with database.unit_of_work() as session, pytest.raises(BadRequest, match="note"):
        alerts.resolve(session, OFFICE, cat, "   ")
    with database.unit_of_work() as session:
        view = alerts.resolve(session, OFFICE, cat, "medical assistance of 5,000 granted")
    assert (view["status"], view["resolved_by"], view["resolution_note"]) == (
        "resolved",
        "monitor-his",
        "medical assistance of 5,000 granted",
    )
    assert [
        (e["action"], e["actor"], e["actor_kind"], e["organization_id"], e["note"]) for e in view["events"]
    ] == [
        ("raised", "system", "system", None, None),
        ("acknowledged", "monitor-his", "client", "poverty-office", "visiting the household on Monday"),
        ("resolved", "monitor-his", "client", "poverty-office", "medical assistance of 5,000 granted"),
    ]
    resource = flag(f"alert-{cat}")
    assert resource["status"] == "inactive"
    ended = datetime.fromisoformat(resource["period"]["end"].replace("Z", "+00:00"))
    resolved = datetime.fromisoformat(view["resolved_at"].replace("Z", "+00:00"))
    assert abs((ended - resolved).total_seconds()) < 0.001
    with database.unit_of_work() as session, pytest.raises(Conflict, match="already resolved"):
        alerts.resolve(session, OFFICE, cat, "again")


def test_only_the_offices_may_handle_alerts(app: Flask) -> None:
    _households()
    scan_poverty()
    cat = alert_id("hb", "catastrophic-health-expenditure")
    with database.unit_of_work() as session, pytest.raises(Forbidden):
        alerts.acknowledge(session, CLINIC, cat)
    with database.unit_of_work() as session, pytest.raises(Forbidden):
        alerts.list_alerts(session, CLINIC, alerts.AlertQuery())
    with database.unit_of_work() as session, pytest.raises(NotFound):
        alerts.get_alert(session, OFFICE, 999_999)


def test_alert_list_filters_and_pages(app: Flask) -> None:
    _households()
    scan_poverty()
    with database.unit_of_work() as session:
        watch, cursor = alerts.list_alerts(
            session, OFFICE, alerts.AlertQuery(reason="return-to-poverty-watch")
        )
        page1, more = alerts.list_alerts(session, OFFICE, alerts.AlertQuery(limit=3))
        page2, end = alerts.list_alerts(session, OFFICE, alerts.AlertQuery(limit=3, before_id=more))
        elsewhere, _ = alerts.list_alerts(session, OFFICE, alerts.AlertQuery(township="新集乡"))
    assert sorted(a["household_id"] for a in watch) == ["hb", "hc"] and cursor is None
    assert len(page1) == 3 and more is not None and len(page2) == 1 and end is None
    assert {a["id"] for a in page1}.isdisjoint({a["id"] for a in page2})
    assert elsewhere == []
    with pytest.raises(BadRequest, match="unknown reason"):
        alerts.AlertQuery(reason="bored")


# ------------------------------------------------------------------- FHIR Flag


def test_each_alert_is_a_fhir_flag_about_its_subject(app: Flask) -> None:
    _households()
    scan_poverty()
    cat = alert_id("hb", "catastrophic-health-expenditure")
    resource = flag(f"alert-{cat}")
    assert resource["subject"] == {"reference": "Group/hb"}
    assert resource["status"] == "active"
    assert resource["code"]["coding"][0] == {
        "system": alerts.REASON_SYSTEM,
        "code": "catastrophic-health-expenditure",
        "display": alerts.REASONS["catastrophic-health-expenditure"].en,
    }
    assert {"system": alerts.CATEGORY_SYSTEM, "code": "poverty"} in resource["category"][0]["coding"]
    assert resource["identifier"] == [{"system": alerts.ALERT_ID_SYSTEM, "value": str(cat)}]
    assert set(resource["period"]) == {"start"}


# ------------------------------------------------------------------- the other scans


def test_payment_delay_scan_alerts_per_hospital_and_fund_and_clears_when_paid(app: Flask) -> None:
    f.org("h1", township="城关镇")
    f.org("h2")
    old = f.payable("h1", "basic-insurance", "300", created="2024-05-01T09:00:00")  # 60 days on 30 June
    f.payable("h1", "medical-assistance", "50", created="2024-05-20T09:00:00")  # 41 days
    f.payable("h2", "basic-insurance", "70", created="2024-06-20T09:00:00")  # 10 days: not overdue
    f.patient("p9")
    f.inpatient_stay("e1", "h2", "p9", start="2024-06-01", end="2024-06-10")
    with database.unit_of_work() as session:
        result = alerts.scan_payment_delays(session, AS_OF)
    assert result.raised == 3
    assert [r[:3] for r in alert_rows()] == [
        ("e1", "unsettled-discharge", ""),
        ("h1", "payment-overdue", "basic-insurance"),
        ("h1", "payment-overdue", "medical-assistance"),
    ]
    with database.unit_of_work() as session:
        alert = session.scalars(select(Alert).where(Alert.scope == "basic-insurance")).one()
    assert (alert.organization_id, alert.township) == ("h1", "城关镇")
    assert (alert.figures["overdue"], alert.figures["overdue_amount"], alert.figures["oldest_days"]) == (
        1,
        "300.00",
        60,
    )
    resource = flag(f"alert-{alert.id}")
    assert resource["subject"] == {"reference": "Organization/h1"}
    assert resource["code"]["coding"][1] == {
        "system": alerts.SETTLEMENT_COMPONENT_SYSTEM,
        "code": "basic-insurance",
    }
    assert flag(f"alert-{alert_id('e1', 'unsettled-discharge')}")["subject"] == {"reference": "Patient/p9"}

    with database.unit_of_work() as session:
        session.execute(
            update(Payable)
            .where(Payable.id == old)
            .values(status="paid", paid_amount=f.money(300), paid_at=datetime(2024, 6, 29, tzinfo=UTC))
        )
    f.settlement("p9", "h2", discharge="2024-06-10")
    with database.unit_of_work() as session:
        again = alerts.scan_payment_delays(session, AS_OF)
    assert (again.found, again.cleared) == (1, 2)
    assert [(r[0], r[2], r[3]) for r in alert_rows()] == [
        ("e1", "", "resolved"),
        ("h1", "basic-insurance", "resolved"),
        ("h1", "medical-assistance", "open"),
    ]


def test_referral_timeout_scan_follows_the_tasks(app: Flask) -> None:
    f.org("h1")
    f.patient("p1", township="新集乡")
    f.task("t-stat", "h1", "p1", [("requested", "2024-06-30T08:00:00Z")], priority="stat")
    f.task("t-routine", "h1", "p1", [("requested", "2024-06-30T00:00:00Z")])
    now = datetime(2024, 6, 30, 10, 30, tzinfo=UTC)
    with database.unit_of_work() as session:
        first = alerts.scan_referral_timeouts(session, now)
    assert (first.found, first.raised) == (1, 1)
    assert alert_rows() == [("t-stat", "referral-timeout", "", "open", True)]
    with database.unit_of_work() as session:
        alert = session.get(Alert, alert_id("t-stat", "referral-timeout"))
        assert alert is not None
        assert alert.figures == {
            "priority": "stat",
            "status": "requested",
            "requested_at": "2024-06-30T08:00:00Z",
            "waited_hours": 2.5,
            "limit_hours": 2,
        }
        assert (alert.patient_id, alert.organization_id, alert.township) == ("p1", "h1", "新集乡")
    assert flag(f"alert-{alert.id}")["subject"] == {"reference": "Patient/p1"}

    later = datetime(2024, 7, 1, 1, 0, tzinfo=UTC)
    f.store_versions(
        "Task",
        "t-stat",
        [
            (
                {
                    "status": "accepted",
                    "intent": "order",
                    "priority": "stat",
                    "owner": {"reference": "Organization/h1"},
                    "for": {"reference": "Patient/p1"},
                },
                "2024-06-30T11:00:00Z",
            )
        ],
    )
    with database.unit_of_work() as session:
        second = alerts.scan_referral_timeouts(session, later)
    assert (second.found, second.raised, second.cleared) == (1, 1, 1)
    assert alert_rows() == [
        ("t-routine", "referral-timeout", "", "open", True),
        ("t-stat", "referral-timeout", "", "resolved", False),
    ]


def test_missed_follow_up_scan_ignores_a_draft_plan_until_it_is_confirmed(app: Flask) -> None:
    """A CarePlan proposed with an unconfirmed down-referral (draft) raises nothing; once the hospital
    confirms the referral (the plan is active) its missed follow-up is flagged."""
    f.org("c1", level="township")
    f.patient("p1")
    visits = [("2024-06-07", "scheduled"), ("2024-07-20", "scheduled")]
    f.care_plan("cp-draft", "c1", "p1", visits, status="draft")
    with database.unit_of_work() as session:
        first = alerts.scan_missed_follow_ups(session, AS_OF)
    assert (first.found, first.raised) == (0, 0)
    with database.unit_of_work() as session:
        assert session.scalar(select(Alert.id).where(Alert.subject_id == "cp-draft")) is None
    f.care_plan("cp-draft", "c1", "p1", visits, status="active")
    with database.unit_of_work() as session:
        confirmed = alerts.scan_missed_follow_ups(session, AS_OF)
    assert (confirmed.found, confirmed.raised) == (1, 1)
    with database.unit_of_work() as session:
        alert = session.get(Alert, alert_id("cp-draft", "missed-follow-up"))
        assert alert is not None and alert.figures["missed_dates"] == ["2024-06-07"]


def test_missed_follow_up_scan(app: Flask) -> None:
    f.org("c1", level="township")
    f.patient("p1")
    f.care_plan(
        "cp1",
        "c1",
        "p1",
        [("2024-06-07", "completed"), ("2024-06-20", "scheduled"), ("2024-07-20", "scheduled")],
    )
    with database.unit_of_work() as session:
        first = alerts.scan_missed_follow_ups(session, AS_OF)
    assert first.raised == 1
    with database.unit_of_work() as session:
        alert = session.get(Alert, alert_id("cp1", "missed-follow-up"))
        assert alert is not None
        assert alert.figures == {"missed_dates": ["2024-06-20"], "days_overdue": 10}
        assert (alert.organization_id, alert.patient_id, alert.category) == ("c1", "p1", "follow-up")
    with database.unit_of_work() as session:
        later = alerts.scan_missed_follow_ups(session, date(2024, 7, 25))
    assert (later.raised, later.updated) == (0, 1)
    with database.unit_of_work() as session:
        alert = session.get(Alert, alert_id("cp1", "missed-follow-up"))
        assert alert is not None and alert.figures["missed_dates"] == ["2024-06-20", "2024-07-20"]
