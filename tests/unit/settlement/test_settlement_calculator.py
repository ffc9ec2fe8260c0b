"""Calculator: the worked example of DESIGN, yearly sequences reaching each cap, refusals, trace."""

from __future__ import annotations

import decimal
from collections.abc import Callable
from decimal import Decimal

import pytest

from referral_service.settlement import (
    COMPONENT_CODES,
    PAYER_CODES,
    ClaimInput,
    ClaimItem,
    ClaimRefused,
    Policy,
    SettlementResult,
    YearAccumulators,
    parse_policy,
    settle,
)

D = Decimal
MakeClaim = Callable[..., ClaimInput]


def test_worked_example_of_design(policy: Policy, make_claim: MakeClaim) -> None:
    """Registered poor, first stay, county, referred, T = 30,000: A 27,000 + C 3,000."""
    claim = make_claim("inpatient", "county", "A:27000 C:3000", poor=True)
    result = settle(policy, claim, YearAccumulators())

    assert result.components["basic-insurance"] == D("21200")
    assert result.components["critical-illness"] == D("2145")
    assert result.components["medical-assistance"] == D("2558.50")
    assert result.components["poverty-safety-net"] == D("1096.50")
    assert result.components["patient-pay"] == D("3000")
    assert result.funds_total == D("27000")  # funds pay 90%
    assert result.funds_total / result.total == D("0.9")
    w = result.workings
    assert (w.r1, w.r2, w.r3, w.target) == (D("5800"), D("3655"), D("1096.50"), D("3000"))
    assert result.policy_id == "qingshan-2018"
    assert result.policy_version == "1"
    assert dict(result.payers) == {
        "basic-insurance": D("21200"),
        "critical-illness": D("2145"),
        "medical-assistance": D("2558.50"),
        "poverty-safety-net": D("1096.50"),
        "patient": D("3000"),
    }
    assert tuple(result.payers) == PAYER_CODES
    assert tuple(result.components) == COMPONENT_CODES


def test_worked_example_trace(policy: Policy, make_claim: MakeClaim) -> None:
    claim = make_claim("inpatient", "county", "A:27000 C:3000", poor=True)
    result = settle(policy, claim, YearAccumulators())
    steps = {step.code: step for step in result.trace}
    assert list(steps) == [
        "T",
        "S",
        "N",
        "E",
        "r",
        "d",
        "B1",
        "R1",
        "B2",
        "R2",
        "B3",
        "R3",
        "target",
        "B4",
        "P",
        "check",
    ]
    assert steps["B1"].zh == "基本医保"
    assert steps["B1"].en == "basic insurance"
    assert "round(max(0, 27000.00 − 500.00) × 0.80) = 21200.00" in steps["B1"].formula
    assert steps["B1"].formula.endswith("= 21200.00")
    assert steps["B2"].values["B2"] == D("2145")
    assert steps["B2"].values["threshold"] == D("2500")
    assert steps["B3"].formula.endswith("= 2558.50")
    assert "min(3000.00, 4500.00) = 3000.00" in steps["target"].formula
    assert steps["B4"].formula.endswith("= 1096.50")
    assert steps["P"].formula.endswith("= 3000.00")
    data = result.to_dict()
    assert data["components"]["patient-pay"] == "3000.00"
    assert data["trace"][0]["code"] == "T"
    assert data["policy"] == {"id": "qingshan-2018", "version": "1"}


# Names a formula may use: the trace's symbols and functions. Words go in the zh and en labels, since
# the formula is shown under both (the zh slip used to read "counted as borne", "rounded", "no cap").
FORMULA_NAMES = {
    "T", "A", "B", "C", "S", "N", "E", "r", "r_level", "penalty", "share", "d", "D_level", "borne",
    "B1", "B2", "B3", "B4", "R1", "R2", "R3", "P", "F", "after", "before", "cap", "paid", "ratio",
    "target", "ceiling", "round", "min", "max",
}


