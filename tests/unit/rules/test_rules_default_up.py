"""The default up-referral rules (config/rules/up-referral.yaml), just inside and outside each edge."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest

from referral_service.rules import Decision

D = Decimal
Decide = Callable[..., Decision]

# Vital signs that give a chosen NEWS2 (the rest stay normal).
NEWS2_3_NO_SINGLE_3 = {"respiration_rate": 21, "pulse": 91}  # 2 + 1
NEWS2_4 = {"respiration_rate": 21, "spo2": D(92)}  # 2 + 2
NEWS2_5 = {"respiration_rate": 21, "spo2": D(92), "pulse": 91}  # 2 + 2 + 1
NEWS2_6 = {"respiration_rate": 21, "spo2": D(92), "supplemental_oxygen": True}  # 2 + 2 + 2
NEWS2_7_NO_SINGLE_3 = {**NEWS2_6, "pulse": 91}  # 2 + 2 + 2 + 1
NEWS2_7_WITH_3 = {"respiration_rate": 25, "spo2": D(91), "pulse": 91}  # 3 + 3 + 1


def test_healthy_adult_is_treated_here(decide_up: Decide) -> None:
    decision = decide_up()
    assert decision.outcome == "treat-here"
    assert decision.rule_ids == ("default",)
    assert (decision.urgency, decision.priority, decision.capability) == (None, None, None)
    assert decision.matched_rules[0].explanation_en == (
        "No referral rule applies: treat at the township clinic"
    )


def test_news2_7_with_a_3_lists_high_and_medium(decide_up: Decide) -> None:
    decision = decide_up(**NEWS2_7_WITH_3)
    assert decision.news2.total == 7
    assert decision.news2.max_single == 3
    assert decision.rule_ids == ("news2-high", "news2-medium")
    assert (decision.outcome, decision.urgency, decision.priority) == (
        "refer-up",
        "emergency",
        "stat",
    )


def test_news2_7_without_a_3_is_high_only(decide_up: Decide) -> None:
    decision = decide_up(**NEWS2_7_NO_SINGLE_3)
    assert decision.news2.total == 7
    assert decision.rule_ids == ("news2-high",)
    assert decision.urgency == "emergency"


@pytest.mark.parametrize(
    ("vitals", "total", "expected_ids", "urgency"),
    [
        (NEWS2_4, 4, ("default",), None),
        (NEWS2_5, 5, ("news2-medium",), "urgent"),
        (NEWS2_6, 6, ("news2-medium",), "urgent"),
        (NEWS2_7_NO_SINGLE_3, 7, ("news2-high",), "emergency"),
        # A single parameter at 3 is urgent whatever the total.
        ({"consciousness": "V"}, 3, ("news2-medium",), "urgent"),
        ({"temperature": D("35.0")}, 3, ("news2-medium",), "urgent"),
        ({"temperature": D("35.05")}, 1, ("default",), None),
    ],
)
def test_news2_thresholds(
    decide_up: Decide,
    vitals: dict[str, object],
    total: int,
    expected_ids: tuple[str, ...],
    urgency: str | None,
) -> None:
    decision = decide_up(**vitals)
    assert decision.news2.total == total
    assert decision.rule_ids == expected_ids
    assert decision.urgency == urgency


def test_missing_vitals_use_the_partial_total(decide_up: Decide) -> None:
    decision = decide_up(**NEWS2_5, temperature=None, systolic_bp=None)
    assert decision.news2.total == 5
    assert decision.rule_ids == ("news2-medium",)
    assert decision.news2.missing == ("systolic_bp", "temperature")


@pytest.mark.parametrize(
    ("code", "matches"),
    [
        ("I20.9", False),
        ("I21", True),
        ("I22.1", True),
        ("I23", False),
        ("I59", False),
        ("I60", True),
        ("I63.9", True),
        ("i63.9", True),
        ("I639", True),
        ("I64.9", True),
        ("I65", False),
        ("K35.8", True),
        ("K36", False),
        ("K34", False),
        ("S72.0", True),
        ("S71", False),
        ("S73", False),
        ("O00", True),
        ("O08.9", True),
        ("O09", False),
        ("O10", True),
        ("O16", True),
        ("O17", False),
        ("O19", False),
        ("O20.0", True),
        ("O21", False),
        ("O43", False),
        ("O44", True),
        ("O46.9", True),
        ("O47", False),
        ("B99", False),
        ("C00", True),
        ("C50.9", True),
        ("C97", True),
        ("D00", False),
        ("J96.0", True),
        ("J95", False),
        ("J97", False),
        ("N17.9", True),
        ("N16", False),
        ("N18", False),
    ],
)
def test_county_only_diagnoses(decide_up: Decide, code: str, matches: bool) -> None:
    decision = decide_up(diagnosis_codes=("J06.9", code))
    assert ("county-only-dx" in decision.rule_ids) is matches
    assert decision.urgency == ("urgent" if matches else None)


@pytest.mark.parametrize(
    ("age_months", "temperature", "matches"),
    [
        (2, D("38.0"), True),
        (0, D("39.5"), True),
        (3, D("38.0"), False),
        (2, D("37.9"), False),
        (2, D("37.95"), False),
        (2, None, False),
    ],
)
def test_infant_fever(decide_up: Decide, age_months: int, temperature: Decimal | None, matches: bool) -> None:
    decision = decide_up(age_years=0, age_months=age_months, temperature=temperature)
    assert ("infant-fever" in decision.rule_ids) is matches
    if matches:
        assert (decision.urgency, decision.capability) == ("urgent", "paediatrics")


@pytest.mark.parametrize(
    ("pregnant", "systolic", "diastolic", "matches"),
    [
        (True, 140, 80, True),
        (True, 120, 90, True),
        (True, 139, 89, False),
        (False, 160, 100, False),
        (True, None, None, False),
        (True, None, 95, True),
    ],
)
def test_pregnant_abnormal_vitals(
    decide_up: Decide,
    pregnant: bool,
    systolic: int | None,
    diastolic: int | None,
    matches: bool,
) -> None:
    decision = decide_up(pregnant=pregnant, systolic_bp=systolic, diastolic_bp=diastolic)
    assert ("pregnant-abnormal-vitals" in decision.rule_ids) is matches
    if matches:
        assert (decision.urgency, decision.capability) == ("urgent", "obstetrics")


@pytest.mark.parametrize(
    ("codes", "counts", "matches"),
    [
        (("J06.9",), {"J06": 2}, True),
        (("J06.9",), {"J06": 5}, True),
        (("J06.9",), {"J06": 1}, False),
        (("J06.9",), {}, False),
        # Earlier visits only count for a category diagnosed at this visit too.
        (("J06.9",), {"I10": 3}, False),
        (("I10", "J06.0"), {"I10": 1, "J06": 2}, True),
        ((), {"J06": 2}, False),
    ],
)
def test_repeat_visits(
    decide_up: Decide, codes: tuple[str, ...], counts: dict[str, int], matches: bool
) -> None:
    decision = decide_up(diagnosis_codes=codes, repeat_visit_counts=counts)
    assert ("repeat-visits" in decision.rule_ids) is matches
    assert decision.urgency == ("routine" if matches else None)
    assert decision.priority == ("routine" if matches else None)


@pytest.mark.parametrize(
    ("age_years", "vitals", "matches"),
    [
        (80, NEWS2_3_NO_SINGLE_3, True),
        (95, NEWS2_3_NO_SINGLE_3, True),
        (79, NEWS2_3_NO_SINGLE_3, False),
        (80, {"respiration_rate": 21}, False),  # NEWS2 2
    ],
)
def test_elderly_watch(decide_up: Decide, age_years: int, vitals: dict[str, object], matches: bool) -> None:
    decision = decide_up(age_years=age_years, age_months=age_years * 12, **vitals)
    assert ("elderly-watch" in decision.rule_ids) is matches
    assert decision.rule_ids == (("elderly-watch",) if matches else ("default",))
    assert decision.urgency == ("routine" if matches else None)


def test_default_never_listed_with_another_rule(decide_up: Decide) -> None:
    decision = decide_up(diagnosis_codes=("J06.9",), repeat_visit_counts={"J06": 2})
    assert decision.rule_ids == ("repeat-visits",)
