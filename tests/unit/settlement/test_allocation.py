"""Sharing a settlement's components over its items: exact to the fen, never more than an item holds."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings

from referral_service.settlement import ClaimRefused, Policy, YearAccumulators, settle
from referral_service.settlement.allocation import FUNDS, allocate, share
from referral_service.settlement.calculator import COMPONENT_CODES
from tests.unit.settlement.conftest import build_claim
from tests.unit.settlement.test_settlement_properties import accumulators_st, claims, policies

D = Decimal


def test_worked_example_of_design_per_item(policy: Policy) -> None:
    claim = build_claim("inpatient", "county", "A:27000 C:3000", poor=True)
    result = settle(policy, claim, YearAccumulators())
    a, c = allocate(claim.items, result.components)
    assert a == {
        "total": D("27000.00"), "eligible": D("27000.00"), "basic-deductible": D("500.00"),
        "basic-insurance": D("21200.00"), "critical-illness": D("2145.00"),
        "medical-assistance": D("2558.50"), "poverty-safety-net": D("1096.50"),
        "class-b-self-pay": D("0.00"), "out-of-list": D("0.00"), "patient-pay": D("0.00"),
    }
    assert c == {code: D("0.00") for code in COMPONENT_CODES} | {
        "total": D("3000.00"), "out-of-list": D("3000.00"), "patient-pay": D("3000.00"),
    }


def test_class_b_self_pay_and_odd_fen_go_by_largest_remainder(policy: Policy) -> None:
    claim = build_claim("outpatient", "township", "A:0.01 B:0.05 B:0.05 A:10")
    result = settle(policy, claim, YearAccumulators())
    rows = allocate(claim.items, result.components)
    assert result.components["class-b-self-pay"] == D("0.01")  # round(0.10 x 10%)
    assert [r["class-b-self-pay"] for r in rows] == [D("0.00"), D("0.01"), D("0.00"), D("0.00")]
    for code in COMPONENT_CODES:
        assert sum(r[code] for r in rows) == result.components[code], code


def test_share() -> None:
    assert share(100, [1, 1, 1], [100, 100, 100]) == [34, 33, 33]
    assert share(5, [1, 9], [1, 9]) == [1, 4]  # 0.5 and 4.5: the tie goes to the first line
    assert share(10, [0, 0], [4, 6]) == [4, 6]  # no weights: by the room left
    assert share(7, [10, 0], [3, 10]) == [3, 4]  # a full line passes the rest on
    with pytest.raises(ValueError, match="caps"):
        share(11, [1, 1], [5, 5])


@settings(database=None, deadline=None, max_examples=300)
@given(policy=policies(), claim=claims(), acc=accumulators_st)
def test_every_claims_shares_add_up_and_fit_their_items(
    policy: Policy, claim: object, acc: YearAccumulators
) -> None:
    try:
        result = settle(policy, claim, acc)  # type: ignore[arg-type]
    except ClaimRefused:
        return
    items = claim.items  # type: ignore[attr-defined]
    rows = allocate(items, result.components)
    assert len(rows) == len(items)
    for code in COMPONENT_CODES:
        assert sum((r[code] for r in rows), D("0.00")) == result.components[code], code
    for (amount, charge_class), row in zip(items, rows, strict=True):
        assert all(v >= 0 and v == v.quantize(D("0.01")) for v in row.values()), row
        assert row["total"] == amount
        assert sum(row[f] for f in FUNDS) + row["patient-pay"] == amount
        assert sum(row[f] for f in FUNDS) <= row["eligible"]
        assert row["basic-deductible"] <= row["eligible"]
        assert row["eligible"] + row["class-b-self-pay"] + row["out-of-list"] == amount
        if charge_class == "C":
            assert row["out-of-list"] == amount and row["patient-pay"] == amount
