"""Evaluate a rule set on the facts of one visit and return a Decision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from referral_service.rules.facts import Facts
from referral_service.rules.news2 import News2Result, News2Table
from referral_service.rules.ruleset import SERVICE_REQUEST_PRIORITY, MatchedRule, Rule, RuleSet

__all__ = ["Decision", "MatchedRule", "evaluate"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What the rules decided for one visit, with every rule that fired and why."""

    outcome: str  # refer-up | treat-here | down-referral | none
    urgency: str | None  # emergency | urgent | routine for refer-up, else None
    priority: str | None  # FHIR ServiceRequest.priority: stat | urgent | routine
    capability: str | None  # obstetrics | paediatrics | tcm; None: the general hospital
    matched_rules: tuple[MatchedRule, ...]  # every rule that fired, in table order
    news2: News2Result
    rule_set_id: str
    rule_set_version: str
    rule_set_kind: str
    followup_days: tuple[int, ...] = ()  # down-referral only

    @property
    def rule_ids(self) -> tuple[str, ...]:
        """Ids of the rules that fired, in table order."""
        return tuple(rule.id for rule in self.matched_rules)

    @property
    def refers(self) -> bool:
        """True when a referral (up or down) is proposed."""
        return self.outcome in ("refer-up", "down-referral")

    def to_dict(self) -> dict[str, Any]:
        """Return plain JSON-ready data for storage (orjson / json serialisable)."""
        return {
            "outcome": self.outcome,
            "urgency": self.urgency,
            "priority": self.priority,
            "capability": self.capability,
            "followup_days": list(self.followup_days),
            "rule_set": {
                "id": self.rule_set_id,
                "version": self.rule_set_version,
                "kind": self.rule_set_kind,
            },
            "matched_rules": [rule.to_dict() for rule in self.matched_rules],
            "news2": self.news2.to_dict(),
        }


def evaluate(
    rule_set: RuleSet,
    facts: Facts,
    news2_table: News2Table,
    *,
    news2: News2Result | None = None,
) -> Decision:
    """Evaluate ``rule_set`` on ``facts``; pass ``news2`` to reuse a score already computed.

    The outcome is the most urgent among all matching rules (emergency > urgent > routine >
    treat here; down-referral > none). The capability comes from the first rule, in table
    order, among the matches of the winning rank that names one.
    """
    score = news2_table.score(facts) if news2 is None else news2
    matched: list[Rule] = []
    for rule in rule_set.rules:
        condition = rule.condition
        if condition is None:
            # The default ('otherwise') fires only when nothing above it fired.
            if not matched:
                matched.append(rule)
        elif condition(facts, score) is True:
            matched.append(rule)
    if not matched:
        # The loader requires a final 'otherwise' rule, so this means a hand-built rule set.
        raise ValueError(f"rule set {rule_set.id!r} has no default rule and nothing matched")

    winner = matched[0].outcome
    best = winner.rank
    for rule in matched[1:]:
        if rule.outcome.rank > best:
            winner, best = rule.outcome, rule.outcome.rank
    capability = None
    followup_days: tuple[int, ...] = ()
    for rule in matched:
        outcome = rule.outcome
        if outcome.rank != best or outcome.type != winner.type:
            continue
        if capability is None and outcome.capability is not None:
            capability = outcome.capability
        if not followup_days and outcome.followup_days:
            followup_days = outcome.followup_days
    urgency = winner.urgency
    return Decision(
        outcome=winner.type,
        urgency=urgency,
        priority=None if urgency is None else SERVICE_REQUEST_PRIORITY[urgency],
        capability=capability,
        matched_rules=tuple(rule.matched for rule in matched),
        news2=score,
        rule_set_id=rule_set.id,
        rule_set_version=rule_set.version,
        rule_set_kind=rule_set.kind,
        followup_days=followup_days,
    )
