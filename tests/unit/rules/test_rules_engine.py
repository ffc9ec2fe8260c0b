"""Decision building: winning urgency, priority, capability, explanations, condition semantics."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from referral_service.rules import (
    Decision,
    DefaultRuleSets,
    Facts,
    RuleSet,
    evaluate,
    load_rule_set,
)

D = Decimal
Decide = Callable[..., Decision]


def test_every_matched_rule_is_listed_with_its_explanations(
    decide_up: Decide, rule_sets: DefaultRuleSets
) -> None:
    decision = decide_up(
        age_years=82,
        age_months=984,
        respiration_rate=25,
        spo2=D(91),
        pulse=91,
        diagnosis_codes=("I63.9",),
        repeat_visit_counts={"I63": 2},
    )
    assert decision.rule_ids == (
        "news2-high",
        "news2-medium",
        "county-only-dx",
        "repeat-visits",
        "elderly-watch",
    )
    for matched in decision.matched_rules:
        rule = rule_sets.up.rule(matched.id)
        assert matched.explanation_zh == rule.explanation_zh
        assert matched.explanation_en == rule.explanation_en
        assert matched.outcome == "refer-up"
    assert [m.urgency for m in decision.matched_rules] == [
        "emergency",
        "urgent",
        "urgent",
        "routine",
        "routine",
    ]
    assert decision.urgency == "emergency"


@pytest.mark.parametrize(
    ("overrides", "urgency", "priority", "capability"),
    [
        # Urgent without capability beside urgent obstetrics: the one naming a capability wins.
        (
            {"pregnant": True, "systolic_bp": 150, "consciousness": "V"},
            "urgent",
            "urgent",
            "obstetrics",
        ),
        # Emergency outranks the urgent obstetric rule, whose capability then does not apply.
        (
            {"pregnant": True, "systolic_bp": 150, "respiration_rate": 25, "spo2": D(91), "pulse": 91},
            "emergency",
            "stat",
            None,
        ),
        # Two capabilities at the winning urgency: the first in table order (paediatrics).
        (
            {"age_years": 0, "age_months": 2, "temperature": D("38.5"), "pregnant": True, "diastolic_bp": 95},
            "urgent",
            "urgent",
            "paediatrics",
        ),
        # Routine capability-free referral stays with the general hospital.
        ({"diagnosis_codes": ("J06.9",), "repeat_visit_counts": {"J06": 3}}, "routine", "routine", None),
    ],
)
def test_urgency_priority_and_capability(
    decide_up: Decide,
    overrides: dict[str, Any],
    urgency: str,
    priority: str,
    capability: str | None,
) -> None:
    decision = decide_up(**overrides)
    assert decision.outcome == "refer-up"
    assert (decision.urgency, decision.priority, decision.capability) == (
        urgency,
        priority,
        capability,
    )


def test_to_dict_round_trips_through_json(decide_up: Decide) -> None:
    decision = decide_up(age_years=0, age_months=1, temperature=D("38.05"), spo2=None)
    data = json.loads(json.dumps(decision.to_dict(), ensure_ascii=False))
    assert data["outcome"] == "refer-up"
    assert data["priority"] == "urgent"
    assert data["capability"] == "paediatrics"
    assert data["rule_set"] == {"id": "up-referral-default", "version": "2024.1", "kind": "up-referral"}
    assert [rule["id"] for rule in data["matched_rules"]] == ["infant-fever"]
    assert data["matched_rules"][0]["explanation"]["en"].startswith("Infant under 3 months")
    assert data["news2"]["missing"] == ["spo2"]
    assert data["news2"]["message"]["en"] == "NEWS2 incomplete: no SpO2"
    assert data["news2"]["parameters"][6] == {"parameter": "temperature", "value": 38.05, "score": 1}


def test_precomputed_news2_is_reused(rule_sets: DefaultRuleSets, make_facts: Callable[..., Facts]) -> None:
    facts = make_facts(respiration_rate=25)
    news2 = rule_sets.news2.score(facts)
    decision = evaluate(rule_sets.up, facts, rule_sets.news2, news2=news2)
    assert decision.news2 is news2
    assert decision.rule_ids == ("news2-medium",)


# --- condition semantics on small rule sets ---------------------------------------------------


@pytest.fixture
def one_rule(
    write_file: Callable[..., Path], rule_sets: DefaultRuleSets
) -> Callable[[Any], Callable[..., str]]:
    """Return a builder: a rule set with one 'hit' rule on ``when``; its result says if it fired."""

    def build(when: Any) -> Callable[..., str]:
        path = write_file(
            {
                "kind": "up-referral",
                "id": "probe",
                "version": "1",
                "rules": [
                    {
                        "id": "hit",
                        "when": when,
                        "outcome": {"type": "refer-up", "urgency": "routine"},
                        "explanation": {"zh": "命中", "en": "hit"},
                    },
                    {
                        "id": "default",
                        "when": "otherwise",
                        "outcome": {"type": "treat-here"},
                        "explanation": {"zh": "未命中", "en": "miss"},
                    },
                ],
            }
        )
        rule_set = load_rule_set(path)

        def fired(**facts: Any) -> str:
            values: dict[str, Any] = {"age_years": 40, "age_months": 480}
            values.update(facts)
            decision = evaluate(rule_set, Facts(**values), rule_sets.news2)
            return ",".join(decision.rule_ids)

        return fired

    return build


def test_not_of_a_missing_value_does_not_fire(one_rule: Callable[[Any], Callable[..., str]]) -> None:
    fired = one_rule({"not": {"fact": "spo2", "lt": 92}})
    assert fired(spo2=D(95)) == "hit"
    assert fired(spo2=D(90)) == "default"
    assert fired() == "default"  # spo2 missing: unknown, so the rule does not fire


def test_any_fires_on_a_known_true_part_despite_a_missing_one(
    one_rule: Callable[[Any], Callable[..., str]],
) -> None:
    fired = one_rule({"any": [{"fact": "pulse", "gt": 120}, {"fact": "temperature", "ge": 39}]})
    assert fired(temperature=D("39.0")) == "hit"
    assert fired(temperature=D("38.9")) == "default"
    assert fired() == "default"


def test_all_with_a_missing_part_does_not_fire(
    one_rule: Callable[[Any], Callable[..., str]],
) -> None:
    fired = one_rule({"all": [{"fact": "age_years", "ge": 18}, {"fact": "pulse", "gt": 120}]})
    assert fired(pulse=121) == "hit"
    assert fired() == "default"
    assert fired(age_years=10, age_months=120) == "default"


@pytest.mark.parametrize(
    ("when", "facts", "expected"),
    [
        ({"fact": "facility_level", "in": ["village", "township"]}, {"facility_level": "village"}, "hit"),
        ({"fact": "facility_level", "in": ["village", "township"]}, {"facility_level": "county"}, "default"),
        ({"fact": "sex", "ne": "male"}, {"sex": "female"}, "hit"),
        ({"fact": "sex", "ne": "male"}, {"sex": "male"}, "default"),
        ({"fact": "pulse", "between": [51, 90]}, {"pulse": 51}, "hit"),
        ({"fact": "pulse", "between": [51, 90]}, {"pulse": 91}, "default"),
        ({"fact": "temperature", "eq": 38}, {"temperature": D("38.0")}, "hit"),
        ({"is_true": "supplemental_oxygen"}, {"supplemental_oxygen": True}, "hit"),
        ({"is_true": "supplemental_oxygen"}, {"supplemental_oxygen": False}, "default"),
        ({"is_true": "supplemental_oxygen"}, {}, "default"),
        ({"fact": "supplemental_oxygen", "eq": False}, {"supplemental_oxygen": False}, "hit"),
        ({"fact": "consciousness", "in": ["V", "P", "U"]}, {"consciousness": "p"}, "hit"),
        ({"fact": "news2_max_single", "ge": 2}, {"pulse": 111}, "hit"),
        ({"icd10": {"codes": ["I63.9"]}}, {"diagnosis_codes": ("i63.9",)}, "hit"),
        ({"icd10": {"codes": ["I63.9"]}}, {"diagnosis_codes": ("I63.0",)}, "default"),
        ({"icd10": {"prefixes": ["I6"]}}, {"diagnosis_codes": ("I69.3",)}, "hit"),
        ({"icd10": {"prefixes": ["I63.1"]}}, {"diagnosis_codes": ("I63.10",)}, "hit"),
        ({"icd10": {"prefixes": ["I63.1"]}}, {"diagnosis_codes": ("I63.2",)}, "default"),
        ({"icd10": {"ranges": ["A98-B01"]}}, {"diagnosis_codes": ("B00.1",)}, "hit"),
        (
            {"repeat_visits": {"min_earlier": 3}},
            {"diagnosis_codes": ("J06.9",), "repeat_visit_counts": {"J06": 2}},
            "default",
        ),
    ],
)
def test_leaf_operators(
    one_rule: Callable[[Any], Callable[..., str]],
    when: Any,
    facts: dict[str, Any],
    expected: str,
) -> None:
    assert one_rule(when)(**facts) == expected


def test_hand_built_rule_set_without_default_is_refused(
    rule_sets: DefaultRuleSets, make_facts: Callable[..., Facts]
) -> None:
    # The loader never produces this; a rule set built in code could.
    bare = RuleSet("bare", "1", "up-referral", rule_sets.up.rules[:1])
    with pytest.raises(ValueError, match="no default rule"):
        evaluate(bare, make_facts(), rule_sets.news2)