@pytest.mark.parametrize(
    ("kind", "level", "items", "flags"),
    [
        ("inpatient", "county", "A:27000 C:3000", {"poor": True}),
        ("inpatient", "county", "A:400000 B:20000", {"poor": True}),  # critical illness without a cap
        ("inpatient", "city", "A:20000", {"ooc": True}),
        ("inpatient", "city", "A:20000", {"ooc": True, "poor": True}),
        ("inpatient", "township", "A:3000 B:500", {}),
        ("outpatient", "village", "A:100 B:20", {}),
    ],
)
def test_trace_formulas_are_symbols_and_the_zh_labels_are_chinese(
    policy: Policy, make_claim: MakeClaim, kind: str, level: str, items: str, flags: dict[str, bool]
) -> None:
    import re

    result = settle(policy, make_claim(kind, level, items, **flags), YearAccumulators())
    for step in result.trace:
        names = set(re.findall(r"[A-Za-z_][A-Za-z_0-9]*", step.formula))
        assert names <= FORMULA_NAMES, (step.code, step.formula)
        words = set(re.findall(r"[A-Za-z_][A-Za-z_0-9]*", step.zh))
        assert words <= {"min", "d", "E"}, (step.code, step.zh)  # "min(d, E)" in the deductible's label
        assert re.search(r"[\u4e00-\u9fff]", step.zh), step.zh


def test_the_zh_labels_carry_what_the_en_labels_say(policy: Policy, make_claim: MakeClaim) -> None:
    poor = {s.code: s for s in settle(
        policy, make_claim("inpatient", "county", "A:27000 C:3000", poor=True), YearAccumulators()
    ).trace}
    assert poor["B2"].zh == "大病保险（建档立卡贫困人口：起付线 2500.00，比例提高 0.05）"
    assert poor["d"].formula.endswith("; min(d, E) = 500.00")
    assert "round(F(" in poor["B2"].formula and "rounded" not in poor["B2"].formula
    assert poor["r"].zh == "报销比例（县级住院）"
    ooc = {s.code: s for s in settle(
        policy, make_claim("inpatient", "city", "A:20000", ooc=True), YearAccumulators()
    ).trace}
    assert ooc["r"].zh == "报销比例（市级住院，未经转诊县外就医）"
    assert ooc["B4"].zh == "兜底保障（非建档立卡贫困人口）"


def test_trace_of_outpatient_and_of_non_poor(policy: Policy, make_claim: MakeClaim) -> None:
    outpatient = settle(policy, make_claim("outpatient", "village", "A:100"), YearAccumulators())
    assert [s.code for s in outpatient.trace] == ["T", "S", "N", "E", "r", "B1", "P", "check"]
    inpatient = settle(policy, make_claim("inpatient", "city", "A:20000", ooc=True), YearAccumulators())
    steps = {s.code: s for s in inpatient.trace}
    assert "0.70 − 0.20" in steps["r"].formula
    assert steps["B3"].formula == "B3 = 0"
    assert "not registered poor" in steps["B4"].en
    poor_ooc = settle(
        policy, make_claim("inpatient", "city", "A:20000", ooc=True, poor=True), YearAccumulators()
    )
    assert "unreferred out-of-county" in {s.code: s for s in poor_ooc.trace}["B4"].en


def _run(policy: Policy, claims: list[ClaimInput]) -> list[SettlementResult]:
    """Settle claims in order for one person and year, carrying the accumulators over."""
    results = []
    acc = YearAccumulators()
    for claim in claims:
        result = settle(policy, claim, acc)
        results.append(result)
        acc = result.accumulators_after
    return results


def _paid(result: SettlementResult) -> tuple[Decimal, ...]:
    c = result.components
    return (
        c["basic-insurance"],
        c["critical-illness"],
        c["medical-assistance"],
        c["poverty-safety-net"],
        c["patient-pay"],
    )


def test_stays_reach_basic_and_critical_illness_caps(policy: Policy, make_claim: MakeClaim) -> None:
    """Not poor, county stays in separate episodes (d = 500 each)."""
    stays = [
        make_claim("inpatient", "county", a)
        for a in ("A:100000", "A:100000", "A:100000", "A:300000", "A:1000")
    ]
    results = _run(policy, stays)
    # 1: B1=round(99500*0.80)=79600, R1=20400, y=15400, F=9240, P=20400-9240=11160.
    # 2: B1=min(79600, 150000-79600)=70400, R1=29600, cum 20400->50000, F 9240->27000,
    #    B2=17760, P=11840.
    # 3: B1=0 (basic cap reached), R1=100000, cum 50000->150000, F 27000->101000, B2=74000,
    #    P=26000.
    # 4: R1=300000, cum 150000->450000, F 101000->341000, raw 240000, room 300000-101000=199000,
    #    B2=199000, P=101000.
    # 5: critical illness cap reached: B2=0, P=1000.
    assert [_paid(r) for r in results] == [
        (D("79600"), D("9240"), 0, 0, D("11160")),
        (D("70400"), D("17760"), 0, 0, D("11840")),
        (0, D("74000"), 0, 0, D("26000")),
        (0, D("199000"), 0, 0, D("101000")),
        (0, 0, 0, 0, D("1000")),
    ]
    assert results[1].accumulators_after.inpatient_basic_paid == D("150000")
    assert results[3].accumulators_after.critical_illness_paid == D("300000")
    assert results[4].accumulators_after == YearAccumulators(
        inpatient_basic_paid=D("150000"),
        critical_illness_cumulative_r1=D("451000"),
        critical_illness_paid=D("300000"),
    )
    assert all(r.deductible_borne == D("500") for r in results)


