"""Property tests: identities and monotonicity that must hold for every claim and accumulator."""

from __future__ import annotations

import copy
from decimal import ROUND_HALF_UP, Decimal, localcontext
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from referral_service.settlement import (
    FACILITY_LEVELS,
    ClaimInput,
    ClaimRefused,
    Policy,
    SettlementResult,
    YearAccumulators,
    load_policy_file,
    parse_policy,
    settle,
)

CENT = Decimal("0.01")
ZERO = Decimal(0)
FUNDS = ("basic-insurance", "critical-illness", "medical-assistance", "poverty-safety-net")
PROPERTY_SETTINGS = settings(database=None, deadline=None, max_examples=400)
DEFAULT_DATA = load_policy_file(
    Path(__file__).resolve().parents[3] / "config" / "policies" / "qingshan-2018.yaml"
).to_dict()


def fen(amount: int) -> Decimal:
    """A whole-fen Decimal from an integer number of fen."""
    return Decimal(amount).scaleb(-2)


def money(max_yuan: int, edges: tuple[int, ...] = ()) -> st.SearchStrategy[Decimal]:
    """Amounts up to `max_yuan`, with small amounts (rounding) and cap edges drawn often."""
    return st.one_of(
        st.integers(0, max_yuan * 100).map(fen),
        st.integers(0, 300).map(fen),
        st.sampled_from([Decimal(e) for e in (0, *edges)]),
        st.sampled_from([Decimal(e) for e in edges] or [ZERO]).flatmap(
            lambda e: st.integers(-100, 100).map(lambda f: max(ZERO, e + fen(f)))
        ),
    )


items_st = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 20_000_000).map(fen), st.integers(0, 2_000).map(fen)),
        st.sampled_from(["A", "A", "B", "C"]),
    ),
    max_size=15,
)


@st.composite
def claims(draw: st.DrawFn) -> ClaimInput:
    """Any valid claim under the default policy (no inpatient at village level)."""
    kind = draw(st.sampled_from(["inpatient", "outpatient"]))
    levels = FACILITY_LEVELS[1:] if kind == "inpatient" else FACILITY_LEVELS
    return ClaimInput(
        claim_type=kind,
        facility_level=draw(st.sampled_from(levels)),
        items=draw(items_st),
        registered_poor=draw(st.booleans()),
        unreferred_out_of_county=draw(st.booleans()),
        episode_deductible_borne=draw(money(3_000, (200, 500, 1000, 3000))),
    )


percent = st.integers(0, 100).map(lambda p: str(Decimal(p).scaleb(-2)))
whole_yuan = st.integers(0, 5_000).map(str)
cap = st.one_of(st.none(), st.integers(0, 200_000).map(str))


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    """Policies of the default's shape with other values: any levels, ratios, caps and bands."""
    data = copy.deepcopy(DEFAULT_DATA)
    inpatient_levels = draw(st.lists(st.sampled_from(FACILITY_LEVELS), min_size=1, unique=True))
    basic = data["basic_insurance"]
    basic["inpatient"] = {
        "deductible": {level: draw(whole_yuan) for level in inpatient_levels},
        "ratio": {level: draw(percent) for level in inpatient_levels},
        "yearly_cap": draw(cap),
    }
    outpatient_levels = draw(st.lists(st.sampled_from(FACILITY_LEVELS), unique=True))
    basic["outpatient"] = {
        "ratio": {level: draw(percent) for level in outpatient_levels},
        "yearly_cap": draw(st.one_of(st.none(), st.integers(0, 1_000).map(str))),
    }
    basic["unreferred_out_of_county_penalty"] = draw(percent)
    bonus = draw(st.integers(0, 20))
    edges = sorted(draw(st.sets(st.integers(1, 150_000), max_size=3)))
    lowers = [0, *edges]
    uppers: list[int | None] = [*edges, None]
    data["critical_illness"] = {
        "threshold": draw(whole_yuan),
        "threshold_poor": draw(whole_yuan),
        "bands": [
            {
                "from": str(lo),
                "to": None if hi is None else str(hi),
                "ratio": str(Decimal(draw(st.integers(0, 100 - bonus))).scaleb(-2)),
            }
            for lo, hi in zip(lowers, uppers, strict=True)
        ],
        "poor_bonus": str(Decimal(bonus).scaleb(-2)),
        "yearly_cap": draw(cap),
        "yearly_cap_poor": draw(cap),
    }
    data["medical_assistance"] = {"ratio": draw(percent), "yearly_cap": draw(cap)}
    data["poverty_safety_net"] = {
        "oop_ceiling_per_stay": draw(whole_yuan),
        "target_reimbursement_ratio": draw(percent),
    }
    data["class_b"] = {"self_pay_share": draw(percent)}
    return parse_policy(data, "generated")


any_claim = st.builds(
    ClaimInput,
    claim_type=st.sampled_from(["inpatient", "outpatient"]),
    facility_level=st.sampled_from(FACILITY_LEVELS),
    items=items_st,
    registered_poor=st.booleans(),
    unreferred_out_of_county=st.booleans(),
    episode_deductible_borne=money(3_000, (200, 500, 1000, 3000)),
)

