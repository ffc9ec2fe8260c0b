"""Fund payment batches: exact, over, under, partial with a reason; the same rules over FHIR."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from referral_service.domain.errors import Forbidden, Unprocessable
from referral_service.domain.ledger import Payable, Settlement
from referral_service.extensions import database
from referral_service.fhir.codes import SETTLEMENT_COMPONENT_SYSTEM
from referral_service.fhir.store import ResourceStore
from referral_service.services.actors import actor_for
from referral_service.services.payments import SETTLEMENT_SID, record_payment
from tests.functional.fhir_helpers import Fhir, token_for
from tests.integration.test_exports import LedgerFactory, local

D = Decimal
INSURANCE_SCOPES = "system/PaymentReconciliation.cruds system/Claim.rs system/ExplanationOfBenefit.rs"


@pytest.fixture
def world(app: Flask) -> dict[str, str]:
    """An insurer, two hospitals and March settlements owing the basic-insurance fund."""
    ledger = LedgerFactory()
    ledger.org("insurer-org", "青山县医疗保障局", level=None, kind="insurer")
    ledger.org("county-hosp", "青山县人民医院")
    ledger.org("tcm-hosp", "青山县中医院")
    ledger.patient("p1")
    ledger.patient("p-city", "620421198505050077", district="云州市")
    return {
        "s1": ledger.settlement(
            "county-hosp", "p1", local("2026-03-02T10:00:00"), basic="1000.10", critical="20.00"
        ),
        "s2": ledger.settlement("county-hosp", "p1", local("2026-03-05T10:00:00"), basic="500.00"),
        "s3": ledger.settlement("county-hosp", "p1", local("2026-03-31T23:00:00"), basic="300.00"),
        "other_hospital": ledger.settlement("tcm-hosp", "p1", local("2026-03-06T10:00:00"), basic="50.00"),
        "reversed": ledger.settlement(
            "county-hosp",
            "p1",
            local("2026-03-07T10:00:00"),
            basic="70.00",
            reversed_at=local("2026-03-08T10:00:00"),
        ),
        "february": ledger.settlement("county-hosp", "p1", local("2026-02-27T10:00:00"), basic="10.00"),
        "other_county": ledger.settlement(
            "county-hosp", "p-city", local("2026-03-09T10:00:00"), basic="40.00"
        ),
    }


def pay(settlement_ids: list[str], amount: str, *, org: str = "insurer-org", **kw: Any) -> str:
    with database.unit_of_work() as session:
        actor = actor_for(session, name="insurance-office", kind="client", organization_id=org)
        return record_payment(
            session,
            actor,
            fund=kw.pop("fund", "basic-insurance"),
            hospital_id=kw.pop("hospital", "county-hosp"),
            period_start=date(2026, 3, 1),
            period_end=date(2026, 3, 31),
            amount=D(amount),
            settlement_ids=settlement_ids,
            payment_date=date(2026, 4, 10),
            **kw,
        )


def payable(settlement_id: str, fund: str = "basic-insurance") -> Payable:
    with database.unit_of_work() as session:
        row = session.query(Payable).filter_by(settlement_id=settlement_id, fund=fund).one()
        session.expunge(row)
        return row


def test_exact_batch_pays_every_listed_payable(world: dict[str, str]) -> None:
    payment_id = pay([world["s1"], world["s2"]], "1500.10", identifier="2026-03-basic-001")
    for sid in (world["s1"], world["s2"]):
        row = payable(sid)
        assert row.status == "paid" and row.paid_amount == row.amount
        assert row.payment_id == payment_id and row.paid_at is not None
        assert row.paid_at.date() == date(2026, 4, 9)  # 10 April 00:00 in Asia/Shanghai, as UTC
    assert payable(world["s3"]).status == "unpaid"
    assert payable(world["s1"], "critical-illness").status == "unpaid"  # another fund's payable
    with database.unit_of_work() as session:
        stored = ResourceStore(session).current("PaymentReconciliation", payment_id)
        assert stored is not None
    with pytest.raises(Unprocessable, match="already paid"):
        pay([world["s1"]], "1000.10")


def test_over_payment_is_refused_even_when_partial(world: dict[str, str]) -> None:
    with pytest.raises(Unprocessable, match=r"0\.01 more than the listed payables owe"):
        pay([world["s1"], world["s2"]], "1500.11")
    with pytest.raises(Unprocessable, match="more than"):
        pay([world["s1"]], "2000.00", partial=True, reason="advance")
    assert payable(world["s1"]).status == "unpaid"


def test_under_payment_is_refused_unless_partial_with_a_reason(world: dict[str, str]) -> None:
    with pytest.raises(Unprocessable, match=r"0\.10 less than the listed payables owe \(1500\.10\)"):
        pay([world["s1"], world["s2"]], "1500.00")
    with pytest.raises(Unprocessable, match="reason"):
        pay([world["s1"], world["s2"]], "1500.00", partial=True)
    assert payable(world["s1"]).status == "unpaid"


def test_partial_batch_with_a_reason_then_the_remainder(world: dict[str, str]) -> None:
    first = pay(
        [world["s1"], world["s2"]], "1200.10", partial=True, reason="季度预算不足 quarterly budget short"
    )
    assert payable(world["s1"]).status == "paid"
    row = payable(world["s2"])
    assert (row.status, row.paid_amount, row.payment_id) == ("partial", D("200.00"), first)
    with pytest.raises(Unprocessable, match="less than"):
        pay([world["s2"]], "299.99")
    second = pay([world["s2"]], "300.00")
    row = payable(world["s2"])
    assert (row.status, row.paid_amount, row.payment_id) == ("paid", D("500.00"), second)
    with pytest.raises(Unprocessable, match="outcome is complete"):
        pay([world["s3"]], "300.00", partial=True, reason="x")


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("reversed", "was reversed"),
        ("other_hospital", "owed to Organization/tcm-hosp"),
        ("february", "outside the period"),
        ("other_county", "no active settlement"),
    ],
)
def test_settlements_the_batch_may_not_pay(world: dict[str, str], key: str, message: str) -> None:
    owed = {"reversed": "70.00", "other_hospital": "50.00", "february": "10.00", "other_county": "40.00"}[key]
    with pytest.raises(Unprocessable, match=message):
        pay([world[key]], owed)


def test_only_the_insurance_bureau_records_payments(world: dict[str, str]) -> None:
    with pytest.raises(Forbidden):
        pay([world["s1"]], "1000.10", org="county-hosp")
    with pytest.raises(Unprocessable, match="listed twice"):
        pay([world["s1"], world["s1"]], "2000.20")
    with pytest.raises(Unprocessable, match="owes nothing"):
        pay([world["s2"]], "0", fund="critical-illness")


# ------------------------------------------------------------------------------------ over FHIR


@pytest.fixture
def insurer(
    client: FlaskClient, make_api_client: Callable[..., tuple[str, str]], world: dict[str, str]
) -> Fhir:
    cid, secret = make_api_client("insurance-office", INSURANCE_SCOPES, "insurer-org")
    return Fhir(client, token_for(client, cid, secret))


def batch(
    details: list[tuple[str, str]],
    amount: str,
    *,
    outcome: str = "complete",
    disposition: str | None = None,
    by_claim: bool = False,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "PaymentReconciliation",
        "status": "active",
        "period": {"start": "2026-03-01", "end": "2026-03-31"},
        "created": "2026-04-10T09:00:00+08:00",
        "paymentIssuer": {"reference": "Organization/insurer-org"},
        "requestor": {"reference": "Organization/county-hosp"},
        "outcome": outcome,
        "paymentDate": "2026-04-10",
        "paymentAmount": {"value": float(amount), "currency": "CNY"},
        "detail": [
            {
                **(
                    {"request": {"reference": f"Claim/{sid}"}}
                    if by_claim
                    else {"identifier": {"system": SETTLEMENT_SID, "value": sid}}
                ),
                "type": {"coding": [{"system": SETTLEMENT_COMPONENT_SYSTEM, "code": "basic-insurance"}]},
                "payee": {"reference": "Organization/county-hosp"},
                "amount": {"value": float(value), "currency": "CNY"},
            }
            for sid, value in details
        ],
    }
    if disposition:
        body["disposition"] = disposition
    return body


def test_fhir_create_runs_the_same_rules_and_searches(insurer: Fhir, world: dict[str, str]) -> None:
    over = insurer.post("PaymentReconciliation", batch([(world["s1"], "1000.10")], "1000.20"))
    assert over.status_code == 422, over.json
    assert over.json["resourceType"] == "OperationOutcome"
    under = insurer.post("PaymentReconciliation", batch([(world["s1"], "1000.00")], "1000.00"))
    assert under.status_code == 422 and "less than" in under.json["issue"][0]["diagnostics"]
    mismatch = insurer.post("PaymentReconciliation", batch([(world["s1"], "900.00")], "1000.10"))
    assert mismatch.status_code == 422

    exact = insurer.post("PaymentReconciliation", batch([(world["s1"], "1000.10")], "1000.10"))
    assert exact.status_code == 201, exact.json
    assert payable(world["s1"]).payment_id == exact.json["id"]
    partial = insurer.post(
        "PaymentReconciliation",
        batch([(world["s2"], "100.00")], "100.00", outcome="partial", disposition="资金分批拨付"),
    )
    assert partial.status_code == 201, partial.json
    assert (payable(world["s2"]).status, payable(world["s2"]).paid_amount) == ("partial", D("100.00"))
    no_reason = insurer.post(
        "PaymentReconciliation", batch([(world["s3"], "100.00")], "100.00", outcome="partial")
    )
    assert no_reason.status_code == 422

    def found(query: str) -> set[str]:
        response = insurer.get(f"PaymentReconciliation?{query}")
        assert response.status_code == 200, response.json
        return {e["resource"]["id"] for e in response.json.get("entry", [])}

    both = {exact.json["id"], partial.json["id"]}
    assert found("requestor=Organization/county-hosp") == both
    assert found("payment-issuer=Organization/insurer-org") == both
    assert found("requestor=Organization/tcm-hosp") == set()
    assert found("outcome=partial") == {partial.json["id"]}
    assert found("outcome=complete") == {exact.json["id"]}
    assert found("created=ge2026-04-10") == both
    assert found("created=lt2026-01-01") == set()

    changed = insurer.put(f"PaymentReconciliation/{exact.json['id']}", exact.json | {"disposition": "x"})
    assert changed.status_code == 422


def test_fhir_detail_may_name_the_claim(insurer: Fhir, world: dict[str, str]) -> None:
    with database.unit_of_work() as session:
        settlement = session.get(Settlement, world["s3"])
        assert settlement is not None
        claim_id = settlement.claim_id
        ResourceStore(session).save(
            "Claim",
            {"resourceType": "Claim", "id": claim_id, "status": "active"},
            method="PUT",
            owner_org_id="county-hosp",
        )
    created = insurer.post("PaymentReconciliation", batch([(claim_id, "300.00")], "300.00", by_claim=True))
    assert created.status_code == 201, created.json
    assert payable(world["s3"]).status == "paid"


def test_hospital_clients_may_not_record_payments(
    client: FlaskClient, world: dict[str, str], make_api_client: Callable[..., tuple[str, str]]
) -> None:
    cid, secret = make_api_client("county-his", "system/*.cruds", "county-hosp")
    his = Fhir(client, token_for(client, cid, secret))
    response = his.post("PaymentReconciliation", batch([(world["s1"], "1000.10")], "1000.10"))
    assert response.status_code == 403, response.json
    assert payable(world["s1"]).status == "unpaid"


def test_the_hospital_paid_sees_its_payment_batches_and_no_other_hospital_does(
    client: FlaskClient, insurer: Fhir, world: dict[str, str], make_api_client: Callable[..., tuple[str, str]]
) -> None:
    paid = insurer.post("PaymentReconciliation", batch([(world["s1"], "1000.10")], "1000.10"))
    assert paid.status_code == 201, paid.json
    batch_id = paid.json["id"]

    def his_of(org: str) -> Fhir:
        cid, secret = make_api_client(f"{org}-his", "system/PaymentReconciliation.rs", org)
        return Fhir(client, token_for(client, cid, secret))

    county, tcm = his_of("county-hosp"), his_of("tcm-hosp")
    assert county.get(f"PaymentReconciliation/{batch_id}").status_code == 200  # it is the requestor
    listed = county.get("PaymentReconciliation?outcome=complete").json
    assert [e["resource"]["id"] for e in listed.get("entry", [])] == [batch_id]
    assert tcm.get(f"PaymentReconciliation/{batch_id}").status_code == 404  # not a party: unknown
    assert tcm.get("PaymentReconciliation").json["total"] == 0
