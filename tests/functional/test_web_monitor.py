"""Poverty-alleviation office pages: dashboard with SVG charts, alert list and filters, ack / resolve."""

from __future__ import annotations

import re
from datetime import date
from html import unescape
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from referral_service.domain.monitoring import Alert
from referral_service.extensions import database
from referral_service.services import alerts
from tests.conftest import make_app
from tests.functional.test_web_support import HOSPITAL, PASSWORD, County, build_county, field_errors
from tests.integration.test_exports import LedgerFactory, local

SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
FIGURES = {"members": 3, "annual_income": "12000.00", "oop": "9000.00", "oop_share": "0.75",
           "shares_over": [">0.4"], "per_capita_before": "4000.00", "per_capita_after": "1000.00",
           "poverty_line": "4600", "window_months": 12}


def _findings() -> list[alerts.Finding]:
    return [
        alerts.Finding("impoverishing-health-expenditure", "Group", "hh-1", FIGURES, household_id="hh-1",
                       district="青山县", township="城关镇"),
        alerts.Finding("catastrophic-health-expenditure", "Group", "hh-1", FIGURES, household_id="hh-1",
                       district="青山县", township="城关镇"),
        alerts.Finding("return-to-poverty-watch", "Group", "hh-2", FIGURES, household_id="hh-2",
                       district="青山县", township="新集乡"),
    ]


@pytest.fixture
def county(app: Flask) -> County:
    county = build_county(app)
    ledger = LedgerFactory()
    ledger.patient("p-mon-1", "62042119900307002X")
    ledger.settlement(HOSPITAL, "p-mon-1", local("2026-03-02T10:00:00"), basic="700", patient_pay="300")
    with database.unit_of_work() as db:
        alerts.reconcile(db, "poverty-risk", alerts.POVERTY_REASONS, _findings(), as_of=date(2026, 3, 31))
    return county


def _alert_id(reason: str) -> int:
    with database.session() as db:
        return int(db.scalar(select(Alert.id).where(Alert.reason == reason)) or 0)


def test_dashboard_draws_the_charts_as_svg(county: County) -> None:
    page = county.client("monitor").get("/monitor")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for chart in ("chart-oop", "chart-ratio", "chart-bands", "chart-townships"):
        assert re.search(rf'<svg [^>]*id="{chart}" role="img"', html), chart
    assert "<script" not in html.split("<main", 1)[1]
    townships = html.split('id="townships"', 1)[1].split("</table>", 1)[0]
    assert re.search(r"城关镇</a></td><td class=\"num\">2</td>", townships)
    assert "新集乡" in townships


def test_alert_list_filters(county: County) -> None:
    client = county.client("monitor")
    every = client.get("/monitor/alerts").get_data(as_text=True)
    assert every.count("/monitor/alerts/") >= 3
    town = client.get("/monitor/alerts?township=新集乡").get_data(as_text=True)
    table = town.split('id="alerts"', 1)[1]
    assert "Return-to-poverty watch" in table and "Illness-induced poverty" not in table
    reason = client.get("/monitor/alerts?reason=impoverishing-health-expenditure").get_data(as_text=True)
    assert reason.split('id="alerts"', 1)[1].count("/monitor/alerts/") == 1
    assert "No alerts match." in client.get("/monitor/alerts?status=resolved").get_data(as_text=True)
    zh = county.client("monitor", lang="zh").get("/monitor/alerts").get_data(as_text=True)
    assert "因病致贫" in zh


@SQLITE_ONLY
def test_bad_filters_are_shown_beside_the_fields(county: County) -> None:
    page = county.client("monitor").get("/monitor/alerts?reason=nope&status=gone")
    assert page.status_code == 422
    errors = field_errors(page.get_data(as_text=True))
    assert errors == {"reason": "Choose one of the reasons.", "status": "Choose one of the states."}


def test_acknowledge_then_resolve_with_a_note(county: County) -> None:
    client = county.client("monitor")
    alert_id = _alert_id("impoverishing-health-expenditure")
    detail = client.get(f"/monitor/alerts/{alert_id}").get_data(as_text=True)
    figures = detail.split('id="figures"', 1)[1].split("</dl>", 1)[0]
    assert "Out-of-pocket spending in the window (yuan)" in figures and "9000.00" in figures
    ack = client.post(f"/monitor/alerts/{alert_id}/acknowledge", data={"ack_note": "村医已上门"})
    assert ack.status_code == 302
    empty = client.post(f"/monitor/alerts/{alert_id}/resolve", data={"note": "  "})
    assert empty.status_code == 422
    assert field_errors(empty.get_data(as_text=True))["note"] == "Say what was done for this household."
    done = client.post(f"/monitor/alerts/{alert_id}/resolve", data={"note": "已纳入医疗救助"},
                       follow_redirects=True)
    html = done.get_data(as_text=True)
    assert done.status_code == 200 and "已纳入医疗救助" in html and 'id="alert-status">resolved' in html
    assert "村医已上门" in html.split('id="events"', 1)[1]
    again = client.post(f"/monitor/alerts/{alert_id}/acknowledge")
    assert again.status_code == 409