accumulators_st = st.builds(
    YearAccumulators,
    inpatient_basic_paid=money(200_000, (150_000,)),
    outpatient_basic_paid=money(700, (500,)),
    critical_illness_cumulative_r1=money(600_000, (2_500, 5_000, 52_500, 55_000, 102_500, 105_000)),
    critical_illness_paid=money(400_000, (300_000,)),
    assistance_paid=money(40_000, (30_000,)),
)


def oracle(policy: Policy, claim: ClaimInput, acc: YearAccumulators) -> dict[str, Decimal]:
    """DESIGN section 5 transcribed as plainly as possible, independent of the calculator."""

    def rnd(value: Decimal) -> Decimal:
        return value.quantize(CENT, ROUND_HALF_UP)

    def capped(value: Decimal, cap: Decimal | None, paid: Decimal) -> Decimal:
        return value if cap is None else min(value, max(ZERO, cap - paid))

    with localcontext() as ctx:
        ctx.prec = 80
        items = claim.items
        total = sum((a for a, _ in items), ZERO)
        n = sum((a for a, c in items if c == "C"), ZERO)
        s = rnd(sum((a for a, c in items if c == "B"), ZERO) * policy.class_b.self_pay_share)
        e = total - n - s
        basic = policy.basic_insurance
        penalty = basic.unreferred_out_of_county_penalty if claim.unreferred_out_of_county else 0
        zeros = dict.fromkeys(
            ["basic-deductible", "critical-illness", "medical-assistance", "poverty-safety-net"], ZERO
        )
        if claim.claim_type == "outpatient":
            r = max(ZERO, (basic.outpatient.ratio.get(claim.facility_level) or ZERO) - penalty)
            b1 = capped(rnd(e * r), basic.outpatient.yearly_cap, acc.outpatient_basic_paid)
            return {
                **zeros,
                "total": total,
                "eligible": e,
                "class-b-self-pay": s,
                "out-of-list": n,
                "basic-insurance": b1,
                "patient-pay": total - b1,
            }
        d_level = basic.inpatient.deductible.get(claim.facility_level)
        r_level = basic.inpatient.ratio.get(claim.facility_level)
        assert d_level is not None and r_level is not None
        d = max(ZERO, d_level - claim.episode_deductible_borne)
        r = max(ZERO, r_level - penalty)
        b1 = capped(rnd(max(ZERO, e - d) * r), basic.inpatient.yearly_cap, acc.inpatient_basic_paid)
        r1 = e - b1
        ci = policy.critical_illness
        poor = claim.registered_poor
        threshold = ci.threshold_poor if poor else ci.threshold
        bonus = ci.poor_bonus if poor else ZERO

        def f(x: Decimal) -> Decimal:
            above = max(ZERO, x - threshold)
            owed = ZERO
            for band in ci.bands:
                top = above if band.upper is None else min(above, band.upper)
                owed += (band.ratio + bonus) * max(ZERO, top - band.lower)
            return owed

        before = acc.critical_illness_cumulative_r1
        b2 = capped(
            rnd(f(before + r1) - f(before)),
            ci.yearly_cap_poor if poor else ci.yearly_cap,
            acc.critical_illness_paid,
        )
        r2 = r1 - b2
        ma = policy.medical_assistance
        b3 = capped(rnd(r2 * ma.ratio), ma.yearly_cap, acc.assistance_paid) if poor else ZERO
        r3 = r2 - b3
        b4 = ZERO
        if poor and not claim.unreferred_out_of_county:
            sn = policy.poverty_safety_net
            target = min(sn.oop_ceiling_per_stay, rnd(total * (1 - sn.target_reimbursement_ratio)))
            b4 = min(r3, max(ZERO, r3 + s + n - target))
        return {
            "total": total,
            "eligible": e,
            "basic-deductible": min(d, e),
            "basic-insurance": b1,
            "critical-illness": b2,
            "medical-assistance": b3,
            "poverty-safety-net": b4,
            "class-b-self-pay": s,
            "out-of-list": n,
            "patient-pay": r3 - b4 + s + n,
        }


def funds(result: SettlementResult) -> list[Decimal]:
    return [result.components[code] for code in FUNDS]


@PROPERTY_SETTINGS
@given(claim=claims(), acc=accumulators_st)
@example(
    claim=ClaimInput(
        "inpatient", "county", [(Decimal(27000), "A"), (Decimal(3000), "C")], registered_poor=True
    ),
    acc=YearAccumulators(),
)
def test_matches_the_plain_transcription_of_design(
    policy: Policy, claim: ClaimInput, acc: YearAccumulators
) -> None:
    result = settle(policy, claim, acc)
    assert dict(result.components) == oracle(policy, claim, acc)