def test_outpatient_visits_reach_the_outpatient_cap(policy: Policy, make_claim: MakeClaim) -> None:
    # B1 = 240, 240, then min(240, 500-480) = 20; nothing reaches the inpatient accumulators.
    results = _run(policy, [make_claim("outpatient", "township", "A:400")] * 3)
    assert [r.components["basic-insurance"] for r in results] == [D("240"), D("240"), D("20")]
    assert [r.components["patient-pay"] for r in results] == [D("160"), D("160"), D("380")]
    assert results[-1].accumulators_after == YearAccumulators(outpatient_basic_paid=D("500"))


def test_poor_stays_reach_the_assistance_cap_with_no_critical_illness_cap(
    policy: Policy, make_claim: MakeClaim
) -> None:
    stays = [
        make_claim("inpatient", "county", a, poor=True) for a in ("A:300000", "A:20000", "A:20000", "A:20000")
    ]
    results = _run(policy, stays)
    # 1: B1=min(round(299500*0.80)=239600, 150000)=150000, R1=150000, y 0->147500,
    #    F=32500+37500+0.85*47500=110375, R2=39625, B3=round(27737.5)=27737.50, R3=11887.50,
    #    target=min(3000, 45000)=3000, B4=min(11887.50, 8887.50)=8887.50, P=3000.
    # 2: B1=0, R1=20000, B2=0.85*20000=17000, R2=3000, B3=min(2100, 2262.50)=2100, R3=900,
    #    target=3000, B4=0, P=900.
    # 3: B2=17000, B3=min(2100, 162.50)=162.50, R3=2837.50, B4=0, P=2837.50.
    # 4: B2=17000, B3=0, R3=3000, B4=max(0, 3000-3000)=0, P=3000.
    assert [_paid(r) for r in results] == [
        (D("150000"), D("110375"), D("27737.50"), D("8887.50"), D("3000")),
        (0, D("17000"), D("2100"), 0, D("900")),
        (0, D("17000"), D("162.50"), 0, D("2837.50")),
        (0, D("17000"), 0, 0, D("3000")),
    ]
    after = results[-1].accumulators_after
    assert after.assistance_paid == D("30000")
    assert after.critical_illness_paid == D("161375")  # no cap while registered poor


def test_benefit_paid_while_poor_counts_toward_the_cap_later(
    policy: Policy, make_claim: MakeClaim, make_accumulators: Callable[..., YearAccumulators]
) -> None:
    # 295000 of critical illness paid earlier this year while poor; now not poor: room 5000.
    # Basic exhausted, county, A 20000: cum 200000->220000, y 195000->215000,
    # F 141000 -> 157000, raw 16000, B2=min(16000, 5000)=5000, P=15000.
    acc = make_accumulators(
        inpatient_basic_paid="150000", critical_illness_cumulative_r1="200000", critical_illness_paid="295000"
    )
    result = settle(policy, make_claim("inpatient", "county", "A:20000"), acc)
    assert result.components["critical-illness"] == D("5000")
    assert result.components["patient-pay"] == D("15000")


def test_episode_deductible_up_and_down(policy: Policy, make_claim: MakeClaim) -> None:
    # township first (d=200), county in the same episode (d=500-200=300), back to township (d=0)
    first = settle(policy, make_claim("inpatient", "township", "A:1000"), YearAccumulators())
    assert first.deductible_borne == D("200")
    up = settle(
        policy,
        make_claim("inpatient", "county", "A:1000", borne=str(first.episode_deductible_borne_after)),
        first.accumulators_after,
    )
    assert up.deductible_borne == D("300")
    assert up.episode_deductible_borne_after == D("500")
    down = settle(
        policy,
        make_claim("inpatient", "township", "A:1000", borne=str(up.episode_deductible_borne_after)),
        up.accumulators_after,
    )
    assert down.deductible_borne == D("0")
    # B1 = round(1000 * 0.90) = 900 with no deductible left
    assert down.components["basic-insurance"] == D("900")