@SQLITE_ONLY
def test_other_roles_may_not_open_the_monitoring_pages(county: County) -> None:
    alert_id = _alert_id("return-to-poverty-watch")
    for role in ("clinic", "hospital", "insurer", "admin"):
        client = county.client(role)
        for path in ("/monitor", "/monitor/alerts", f"/monitor/alerts/{alert_id}"):
            assert client.get(path).status_code == 403, (role, path)
        assert client.post(f"/monitor/alerts/{alert_id}/resolve", data={"note": "x"}).status_code == 403
    assert county.client().get("/monitor").headers["Location"].startswith("/login")
    assert county.client("monitor").get("/monitor/alerts/999999").status_code == 404


@SQLITE_ONLY
def test_resolving_needs_the_csrf_token(county: County, database_urls: dict[str, str], backend: str,
                                        tmp_path: Path) -> None:
    protected = make_app(database_urls[backend], WTF_CSRF_ENABLED=True)
    client = protected.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    assert client.post("/login", data={"username": "monitor", "password": PASSWORD,
                                       "csrf_token": token}).status_code == 302
    alert_id = _alert_id("return-to-poverty-watch")
    assert client.post(f"/monitor/alerts/{alert_id}/resolve", data={"note": "x"}).status_code == 400
    with database.session() as db:
        assert db.get(Alert, alert_id).status == "open"  # type: ignore[union-attr]


def test_alerts_name_the_household_by_place_code_and_eldest_members(county: County) -> None:
    from decimal import Decimal

    from referral_service.domain.registry import Household, Patient

    with database.unit_of_work() as db:
        db.add(Household(id="hh-2", code="QS-0042", annual_income=Decimal("9000.00"), district="青山县",
                         township="新集乡", village="李家沟村"))
        db.flush()
        for pid, given, born in (("m-1", "建国", date(1950, 1, 1)), ("m-2", "秀英", date(1953, 5, 1)),
                                 ("m-3", "小明", date(1980, 2, 2)), ("m-4", "丫丫", date(2015, 3, 3))):
            db.add(Patient(id=pid, family_name="李", given_name=given, gender="unknown", district="青山县",
                           household_id="hh-2", birth_date=born))
    client = county.client("monitor")
    table = client.get("/monitor/alerts?township=新集乡").get_data(as_text=True).split('id="alerts"', 1)[1]
    assert "新集乡 李家沟村 · QS-0042 · 李建国、李秀英、李小明…" in table  # the eldest three, then more
    assert "李丫丫" not in table and "Group/hh-2" in table  # the reference stays beside the words
    unknown = client.get("/monitor/alerts?township=城关镇").get_data(as_text=True).split('id="alerts"', 1)[1]
    assert "Group/hh-1" in unknown  # a household the registry does not hold keeps its reference
    detail = client.get(f"/monitor/alerts/{_alert_id('return-to-poverty-watch')}").get_data(as_text=True)
    assert "李建国、李秀英、李小明…" in detail


def test_an_alert_number_too_large_for_its_column_is_unknown(county: County) -> None:
    big = "99999999999999999999999"
    client = county.client("monitor")
    assert client.get(f"/monitor/alerts/{big}").status_code == 404
    assert client.post(f"/monitor/alerts/{big}/acknowledge").status_code == 404
    assert client.get(f"/monitor/alerts?before={big}").status_code == 200  # read as "from the newest"
    assert client.get(f"/monitor/alerts/{_alert_id('return-to-poverty-watch')}").status_code == 200


def test_the_figures_of_payment_and_referral_alerts_are_labelled_and_formatted(county: County) -> None:
    """Not only the poverty alerts: every reason's figures in words, money in yuan, times in Shanghai."""
    from datetime import UTC, datetime
    from decimal import Decimal

    with database.unit_of_work() as db:
        alerts.reconcile(db, "payment-delays", alerts.PAYMENT_REASONS, [
            alerts.Finding("payment-overdue", "Organization", HOSPITAL, {
                "fund": "basic-insurance", "overdue_days": 30, "overdue": True,
                "overdue_amount": Decimal("1234.5"), "unpaid": Decimal("2000.00"),
                "outstanding": Decimal("2000.00"),
                "by_age": {"0-30": Decimal("765.50"), ">90": Decimal("1234.50")},
                "oldest_since": date(2026, 1, 5), "oldest_days": 95}, scope="basic-insurance",
                organization_id=HOSPITAL, district="青山县", township="城关镇"),
        ], as_of=date(2026, 4, 10))
        alerts.reconcile(db, "referral-timeouts", ("referral-timeout",), [
            alerts.Finding("referral-timeout", "Task", "task-late", {
                "priority": "urgent", "status": "requested",
                "requested_at": datetime(2026, 4, 9, 18, 30, tzinfo=UTC), "waited_hours": 5.5,
                "limit_hours": 2}, district="青山县", township="城关镇"),
        ], as_of=datetime(2026, 4, 10, 0, 0, tzinfo=UTC))
    client = county.client("monitor", lang="zh")
    for reason, shown in (
        ("payment-overdue", ("基本医保", "¥1,234.50", "¥765.50", "2026年1月5日", "95")),
        ("referral-timeout", ("紧急", "2026-04-10 02:30", "5.5", "2")),
    ):
        html = client.get(f"/monitor/alerts/{_alert_id(reason)}").get_data(as_text=True)
        figures = unescape(html.split('id="figures"', 1)[1].split("</dl>", 1)[0])
        for raw in ("overdue_amount", "by_age", "oldest_since", "requested_at", "waited_hours", "limit_hours",
                    "basic-insurance", "{", "T18:30"):
            assert raw not in figures, (reason, raw, figures)
        for text in shown:
            assert text in figures, (reason, text, figures)