@PROPERTY_SETTINGS
@given(policy=policies(), claim=any_claim, acc=accumulators_st)
def test_other_policies_match_the_transcription_too(
    policy: Policy, claim: ClaimInput, acc: YearAccumulators
) -> None:
    covered = policy.basic_insurance.inpatient.ratio.get(claim.facility_level) is not None
    if claim.claim_type == "inpatient" and not covered:
        with pytest.raises(ClaimRefused) as refused:
            settle(policy, claim, acc)
        assert refused.value.code == "inpatient-not-covered-at-level"
        return
    result = settle(policy, claim, acc)
    assert dict(result.components) == oracle(policy, claim, acc)
    assert sum(result.payers.values()) == result.components["total"]
    assert all(v >= 0 for v in result.components.values())


@PROPERTY_SETTINGS
@given(claim=claims(), acc=accumulators_st)
def test_sum_identity_and_no_negative_component(
    policy: Policy, claim: ClaimInput, acc: YearAccumulators
) -> None:
    result = settle(policy, claim, acc)
    c = result.components
    assert sum(funds(result)) + c["patient-pay"] == c["total"]
    assert sum(result.payers.values()) == c["total"]
    assert c["eligible"] + c["class-b-self-pay"] + c["out-of-list"] == c["total"]
    assert all(v >= 0 for v in c.values())
    assert all(v.as_tuple().exponent == -2 for v in c.values())  # to the fen, shown as such
    assert c["basic-deductible"] <= c["eligible"]
    assert c["patient-pay"] >= c["class-b-self-pay"] + c["out-of-list"]  # net pays eligible only
    deltas = result.accumulator_deltas
    assert all(getattr(deltas, name) >= 0 for name in deltas.to_dict())


@PROPERTY_SETTINGS
@given(claim=claims(), acc=accumulators_st)
def test_accumulators_after_are_before_plus_deltas(
    policy: Policy, claim: ClaimInput, acc: YearAccumulators
) -> None:
    result = settle(policy, claim, acc)
    deltas, after = result.accumulator_deltas, result.accumulators_after
    for name in acc.to_dict():
        assert getattr(after, name) == getattr(acc, name) + getattr(deltas, name)
    assert (
        deltas.inpatient_basic_paid + deltas.outpatient_basic_paid == (result.components["basic-insurance"])
    )
    assert deltas.critical_illness_paid == result.components["critical-illness"]
    assert deltas.assistance_paid == result.components["medical-assistance"]
    if claim.claim_type == "inpatient":
        c = result.components
        assert deltas.critical_illness_cumulative_r1 == c["eligible"] - c["basic-insurance"]


@PROPERTY_SETTINGS
@given(claim=claims(), acc=accumulators_st)
def test_poverty_preferences_never_make_the_patient_pay_more(
    policy: Policy, claim: ClaimInput, acc: YearAccumulators
) -> None:
    poor = ClaimInput(
        claim.claim_type,
        claim.facility_level,
        claim.items,
        True,
        claim.unreferred_out_of_county,
        claim.episode_deductible_borne,
    )
    not_poor = ClaimInput(
        claim.claim_type,
        claim.facility_level,
        claim.items,
        False,
        claim.unreferred_out_of_county,
        claim.episode_deductible_borne,
    )
    paid_poor = settle(policy, poor, acc).components["patient-pay"]
    paid_not_poor = settle(policy, not_poor, acc).components["patient-pay"]
    assert paid_poor <= paid_not_poor


@PROPERTY_SETTINGS
@given(claim=claims(), acc=accumulators_st, extra=st.integers(1, 5_000_000).map(fen))
def test_more_eligible_cost_never_lowers_a_fund_s_payment(
    policy: Policy, claim: ClaimInput, acc: YearAccumulators, extra: Decimal
) -> None:
    """Basic, critical illness and assistance never pay less, nor do the funds together.

    The poverty safety net alone may pay less: its target is a share of T, which grows too
    (test_safety_net_paying_less_when_total_grows shows a case computed by hand).
    """
    more = ClaimInput(
        claim.claim_type,
        claim.facility_level,
        (*claim.items, (extra, "A")),
        claim.registered_poor,
        claim.unreferred_out_of_county,
        claim.episode_deductible_borne,
    )
    base = settle(policy, claim, acc)
    bigger = settle(policy, more, acc)
    for code in ("basic-insurance", "critical-illness", "medical-assistance"):
        assert bigger.components[code] >= base.components[code], code
    assert bigger.funds_total >= base.funds_total
    assert bigger.components["patient-pay"] >= base.components["patient-pay"]


@PROPERTY_SETTINGS
@given(claim=claims(), acc=accumulators_st)
def test_item_order_does_not_matter(policy: Policy, claim: ClaimInput, acc: YearAccumulators) -> None:
    reordered = ClaimInput(
        claim.claim_type,
        claim.facility_level,
        tuple(reversed(claim.items)),
        claim.registered_poor,
        claim.unreferred_out_of_county,
        claim.episode_deductible_borne,
    )
    assert settle(policy, claim, acc).components == settle(policy, reordered, acc).components
