"""Insurance office pages: settlement totals, payments and overdue payables, exports and their history."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import func, select, update

from referral_service.domain.exports import ExportLog
from referral_service.domain.ledger import Payable
from referral_service.extensions import database
from tests.conftest import make_app
from tests.functional.test_web_support import HOSPITAL, MCH, PASSWORD, County, build_county, field_errors
from tests.integration.test_exports import LedgerFactory, local

SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
MARCH = "from=2026-03-01&to=2026-03-31"
PAGES = ("/insurer/settlements", "/insurer/payments", "/insurer/exports")


@pytest.fixture
def county(app: Flask, tmp_path: Path) -> County:
    app.config["EXPORT_DIR"] = str(tmp_path)
    county = build_county(app)
    ledger = LedgerFactory()
    ledger.patient("p-ins-1", "62042119900307002X")
    ledger.patient("p-ins-2", "62042119900307003X", given="兰")
    ledger.settlement(HOSPITAL, "p-ins-1", local("2026-03-02T10:00:00"), basic="1234.56", critical="100.01")
    ledger.settlement(MCH, "p-ins-2", local("2026-03-31T23:59:00"), basic="200.00", assistance="50.50")
    # Settled in February, reversed in March: a negative line in March.
    ledger.settlement(HOSPITAL, "p-ins-2", local("2026-02-20T09:00:00"), basic="34.56",
                      reversed_at=local("2026-03-05T09:00:00"))
    # April: outside the period.
    ledger.settlement(HOSPITAL, "p-ins-1", local("2026-04-01T00:00:00"), basic="999.99")
    return county


def test_settlement_totals_by_fund_and_hospital(county: County) -> None:
    page = county.client("insurer").get(f"/insurer/settlements?{MARCH}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    # 1234.56 + 200.00 - 34.56 = 1400.00 basic; 100.01 critical; 50.50 assistance.
    assert re.search(r'data-fund="basic-insurance">.*?1,400\.00', html, re.S)
    assert re.search(r'data-fund="critical-illness">.*?100\.01', html, re.S)
    assert re.search(r'data-fund="medical-assistance">.*?50\.50', html, re.S)
    assert re.search(r'id="grand-total">[^<]*1,550\.51', html)
    assert "青山县妇幼保健院" in html and "999.99" not in html
    one = county.client("insurer").get(
        f"/insurer/settlements?{MARCH}&fund=basic-insurance&hospital={HOSPITAL}")
    assert re.search(r'id="grand-total">[^<]*1,200\.00', one.get_data(as_text=True))


@SQLITE_ONLY
def test_period_errors_are_shown_beside_the_fields(county: County) -> None:
    page = county.client("insurer").get("/insurer/settlements?from=2026-03-31&to=2026-03-01&fund=nope")
    assert page.status_code == 422
    errors = field_errors(page.get_data(as_text=True))
    assert errors["to"] == "The period must end on or after its first day."
    assert errors["fund"] == "Choose one of the funds."
    bad = county.client("insurer").post("/insurer/exports", data={"from": "31/03/2026", "to": "2026-03-31"})
    assert bad.status_code == 422
    assert field_errors(bad.get_data(as_text=True))["from"] == "Enter a date as YYYY-MM-DD."


@SQLITE_ONLY
@pytest.mark.parametrize("day", ["0001-01-01", "0001-01-02", "1899-12-31", "2200-01-01", "9999-12-30",
                                 "9999-12-31"])
def test_days_at_the_ends_of_the_calendar_are_form_errors_not_500(county: County, day: str) -> None:
    insurer = county.client("insurer")
    expected = "Enter a date between 1900-01-01 and 2199-12-31."
    for query, field in ((f"from={day}&to=2026-03-31", "from"), (f"from=2026-03-01&to={day}", "to")):
        page = insurer.get(f"/insurer/settlements?{query}")
        assert page.status_code == 422, (query, page.status_code)
        assert field_errors(page.get_data(as_text=True))[field] == expected
        exported = insurer.post("/insurer/exports", data=dict(p.split("=") for p in query.split("&")) | {
            "format": "csv"})
        assert exported.status_code == 422
        assert field_errors(exported.get_data(as_text=True))[field] == expected
    payments = insurer.get(f"/insurer/payments?as_of={day}")
    assert payments.status_code == 422
    assert field_errors(payments.get_data(as_text=True))["as_of"] == expected
    assert 'id="export-result"' not in insurer.get(f"/insurer/exports?from={day}").get_data(as_text=True)
    with database.session() as db:
        assert db.scalar(select(func.count()).select_from(ExportLog)) == 0
    edges = insurer.get("/insurer/settlements?from=1900-01-01&to=2199-12-31")
    assert edges.status_code == 200  # every settlement of the fixture, April's too
    assert re.search(r'id="grand-total">[^<]*2,585\.06', edges.get_data(as_text=True))
    assert insurer.get("/insurer/payments?as_of=2199-12-31").status_code == 200


def test_payments_show_unpaid_bands_overdue_payables_and_batches(county: County) -> None:
    with database.unit_of_work() as db:
        db.execute(update(Payable).where(Payable.fund == "critical-illness")
                   .values(created_at=datetime(2026, 3, 2, 2, tzinfo=UTC)))
        db.execute(update(Payable).where(Payable.fund == "medical-assistance")
                   .values(status="paid", paid_amount=Payable.amount, payment_id="pay-0001",
                           paid_at=datetime(2026, 4, 20, 2, tzinfo=UTC)))
    page = county.client("insurer").get("/insurer/payments?as_of=2026-06-30")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    overdue = html.split('id="overdue"', 1)[1].split("</table>", 1)[0]
    assert "100.01" in overdue and "120" in overdue  # 2026-03-02 -> 2026-06-30
    batches = html.split('id="batches"', 1)[1].split("</table>", 1)[0]
    assert "pay-0001" in batches and "50.50" in batches
    assert "青山县人民医院" in html.split('id="unpaid"', 1)[1]


def test_export_runs_and_totals_match_the_settlements(county: County) -> None:
    client = county.client("insurer")
    posted = client.post("/insurer/exports", data={"from": "2026-03-01", "to": "2026-03-31", "format": "csv"})
    assert posted.status_code == 303, posted.get_data(as_text=True)  # Post/Redirect/Get
    page = client.get(posted.headers["Location"])
    assert page.status_code == 200, page.get_data(as_text=True)
    html = page.get_data(as_text=True)
    assert 'value="2026-03-01"' in html and 'value="2026-03-31"' in html  # the form shows its period
    again = client.get(posted.headers["Location"])  # a reload shows it again and exports nothing
    assert again.status_code == 200 and 'id="export-result"' in again.get_data(as_text=True)
    with database.session() as db:
        assert db.scalar(select(func.count()).select_from(ExportLog)) == 1
    assert client.get("/insurer/exports/not-an-export").status_code == 404
    result = html.split('id="export-result"', 1)[1].split("</section>", 1)[0]
    assert result.count("matches") == 4  # every fund, including the zero safety net
    links = re.findall(r'href="(/exports/[^"]+)"', result)
    assert any(link.endswith(".csv") for link in links) and any("manifest" in link for link in links)
    data = client.get(next(link for link in links if link.endswith(".csv")))
    assert data.status_code == 200 and "1234.56" in data.get_data(as_text=True)
    data.close()
    history = client.get("/insurer/exports").get_data(as_text=True).split('id="history"', 1)[1]
    assert "2026-03-01 ~ 2026-03-31" in history and "insurer" in history


@SQLITE_ONLY
def test_xlsx_export_for_one_fund(county: County) -> None:
    page = county.client("insurer").post(
        "/insurer/exports", data={"from": "2026-03-01", "to": "2026-03-31", "fund": "basic-insurance",
                                  "format": "xlsx"}, follow_redirects=True)
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and ".xlsx" in html and "1,400.00" in html
    assert county.client("insurer").post("/insurer/exports", data={"format": "pdf"}).status_code == 422


@SQLITE_ONLY
def test_other_roles_may_not_open_the_insurance_pages(county: County) -> None:
    for role in ("clinic", "hospital", "monitor", "admin"):
        client = county.client(role)
        for path in PAGES:
            assert client.get(path).status_code == 403, (role, path)
        assert client.post("/insurer/exports", data={"from": "2026-03-01"}).status_code == 403
    for path in PAGES:
        assert county.client().get(path).headers["Location"].startswith("/login")
    menu = county.client("insurer").get("/office").get_data(as_text=True)
    assert all(f'href="{path}"' in menu for path in PAGES)


@SQLITE_ONLY
def test_the_export_form_needs_its_csrf_token(
    county: County, database_urls: dict[str, str], backend: str
) -> None:
    protected = make_app(database_urls[backend], WTF_CSRF_ENABLED=True)
    client = protected.test_client()
    with client.session_transaction() as sess:
        sess["lang"] = "en"
    page = client.get("/login").get_data(as_text=True)
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    assert client.post("/login", data={"username": "insurer", "password": PASSWORD,
                                       "csrf_token": token}).status_code == 302
    refused = client.post("/insurer/exports", data={"from": "2026-03-01", "to": "2026-03-31"})
    assert refused.status_code == 400
    assert "The form could not be accepted" in refused.get_data(as_text=True)
