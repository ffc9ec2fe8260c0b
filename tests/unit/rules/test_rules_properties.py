"""Property tests: determinism, monotonicity in NEWS2 scores, every decision explained."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from referral_service.rules import Decision, DefaultRuleSets, Facts, evaluate
from referral_service.rules.ruleset import URGENCY_RANK

# Writing no example database keeps test runs from creating files in the work tree.
PROPERTY_SETTINGS = settings(database=None, deadline=None, max_examples=300)

CODES = [
    "J06.9",
    "I10",
    "I63.9",
    "I65",
    "K35.8",
    "O14.1",
    "O09",
    "C50.9",
    "D00.1",
    "E11.9",
    "Z48.0",
    "S72.0",
    "J44.1",
    "N18.3",
    "A09",
]
CATEGORIES = sorted({code[:3] for code in CODES})

VITALS: dict[str, st.SearchStrategy[Any]] = {
    "respiration_rate": st.integers(0, 60),
    "spo2": st.decimals(min_value=60, max_value=100, places=1),
    "supplemental_oxygen": st.booleans(),
    "systolic_bp": st.integers(50, 260),
    "pulse": st.integers(20, 220),
    "consciousness": st.sampled_from("ACVPU"),
    "temperature": st.decimals(min_value=32, max_value=43, places=2),
}
# Values scoring 0, so that most visits are not already urgent and all outcomes are reached.
NORMAL_VITALS: dict[str, st.SearchStrategy[Any]] = {
    "respiration_rate": st.integers(12, 20),
    "spo2": st.decimals(min_value=96, max_value=100, places=1),
    "supplemental_oxygen": st.just(False),
    "systolic_bp": st.integers(111, 219),
    "pulse": st.integers(51, 90),
    "consciousness": st.just("A"),
    "temperature": st.decimals(min_value="36.1", max_value="38.0", places=2),
}
# Values scoring 1 or 2: enough for elderly-watch (total >= 3) without a single 3.
MILD_VITALS: dict[str, st.SearchStrategy[Any]] = {
    "respiration_rate": st.integers(9, 11) | st.integers(21, 24),
    "spo2": st.decimals(min_value=92, max_value="95.9", places=1),
    "supplemental_oxygen": st.just(True),
    "systolic_bp": st.integers(91, 110),
    "pulse": st.integers(41, 50) | st.integers(91, 130),
    "consciousness": st.just("A"),
    "temperature": st.decimals(min_value="35.1", max_value="36.0", places=2)
    | st.decimals(min_value="38.1", max_value="40.0", places=2),
}
# Rules of the default set that read a raw vital sign instead of its NEWS2 score.
RAW_VALUE_RULES = {"temperature": "infant-fever", "systolic_bp": "pregnant-abnormal-vitals"}
NEWS2_RULES = {"news2-high", "news2-medium", "elderly-watch"}


@st.composite
def facts(draw: st.DrawFn) -> Facts:
    """Any plausible visit: random age, sex, pregnancy, vitals (each possibly missing), codes."""
    # Infants and the very old have rules of their own, so draw them often.
    months = draw(st.integers(0, 5) | st.integers(78 * 12, 100 * 12) | st.integers(0, 105 * 12))
    values: dict[str, Any] = {
        "age_years": months // 12,
        "age_months": months,
        "sex": draw(st.sampled_from(["male", "female", "other", "unknown"])),
        "pregnant": draw(st.booleans()),
        "facility_level": draw(st.sampled_from(["village", "township"])),
        "diagnosis_codes": tuple(draw(st.lists(st.sampled_from(CODES), max_size=3))),
        "repeat_visit_counts": draw(
            st.dictionaries(st.sampled_from(CATEGORIES), st.integers(0, 4), max_size=3)
        ),
        "diastolic_bp": draw(st.none() | st.integers(30, 150)),
        "encounter_class": draw(st.sampled_from(["AMB", "IMP"])),
        "discharge_disposition": draw(st.none() | st.sampled_from(["home", "other-hcf", "exp"])),
    }
    # One severity per visit, so that healthy, mildly ill and very ill visits all come up.
    severity = draw(st.sampled_from(["normal", "mild", "any"]))
    for name, strategy in VITALS.items():
        choice = st.none() | NORMAL_VITALS[name]
        if severity != "normal":
            choice |= MILD_VITALS[name]
        if severity == "any":
            choice |= strategy
        values[name] = draw(choice)
    return Facts(**values)


def rank(decision: Decision) -> int:
    return 0 if decision.urgency is None else URGENCY_RANK[decision.urgency]


def news2_rank(decision: Decision) -> int:
    """Highest urgency among the matched rules that read only NEWS2 (and age)."""
    return max(
        (URGENCY_RANK[m.urgency or ""] for m in decision.matched_rules if m.id in NEWS2_RULES),
        default=0,
    )


@PROPERTY_SETTINGS
@given(visit=facts())
def test_evaluation_is_deterministic(rule_sets: DefaultRuleSets, visit: Facts) -> None:
    twin = dataclasses.replace(visit)
    first = evaluate(rule_sets.up, visit, rule_sets.news2)
    assert evaluate(rule_sets.up, visit, rule_sets.news2) == first
    assert evaluate(rule_sets.up, twin, rule_sets.news2).to_dict() == first.to_dict()
    down = evaluate(rule_sets.down, visit, rule_sets.news2)
    assert evaluate(rule_sets.down, twin, rule_sets.news2) == down


@PROPERTY_SETTINGS
@given(visit=facts())
def test_every_decision_names_at_least_one_rule(rule_sets: DefaultRuleSets, visit: Facts) -> None:
    for rule_set in (rule_sets.up, rule_sets.down):
        decision = evaluate(rule_set, visit, rule_sets.news2)
        assert len(decision.matched_rules) >= 1
        # The default appears exactly when it is the only rule that fired.
        assert ("default" in decision.rule_ids) is (decision.rule_ids == ("default",))
        assert all(m.explanation_zh and m.explanation_en for m in decision.matched_rules)


@PROPERTY_SETTINGS
@given(visit=facts())
def test_decision_follows_its_matched_rules(rule_sets: DefaultRuleSets, visit: Facts) -> None:
    decision = evaluate(rule_sets.up, visit, rule_sets.news2)
    ranks = [URGENCY_RANK.get(m.urgency or "", 0) for m in decision.matched_rules]
    assert rank(decision) == max(ranks)
    winners = [m for m in decision.matched_rules if URGENCY_RANK.get(m.urgency or "", 0) == max(ranks)]
    named = [m.capability for m in winners if m.capability is not None]
    assert decision.capability == (named[0] if named else None)
    assert (
        decision.priority
        == {None: None, "routine": "routine", "urgent": "urgent", "emergency": "stat"}[decision.urgency]
    )
    news2 = decision.news2
    scores = [item.score for item in news2.items if item.score is not None]
    assert news2.total == sum(scores)
    assert news2.max_single == max(scores, default=0)
    assert len(scores) + len(news2.missing) == 7


@PROPERTY_SETTINGS
@given(visit=facts(), data=st.data())
def test_raising_a_news2_score_never_lowers_the_urgency(
    rule_sets: DefaultRuleSets, visit: Facts, data: st.DataObject
) -> None:
    parameter = data.draw(st.sampled_from(sorted(VITALS)))
    new_value = data.draw(VITALS[parameter])
    before = evaluate(rule_sets.up, visit, rule_sets.news2)
    after = evaluate(rule_sets.up, dataclasses.replace(visit, **{parameter: new_value}), rule_sets.news2)
    old_score = before.news2.score_of(parameter) or 0  # a missing value scores nothing
    assume(after.news2.score_of(parameter) > old_score)  # type: ignore[operator]

    assert after.news2.total > before.news2.total
    # The urgency owed to NEWS2 alone never drops (news2-medium may give way to news2-high).
    assert news2_rank(after) >= news2_rank(before)
    if rank(after) < rank(before):
        # Only possible by moving temperature or systolic BP *down* (a worse NEWS2 score on the
        # low side) out of a rule that reads the raw value on the high side: e.g. pregnant at
        # 150/80 (urgent, obstetrics) -> systolic 100 scores 2 but is no longer hypertension.
        old_value = getattr(visit, parameter)
        lost = set(before.rule_ids) - set(after.rule_ids)
        assert parameter in RAW_VALUE_RULES
        assert RAW_VALUE_RULES[parameter] in lost
        assert old_value is not None
        assert new_value < old_value


@PROPERTY_SETTINGS
@given(visit=facts(), data=st.data())
def test_worsening_a_vital_sign_never_lowers_the_urgency(
    rule_sets: DefaultRuleSets, visit: Facts, data: st.DataObject
) -> None:
    """Raising a score never lowers urgency when the value moves further the way it deviates."""
    parameter = data.draw(st.sampled_from(sorted(VITALS)))
    new_value = data.draw(VITALS[parameter])
    old_value = getattr(visit, parameter)
    if parameter in RAW_VALUE_RULES and old_value is not None:
        # Those two rules read "high" values, so only upward moves are worsening for them.
        assume(new_value > old_value)
    before = evaluate(rule_sets.up, visit, rule_sets.news2)
    after = evaluate(rule_sets.up, dataclasses.replace(visit, **{parameter: new_value}), rule_sets.news2)
    assume(after.news2.score_of(parameter) > (before.news2.score_of(parameter) or 0))  # type: ignore[operator]
    assert rank(after) >= rank(before)


def test_lowering_systolic_of_a_hypertensive_pregnancy_can_lower_urgency(
    rule_sets: DefaultRuleSets,
) -> None:
    """The documented exception to monotonicity, pinned so that a rule change shows up here."""
    base = Facts(age_years=28, age_months=336, sex="female", pregnant=True, systolic_bp=150, diastolic_bp=80)
    hypotensive = dataclasses.replace(base, systolic_bp=100)
    before = evaluate(rule_sets.up, base, rule_sets.news2)
    after = evaluate(rule_sets.up, hypotensive, rule_sets.news2)
    assert (before.news2.score_of("systolic_bp"), after.news2.score_of("systolic_bp")) == (0, 2)
    assert (before.urgency, before.capability) == ("urgent", "obstetrics")
    assert after.outcome == "treat-here"


def test_facts_strategy_reaches_every_outcome(rule_sets: DefaultRuleSets) -> None:
    """Guard against a strategy too narrow to exercise the properties above."""
    seen: set[str | None] = set()

    # Derandomized: a fixed sequence of examples, so this guard cannot fail by bad luck.
    @settings(database=None, deadline=None, max_examples=300, derandomize=True)
    @given(visit=facts())
    def collect(visit: Facts) -> None:
        seen.add(evaluate(rule_sets.up, visit, rule_sets.news2).urgency)

    collect()
    assert seen == {None, "routine", "urgent", "emergency"}


def test_decimal_values_compare_exactly(rule_sets: DefaultRuleSets) -> None:
    visit = Facts(age_years=0, age_months=2, temperature=Decimal("37.999"))
    assert evaluate(rule_sets.up, visit, rule_sets.news2).rule_ids == ("default",)
