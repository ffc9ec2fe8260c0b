"""Concurrent settlements of one person on PostgreSQL: caps hold, accumulators equal the ledger."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
import requests
from flask.testing import FlaskClient
from sqlalchemy import func, select

from referral_service.domain.ledger import Settlement, YearAccumulator
from referral_service.extensions import database
from tests.functional.settlement_helpers import County, claim
from tests.support.live_server import live_server

D = Decimal


@pytest.fixture
def county(client: FlaskClient, make_api_client: Callable[..., tuple[str, str]], backend: str) -> County:
    if backend != "postgresql":
        pytest.skip("row-lock concurrency is a PostgreSQL property (SQLite serialises every writer)")
    return County(client, make_api_client)


def test_fifty_concurrent_settlements_never_overspend(county: County) -> None:
    pid, cov = county.patient(poor=True)
    token = county.his["hosp"].token
    claims = [
        claim(
            pid,
            cov,
            "hosp",
            [("40000.00", "A"), ("500.00", "B"), ("300.00", "C")],
            discharge=f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}",
        )
        for i in range(50)
    ]
    with live_server(county.platform.client.application) as base:

        def submit(body: dict) -> int:
            r = requests.post(
                f"{base}/fhir/Claim/$submit",
                json=body,
                timeout=60,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
            )
            return r.status_code

        with ThreadPoolExecutor(max_workers=50) as pool:
            statuses = list(pool.map(submit, claims))
    assert statuses == [200] * 50
    with database.session() as s:
        rows = list(s.scalars(select(Settlement).where(Settlement.status == "active")))
        acc = s.scalars(select(YearAccumulator)).one()
    assert len(rows) == 50
    basic = sum((r.basic_insurance for r in rows), D(0))
    assistance = sum((r.medical_assistance for r in rows), D(0))
    assert basic <= D("150000.00")
    assert basic == D("150000.00")  # 50 stays of 40,000 exhaust the basic cap
    assert assistance <= D("30000.00")
    assert acc.inpatient_basic_paid == basic
    assert acc.assistance_paid == assistance
    assert acc.critical_illness_paid == sum((r.critical_illness for r in rows), D(0))
    assert acc.critical_illness_cumulative_r1 == sum((r.ci_r1_added for r in rows), D(0))
    assert sorted(r.sequence for r in rows) == list(range(1, 51))
    for r in rows:
        assert (
            r.basic_insurance
            + r.critical_illness
            + r.medical_assistance
            + r.poverty_safety_net
            + r.patient_pay
            == r.total
        )


def test_concurrent_identical_resubmissions_make_one_settlement(county: County) -> None:
    pid, cov = county.patient()
    token = county.his["hosp"].token
    body = claim(pid, cov, "hosp", [("8000.00", "A")], key="SAME-KEY")
    with live_server(county.platform.client.application) as base:

        def submit(_: int) -> tuple[int, str]:
            r = requests.post(
                f"{base}/fhir/Claim/$submit",
                json=body,
                timeout=60,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
            )
            return r.status_code, r.json().get("id", "")

        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(submit, range(20)))
    assert {status for status, _ in results} == {200}
    assert len({rid for _, rid in results}) == 1
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(Settlement)) == 1
        assert s.scalars(select(YearAccumulator)).one().inpatient_basic_paid == D("6000.00")


def test_a_delete_and_a_settlement_of_one_patient_never_both_succeed(county: County) -> None:
    """Either order: a DELETE of the patient waits for a settlement in flight (then 409), and a
    settlement waits for a DELETE in flight (then 422: the patient is unknown)."""
    import time

    from referral_service.domain.actor import SYSTEM
    from referral_service.services import resources
    from referral_service.services import settlement as settlement_service

    token = county.his["hosp"].token
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    pid, cov = county.patient()
    other, other_cov = county.patient()
    with live_server(county.platform.client.application) as base, ThreadPoolExecutor(max_workers=1) as pool:
        # A DELETE in flight (uncommitted): the settlement waits for it, then finds no patient. (Her
        # coverage, which refers to her, goes first: a referenced patient is not deleted.)
        with database.unit_of_work() as session:
            resources.delete(session, SYSTEM, "Coverage", cov)
            resources.delete(session, SYSTEM, "Patient", pid)
            submitted = pool.submit(
                lambda: requests.post(f"{base}/fhir/Claim/$submit", timeout=60, headers=headers,
                                      json=claim(pid, cov, "hosp", [("1000.00", "A")]))
            )
            time.sleep(0.5)
            assert not submitted.done()
        assert submitted.result().status_code == 422, submitted.result().json()
        assert submitted.result().json()["issue"][0]["expression"] == ["Claim.patient"]
        # A settlement in flight: the DELETE waits for it, then finds it.
        with database.unit_of_work() as session:
            body = claim(other, other_cov, "hosp", [("1000.00", "A")])
            settlement_service.submit_claim(session, SYSTEM, body)
            deleted = pool.submit(
                lambda: requests.delete(f"{base}/fhir/Patient/{other}", timeout=60, headers=headers)
            )
            time.sleep(0.5)
            assert not deleted.done()
        assert deleted.result().status_code == 409, deleted.result().json()
    with database.session() as s:
        assert [r.patient_id for r in s.scalars(select(Settlement))] == [other]
