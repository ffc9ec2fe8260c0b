"""Referral rules: facts, NEWS2, rule sets as data, evaluation to a Decision (pure, no Flask)."""

from referral_service.rules.engine import Decision, evaluate
from referral_service.rules.facts import Facts, age_on, icd10_category
from referral_service.rules.loader import (
    DEFAULT_CONFIG_DIR,
    DefaultRuleSets,
    check_files,
    load_default_rule_sets,
    load_rule_set,
)
from referral_service.rules.news2 import News2Result, News2Table, load_news2_table
from referral_service.rules.ruleset import MatchedRule, RuleSet
from referral_service.rules.source import RuleSetError

__all__ = [
    "DEFAULT_CONFIG_DIR",
    "Decision",
    "DefaultRuleSets",
    "Facts",
    "MatchedRule",
    "News2Result",
    "News2Table",
    "RuleSet",
    "RuleSetError",
    "age_on",
    "check_files",
    "evaluate",
    "icd10_category",
    "load_default_rule_sets",
    "load_news2_table",
    "load_rule_set",
]
