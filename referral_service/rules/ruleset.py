"""Rule sets as loaded: rules in table order, each with a compiled condition and an outcome."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from referral_service.rules.conditions import Condition

KINDS = ("up-referral", "down-referral")
# Outcomes each kind of rule set may produce (a down-referral set never refers up).
OUTCOMES_BY_KIND: Mapping[str, tuple[str, ...]] = {
    "up-referral": ("refer-up", "treat-here"),
    "down-referral": ("down-referral", "none"),
}
URGENCIES = ("emergency", "urgent", "routine")
URGENCY_RANK: Mapping[str, int] = {"emergency": 3, "urgent": 2, "routine": 1}
# FHIR ServiceRequest.priority for each urgency (DESIGN section 4).
SERVICE_REQUEST_PRIORITY: Mapping[str, str] = {
    "emergency": "stat",
    "urgent": "urgent",
    "routine": "routine",
}
# {base}/CodeSystem/capability without 'general': no capability already means the general hospital.
CAPABILITIES = ("obstetrics", "paediatrics", "tcm")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a rule proposes when it fires."""

    type: str  # refer-up | treat-here | down-referral | none
    urgency: str | None = None  # refer-up only
    capability: str | None = None  # refer-up only, optional
    followup_days: tuple[int, ...] = ()  # down-referral only

    @property
    def rank(self) -> int:
        """Order of precedence: emergency 3 > urgent 2 > routine 1 = down-referral > the rest 0."""
        if self.type == "refer-up" and self.urgency is not None:
            return URGENCY_RANK[self.urgency]
        return 1 if self.type == "down-referral" else 0


@dataclass(frozen=True, slots=True)
class MatchedRule:
    """A rule as a decision records it: id, outcome and explanations."""

    id: str
    outcome: str
    urgency: str | None
    capability: str | None
    explanation_zh: str
    explanation_en: str

    def to_dict(self) -> dict[str, Any]:
        """Return plain JSON-ready data."""
        return {
            "id": self.id,
            "outcome": self.outcome,
            "urgency": self.urgency,
            "capability": self.capability,
            "explanation": {"zh": self.explanation_zh, "en": self.explanation_en},
        }


@dataclass(frozen=True, slots=True)
class Rule:
    """One named rule: fires when its condition is true, or (``otherwise``) when none above did."""

    id: str
    outcome: Outcome
    explanation_zh: str
    explanation_en: str
    condition: Condition | None = field(compare=False, repr=False)  # None: 'otherwise'
    matched: MatchedRule = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        """Build the record a decision keeps, once, instead of on every evaluation."""
        object.__setattr__(
            self,
            "matched",
            MatchedRule(
                self.id,
                self.outcome.type,
                self.outcome.urgency,
                self.outcome.capability,
                self.explanation_zh,
                self.explanation_en,
            ),
        )

    @property
    def otherwise(self) -> bool:
        """True for the default rule, which fires only when no rule above it fired."""
        return self.condition is None


@dataclass(frozen=True, slots=True)
class RuleSet:
    """A versioned, ordered list of rules of one kind (up-referral or down-referral)."""

    id: str
    version: str
    kind: str
    rules: tuple[Rule, ...]
    source: str = ""  # the file it was loaded from

    def rule(self, rule_id: str) -> Rule:
        """Return the rule with this id."""
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)