def test_deductible_borne_is_capped_by_eligible(policy: Policy, make_claim: MakeClaim) -> None:
    # township stay of E=150 bears only 150 of its 200; a county stay after it owes 500-150=350
    small = settle(policy, make_claim("inpatient", "township", "A:150"), YearAccumulators())
    assert small.deductible_borne == D("150")
    county = settle(
        policy,
        make_claim("inpatient", "county", "A:10000", borne=str(small.episode_deductible_borne_after)),
        small.accumulators_after,
    )
    assert county.deductible_borne == D("350")
    assert county.components["basic-insurance"] == D("7720")  # round(9650 * 0.80)


def test_outpatient_adds_nothing_to_the_episode(policy: Policy, make_claim: MakeClaim) -> None:
    result = settle(policy, make_claim("outpatient", "county", "A:1000", borne="200"), YearAccumulators())
    assert result.deductible_borne == 0
    assert result.episode_deductible_borne_after == D("200")
    assert result.components["basic-deductible"] == 0


def test_safety_net_paying_less_when_total_grows(policy: Policy, make_claim: MakeClaim) -> None:
    """The target is 15% of T, so more eligible cost can lower B4 (see the property tests)."""
    acc = YearAccumulators(assistance_paid=D("30000"))
    # T=10000: B1=7600, R1=2400, B2=0, R3=2400, target=1500, B4=900, P=1500.
    smaller = settle(policy, make_claim("inpatient", "county", "A:10000", poor=True), acc)
    # T=11000: B1=8400, R1=2600, B2=round(100*0.65)=65, R3=2535, target=1650, B4=885, P=1650.
    larger = settle(policy, make_claim("inpatient", "county", "A:11000", poor=True), acc)
    assert _paid(smaller) == (D("7600"), 0, 0, D("900"), D("1500"))
    assert _paid(larger) == (D("8400"), D("65"), 0, D("885"), D("1650"))
    assert larger.funds_total > smaller.funds_total


def test_other_policy_shapes(policy: Policy, make_claim: MakeClaim) -> None:
    """Values of the same shape as the default: a penalty above the ratio, no inpatient cap."""
    data = policy.to_dict()
    data["basic_insurance"]["inpatient"]["ratio"]["province"] = "0.15"
    data["basic_insurance"]["inpatient"]["yearly_cap"] = None
    data["basic_insurance"]["inpatient"]["deductible"]["village"] = "100"
    data["basic_insurance"]["inpatient"]["ratio"]["village"] = "0.95"
    other = parse_policy(data, "variant")
    # province, unreferred: r = max(0, 0.15 - 0.20) = 0, so B1 = 0; R1 = 10000, y = 5000,
    # F = 0.60 * 5000 = 3000, P = 7000.
    result = settle(other, make_claim("inpatient", "province", "A:10000", ooc=True), YearAccumulators())
    assert result.workings.ratio == 0
    assert _paid(result) == (0, D("3000"), 0, 0, D("7000"))
    # no cap: B1 = round((200000 - 3000) * 0.15) = 29550 although 150000 were paid already
    acc = YearAccumulators(inpatient_basic_paid=D("150000"))
    big = settle(other, make_claim("inpatient", "province", "A:200000"), acc)
    assert big.components["basic-insurance"] == D("29550")
    # this policy covers village inpatient care: B1 = round((1000 - 100) * 0.95) = 855
    village = settle(other, make_claim("inpatient", "village", "A:1000"), YearAccumulators())
    assert village.components["basic-insurance"] == D("855")


# ---- refusals ------------------------------------------------------------------------------


# fmt: off
REFUSALS = [
    ("village-inpatient", "inpatient", "village", [(D("100"), "A")], False,
     "inpatient-not-covered-at-level"),
    ("village-inpatient-poor-empty", "inpatient", "village", [], True,
     "inpatient-not-covered-at-level"),
    ("fraction-of-fen", "inpatient", "county", [(D("100"), "A"), (D("10.001"), "A")], False,
     "invalid-amount"),
    ("fraction-of-fen-outpatient", "outpatient", "village", [(D("0.005"), "B")], False,
     "invalid-amount"),
    ("negative", "inpatient", "county", [(D("-1"), "A")], False, "invalid-amount"),
    ("negative-class-c", "outpatient", "county", [(D("100"), "A"), (D("-0.01"), "C")], False,
     "invalid-amount"),
    ("nan", "inpatient", "county", [(D("NaN"), "A")], False, "invalid-amount"),
    ("signalling-nan", "inpatient", "county", [(D("sNaN"), "A")], False, "invalid-amount"),
    ("infinity", "outpatient", "county", [(D("Infinity"), "A")], False, "invalid-amount"),
    ("absurdly-large", "inpatient", "county", [(D("1E+12"), "A")], False, "invalid-amount"),
    ("class-d", "inpatient", "county", [(D("100"), "D")], False, "invalid-charge-class"),
    ("class-lower-case", "outpatient", "county", [(D("100"), "a")], False,
     "invalid-charge-class"),
    ("unknown-level", "inpatient", "hamlet", [(D("100"), "A")], False, "invalid-facility-level"),
    ("unknown-level-outpatient", "outpatient", "clinic", [], False, "invalid-facility-level"),
    ("unknown-claim-type", "dental", "county", [(D("100"), "A")], False, "invalid-claim-type"),
]
# fmt: on


