"""The monitoring JSON endpoints and the FHIR Flags over HTTP (both engines)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from referral_service.extensions import database
from referral_service.services import alerts
from tests.functional.fhir_helpers import Fhir, token_for
from tests.support import monitoring as f


@dataclass
class Callers:
    """Bearer headers of the callers: the poverty office, the insurer, a clinic, the platform, a hospital."""

    office: dict[str, str]
    insurer: dict[str, str]
    clinic: dict[str, str]
    platform: str
    hospital: str


@pytest.fixture
def callers(
    client: FlaskClient, make_org: Callable[..., str], make_api_client: Callable[..., tuple[str, str]]
) -> Callers:
    make_org("poverty-office", facility_level=None, kind="poverty-office")
    make_org("insurer", facility_level=None, kind="insurer")
    make_org("c1", facility_level="township")
    f.org("h1", township="城关镇")

    def bearer(client_id: str, scopes: str, org_id: str) -> str:
        make_api_client(client_id, scopes=scopes, org_id=org_id)
        return token_for(client, client_id, "s3cret-value")

    return Callers(
        office={"Authorization": f"Bearer {bearer('monitor-his', 'system/Flag.rus', 'poverty-office')}"},
        insurer={"Authorization": f"Bearer {bearer('insurance-office', 'system/Flag.rs', 'insurer')}"},
        clinic={"Authorization": f"Bearer {bearer('township-his', 'system/*.cruds', 'c1')}"},
        platform=bearer("county-platform", "system/*.cruds", "poverty-office"),
        hospital=bearer("county-his", "system/*.cruds", "h1"),
    )


def _at_risk_households() -> None:
    hb = f.household("hb", 20000, 2)  # catastrophic and watch
    hc = f.household("hc", 8000, 2, township="新集乡")  # impoverishing and watch
    f.settlement(hb[0], "h1", discharge="2024-02-01", patient_pay="8000.01")
    f.settlement(hc[0], "h1", discharge="2024-03-01", patient_pay="0.01")
    f.payable("h1", "basic-insurance", "300", created="2024-05-01T09:00:00")
    with database.unit_of_work() as session:
        alerts.scan_poverty_risk(session, date(2024, 6, 30))
        alerts.scan_payment_delays(session, date(2024, 6, 30))


def _ids(response: TestResponse) -> list[str]:
    assert response.status_code == 200, response.get_json()
    return sorted(e["resource"]["id"] for e in response.get_json().get("entry", []))


def test_indicators_for_a_period_and_filters(client: FlaskClient, callers: Callers) -> None:
    f.payable(
        "h1",
        "basic-insurance",
        "300",
        created="2024-03-01T09:00:00",
        status="paid",
        paid_amount="300",
        paid_at="2024-03-04T09:00:00",
    )
    response = client.get(
        "/api/monitoring/indicators?start=2024-03-01&end=2024-03-31", headers=callers.office
    )
    assert response.status_code == 200, response.get_json()
    data = response.get_json()
    assert data["period"] == {"start": "2024-03-01", "end": "2024-03-31"}
    assert data["payment_delays"]["paid"][0] == {
        "hospital_id": "h1",
        "fund": "basic-insurance",
        "paid": 1,
        "median_days": 3.0,
        "p90_days": 3.0,
        "mean_days": 3.0,
        "max_days": 3,
    }
    for name in (
        "discharge_to_settlement",
        "unsettled_discharges",
        "poverty_checks",
        "referrals",
        "follow_ups",
        "households",
    ):
        assert name in data
    one = client.get(
        "/api/monitoring/indicators/payment-delays?start=2024-03-01&end=2024-03-31"
        "&fund=critical-illness&hospital=h1",
        headers=callers.insurer,
    )
    assert one.status_code == 200
    assert one.get_json()["payment-delays"]["paid"] == [
        {
            "hospital_id": None,
            "fund": None,
            "paid": 0,
            "median_days": None,
            "p90_days": None,
            "mean_days": None,
            "max_days": None,
        }
    ]
    assert one.get_json()["filters"] == {"hospital_id": "h1", "fund": "critical-illness", "township": None}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("indicators?fund=lottery", "fund"),
        ("indicators?start=2024-13-01", "start"),
        ("indicators?start=2024-04-01&end=2024-03-01", "start"),
        # days near the ends of the calendar: refused, not an OverflowError (500)
        ("indicators?start=0001-01-01&end=2024-03-01", "start"),
        ("indicators?end=0001-01-01", "end"),
        ("indicators?end=9999-12-31", "end"),
        ("indicators?start=2024-01-01&end=2200-01-01", "end"),
        ("indicators/payment-delays?end=9999-12-30", "end"),
        ("indicators/households?end=0001-01-02", "end"),
        ("indicators/discharge-to-settlement?start=1899-12-31&end=2024-03-01", "start"),
        ("alerts?status=sleeping", "status"),
        ("alerts?limit=0", "limit"),
    ],
)
def test_bad_queries_get_400_with_the_reason(
    client: FlaskClient, callers: Callers, query: str, message: str
) -> None:
    response = client.get(f"/api/monitoring/{query}", headers=callers.office)
    assert response.status_code == 400
    assert message in response.get_json()["message"]


def test_an_unknown_indicator_section_is_not_found(client: FlaskClient, callers: Callers) -> None:
    response = client.get("/api/monitoring/indicators/unknown", headers=callers.office)
    assert response.status_code == 404
    assert "unknown indicator section" in response.get_json()["message"]
    assert "payment-delays" in response.get_json()["message"]  # it names the sections there are


def test_who_may_call(client: FlaskClient, callers: Callers) -> None:
    assert client.get("/api/monitoring/alerts").status_code == 401
    assert (
        client.get("/api/monitoring/alerts", headers={"Authorization": "Bearer nonsense"}).status_code == 401
    )
    assert client.get("/api/monitoring/alerts", headers=callers.clinic).status_code == 403  # not an office
    assert client.get("/api/monitoring/alerts", headers=callers.insurer).status_code == 200
    # the insurer's token may read Flags but not update them
    assert (
        client.post(
            "/api/monitoring/alerts/1/resolve", json={"note": "x"}, headers=callers.insurer
        ).status_code
        == 403
    )


def test_alert_list_detail_acknowledge_resolve(client: FlaskClient, callers: Callers) -> None:
    _at_risk_households()
    listed = client.get(
        "/api/monitoring/alerts?reason=return-to-poverty-watch&status=open&township=新集乡",
        headers=callers.office,
    )
    assert listed.status_code == 200
    items = listed.get_json()["alerts"]
    assert [(a["subject"], a["reason"], a["status"]) for a in items] == [
        ("Group/hc", "return-to-poverty-watch", "open")
    ]
    assert listed.get_json()["next_before"] is None
    everything = client.get("/api/monitoring/alerts", headers=callers.office).get_json()["alerts"]
    assert len(everything) == 5
    overdue = next(a for a in everything if a["reason"] == "payment-overdue")
    assert (overdue["scope"], overdue["figures"]["overdue_amount"]) == ("basic-insurance", "300.00")

    target = next(a for a in everything if a["reason"] == "catastrophic-health-expenditure")
    url = f"/api/monitoring/alerts/{target['id']}"
    detail = client.get(url, headers=callers.office).get_json()
    assert detail["figures"]["oop"] == "8000.01" and detail["flag"] == f"Flag/alert-{target['id']}"
    assert [e["action"] for e in detail["events"]] == ["raised"]

    ack = client.post(
        f"{url}/acknowledge", json={"note": "called the village doctor"}, headers=callers.office
    )
    assert ack.status_code == 200 and ack.get_json()["status"] == "acknowledged"
    assert client.post(f"{url}/acknowledge", headers=callers.office).status_code == 409
    missing = client.post(f"{url}/resolve", json={}, headers=callers.office)
    assert missing.status_code == 400 and "note" in missing.get_json()["message"]
    done = client.post(f"{url}/resolve", json={"note": "assistance granted"}, headers=callers.office)
    assert done.status_code == 200
    body = done.get_json()
    assert (body["status"], body["resolved_by"], body["resolution_note"]) == (
        "resolved",
        "monitor-his",
        "assistance granted",
    )
    assert [(e["action"], e["actor"]) for e in body["events"]] == [
        ("raised", "system"),
        ("acknowledged", "monitor-his"),
        ("resolved", "monitor-his"),
    ]
    assert client.post(f"{url}/resolve", json={"note": "again"}, headers=callers.office).status_code == 409
    assert client.get("/api/monitoring/alerts/999999", headers=callers.office).status_code == 404
    big = "/api/monitoring/alerts/99999999999999999999999"  # beyond the integer column: unknown, not 500
    assert client.get(big, headers=callers.office).status_code == 404
    assert client.post(f"{big}/resolve", json={"note": "x"}, headers=callers.office).status_code == 404
    resolved = client.get("/api/monitoring/alerts?status=resolved", headers=callers.office).get_json()
    assert [a["id"] for a in resolved["alerts"]] == [target["id"]]


def test_flags_are_searchable_over_fhir(client: FlaskClient, callers: Callers) -> None:
    _at_risk_households()
    platform = Fhir(client, callers.platform)
    about_hb = platform.get("Flag?subject=Group/hb")
    ids = _ids(about_hb)
    assert len(ids) == 2
    flag = next(
        e["resource"]
        for e in about_hb.get_json()["entry"]
        if e["resource"]["code"]["coding"][0]["code"] == "catastrophic-health-expenditure"
    )
    assert (flag["status"], flag["subject"]) == ("active", {"reference": "Group/hb"})
    assert _ids(platform.get("Flag?code=catastrophic-health-expenditure&status=active")) == [flag["id"]]
    # the scan stores its new Flags in bulk, with the texts of their codes (`code:text=`) as a save has
    reason = alerts.REASONS["catastrophic-health-expenditure"]
    assert _ids(platform.get("Flag", query_string={"code:text": reason.en.upper()})) == [flag["id"]]
    assert _ids(platform.get("Flag", query_string={"code:text": reason.zh})) == [flag["id"]]
    assert _ids(platform.get(f"Flag?category={alerts.CATEGORY_SYSTEM}|poverty")) == sorted(
        ids + _ids(platform.get("Flag?subject=Group/hc"))
    )
    alert_id = flag["id"].removeprefix("alert-")
    client.post(f"/api/monitoring/alerts/{alert_id}/resolve", json={"note": "done"}, headers=callers.office)
    assert _ids(platform.get("Flag?subject=Group/hb&status=inactive")) == [flag["id"]]
    assert platform.get(f"Flag/{flag['id']}").get_json()["period"].keys() == {"start", "end"}
    # the offices that may list every alert read every Flag too, the hospital's included
    listed = client.get("/api/monitoring/alerts", headers=callers.insurer).get_json()["alerts"]
    for headers in (callers.insurer, callers.office):
        office = Fhir(client, headers["Authorization"].removeprefix("Bearer "))
        assert _ids(office.get("Flag")) == sorted(f"alert-{a['id']}" for a in listed)
        assert len(_ids(office.get("Flag?subject=Organization/h1"))) == 1
    # the hospital sees the Flag about its own overdue payments, and not the households'
    hospital = Fhir(client, callers.hospital)
    own = hospital.get("Flag?subject=Organization/h1")
    assert len(_ids(own)) == 1
    assert _ids(hospital.get("Flag?subject=Group/hb")) == []
    # Flags are written by the scans only
    assert hospital.post(
        "Flag",
        {
            "resourceType": "Flag",
            "status": "active",
            "code": {"text": "x"},
            "subject": {"reference": "Organization/h1"},
        },
    ).status_code in (403, 405)


@pytest.mark.parametrize(
    "body",
    [
        b'{"note": "\\ud800"}',  # a lone surrogate: UTF-8 (and so the database) cannot hold it
        b'{"note": "a\\u0000b"}',  # NUL: PostgreSQL cannot store it
        b'{"note": ' + b"9" * 5000 + b"}",  # more digits than Python turns into an int
        b'{"note": ' + b"[" * 200 + b"]" * 200 + b"}",
    ],
)
def test_notes_that_cannot_be_stored_are_400_and_change_nothing(
    client: FlaskClient, callers: Callers, body: bytes
) -> None:
    _at_risk_households()
    target = client.get("/api/monitoring/alerts", headers=callers.office).get_json()["alerts"][0]
    url = f"/api/monitoring/alerts/{target['id']}"
    for action in ("acknowledge", "resolve"):
        response = client.post(f"{url}/{action}", data=body, content_type="application/json",
                               headers=callers.office)
        assert response.status_code == 400, response.get_json()
        assert response.get_json()["error"] and response.get_json()["message"]
    assert client.get(url, headers=callers.office).get_json()["status"] == "open"
