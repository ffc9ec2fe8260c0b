"""The default down-referral rules (config/rules/down-referral.yaml) at an inpatient discharge."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from referral_service.rules import Decision

Decide = Callable[..., Decision]


@pytest.mark.parametrize(
    ("code", "matches"),
    [
        ("I59", False),
        ("I60", True),
        ("I63.9", True),
        ("I64.9", True),
        ("I65", False),
        ("S71", False),
        ("S72.0", True),
        ("S73", False),
        ("I20", False),
        ("I21.4", True),
        ("I22", True),
        ("I23", False),
        ("J43", False),
        ("J44.1", True),
        ("J45", False),
        ("E09", False),
        ("E10", True),
        ("E11.9", True),
        ("E14.9", True),
        ("E15", False),
        ("Z47", False),
        ("Z48.8", True),
        ("Z49", False),
    ],
)
def test_diagnoses(decide_down: Decide, code: str, matches: bool) -> None:
    decision = decide_down(diagnosis_codes=("K80.2", code))
    if matches:
        assert decision.outcome == "down-referral"
        assert decision.rule_ids == ("down-referral-dx",)
        assert decision.followup_days == (7, 30, 90)
    else:
        assert decision.outcome == "none"
        assert decision.rule_ids == ("down-referral-none",)
        assert decision.followup_days == ()
    assert (decision.urgency, decision.priority, decision.capability) == (None, None, None)


@pytest.mark.parametrize(
    ("disposition", "matches"),
    [("home", True), ("other-hcf", True), ("exp", False), ("hosp", False), ("snf", False), (None, False)],
)
def test_discharge_disposition(decide_down: Decide, disposition: str | None, matches: bool) -> None:
    decision = decide_down(diagnosis_codes=("I63.9",), discharge_disposition=disposition)
    assert decision.outcome == ("down-referral" if matches else "none")


def test_only_inpatient_encounters(decide_down: Decide) -> None:
    decision = decide_down(diagnosis_codes=("I63.9",), encounter_class="AMB")
    assert decision.outcome == "none"


def test_decision_names_the_down_rule_set(decide_down: Decide) -> None:
    decision = decide_down(diagnosis_codes=("Z48.0",))
    assert (decision.rule_set_id, decision.rule_set_version, decision.rule_set_kind) == (
        "down-referral-default",
        "2024.2",
        "down-referral",
    )
    assert decision.matched_rules[0].explanation_zh.startswith("出院回家或转其他机构")