@pytest.mark.parametrize(
    ("kind", "level", "items", "poor", "code"),
    [r[1:] for r in REFUSALS],
    ids=[r[0] for r in REFUSALS],
)
def test_refusals(
    policy: Policy, kind: str, level: str, items: list[tuple[Decimal, str]], poor: bool, code: str
) -> None:
    claim = ClaimInput(kind, level, items, registered_poor=poor)
    with pytest.raises(ClaimRefused) as refused:
        settle(policy, claim, YearAccumulators())
    assert refused.value.code == code
    assert refused.value.message


def test_refusal_names_the_item(policy: Policy) -> None:
    claim = ClaimInput("inpatient", "county", [ClaimItem(D("1"), "A"), ClaimItem(D("2.345"), "B")])
    with pytest.raises(ClaimRefused, match=r"item 2: amount 2\.345 is not whole fen"):
        settle(policy, claim, YearAccumulators())


def test_claim_total_out_of_range(policy: Policy) -> None:
    claim = ClaimInput("outpatient", "county", [(D("600000000000"), "A"), (D("600000000000"), "C")])
    with pytest.raises(ClaimRefused, match="claim total 1200000000000 is out of range"):
        settle(policy, claim, YearAccumulators())


def test_village_refusal_is_the_policy_s_doing(policy: Policy) -> None:
    claim = ClaimInput("inpatient", "village", [(D("100"), "A")])
    with pytest.raises(ClaimRefused, match="inpatient care at village level is not covered"):
        settle(policy, claim, YearAccumulators())


@pytest.mark.parametrize("amount", [100.0, 100, "100"])
def test_non_decimal_amounts_are_a_programming_error(policy: Policy, amount: object) -> None:
    claim = ClaimInput("inpatient", "county", [(amount, "A")])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="must be a Decimal"):
        settle(policy, claim, YearAccumulators())


@pytest.mark.parametrize(
    "acc",
    [
        YearAccumulators(inpatient_basic_paid=D("-1")),
        YearAccumulators(assistance_paid=D("0.001")),
        YearAccumulators(critical_illness_paid=D("NaN")),
    ],
)
def test_bad_accumulators_are_a_programming_error(policy: Policy, acc: YearAccumulators) -> None:
    with pytest.raises(ValueError, match="non-negative whole-fen"):
        settle(policy, ClaimInput("inpatient", "county", [(D("1"), "A")]), acc)


def test_negative_episode_deductible_is_a_programming_error(policy: Policy) -> None:
    claim = ClaimInput("inpatient", "county", [(D("1"), "A")], episode_deductible_borne=D("-5"))
    with pytest.raises(ValueError, match="episode_deductible_borne"):
        settle(policy, claim, YearAccumulators())


# ---- exactness and purity ------------------------------------------------------------------


def test_result_ignores_the_callers_decimal_context(policy: Policy, make_claim: MakeClaim) -> None:
    claim = make_claim("inpatient", "county", "A:27000 C:3000", poor=True)
    expected = settle(policy, claim, YearAccumulators())
    with decimal.localcontext() as ctx:
        ctx.prec = 3
        ctx.rounding = decimal.ROUND_DOWN
        assert settle(policy, claim, YearAccumulators()) == expected


def test_inputs_are_frozen_and_items_become_a_tuple() -> None:
    claim = ClaimInput("outpatient", "county", [(D("1"), "A")])
    assert isinstance(claim.items, tuple)
    with pytest.raises(AttributeError):
        claim.registered_poor = True  # type: ignore[misc]


def test_same_input_same_result(policy: Policy, make_claim: MakeClaim) -> None:
    claim = make_claim("inpatient", "province", "A:12345.67 B:890.12 C:55.55", poor=True)
    acc = YearAccumulators(critical_illness_cumulative_r1=D("7000"))
    assert settle(policy, claim, acc) == settle(policy, claim, acc)
