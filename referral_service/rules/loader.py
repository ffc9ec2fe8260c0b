"""Load and validate rule sets and the NEWS2 table, reporting every problem at once."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from referral_service.rules.conditions import compile_condition
from referral_service.rules.news2 import News2Table, parse_news2_table
from referral_service.rules.ruleset import (
    CAPABILITIES,
    KINDS,
    OUTCOMES_BY_KIND,
    URGENCIES,
    Outcome,
    Rule,
    RuleSet,
)
from referral_service.rules.source import (
    Problems,
    RuleSetError,
    check_keys,
    describe,
    read_data_file,
)

__all__ = [
    "DEFAULT_CONFIG_DIR",
    "DefaultRuleSets",
    "RuleSetError",
    "check_files",
    "load_default_rule_sets",
    "load_rule_set",
    "parse_rule_set",
]

# Where the defaults live in a source checkout; deployments pass their own directory.
DEFAULT_CONFIG_DIR = Path(__file__).resolve().parents[2] / "config" / "rules"
UP_REFERRAL_FILE = "up-referral.yaml"
DOWN_REFERRAL_FILE = "down-referral.yaml"
NEWS2_FILE = "news2.yaml"

# Rule ids become codes in {base}/CodeSystem/referral-rule, so keep them code-shaped.
_RULE_ID_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_LANGUAGES = ("zh", "en")
_OTHERWISE = "otherwise"


@dataclass(frozen=True, slots=True)
class DefaultRuleSets:
    """The rule sets and NEWS2 table the service runs with."""

    up: RuleSet
    down: RuleSet
    news2: News2Table


def parse_rule_set(data: Any, problems: Problems) -> RuleSet | None:
    """Validate parsed rule-set data, recording every problem; return the rule set when valid."""
    if not isinstance(data, dict):
        problems.add(f"the file must hold a mapping, got {describe(data)}")
        return None
    check_keys(data, ("kind", "id", "version", "title", "description", "rules"), problems)
    kind = data.get("kind")
    if kind not in KINDS:
        problems.add(f"unknown kind {kind!r}; expected one of {list(KINDS)}", field="kind")
    set_id, version = data.get("id"), data.get("version")
    if not isinstance(set_id, str) or not set_id.strip():
        problems.add(f"expected a non-empty string, got {describe(set_id)}", field="id")
    if not isinstance(version, str) or not version.strip():
        # An unquoted 1.10 would silently become 1.1, so versions must be written as strings.
        problems.add(
            f"expected a non-empty string (quote numbers), got {describe(version)}",
            field="version",
        )
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        problems.add(f"expected a non-empty list of rules, got {describe(raw_rules)}", field="rules")
        return None
    rules: list[Rule] = []
    first_index: dict[str, int] = {}
    for index, raw in enumerate(raw_rules):
        rule = _parse_rule(raw, index, len(raw_rules), kind if kind in KINDS else None, problems, first_index)
        if rule is not None:
            rules.append(rule)
    if problems:
        return None
    assert isinstance(set_id, str)
    assert isinstance(version, str)
    assert isinstance(kind, str)
    return RuleSet(set_id, version, kind, tuple(rules), problems.file)


def _parse_rule(
    raw: Any,
    index: int,
    count: int,
    kind: str | None,
    problems: Problems,
    first_index: dict[str, int],
) -> Rule | None:
    if not isinstance(raw, dict):
        problems.add(f"expected a rule (a mapping), got {describe(raw)}", field=f"rules[{index}]")
        return None
    rule_id = raw.get("id")
    label = rule_id if isinstance(rule_id, str) and rule_id else f"#{index + 1}"
    if not isinstance(rule_id, str) or not _RULE_ID_RE.fullmatch(rule_id):
        problems.add(
            f"expected a lower-case id such as 'news2-high', got {describe(rule_id)}",
            rule=label,
            field="id",
        )
    elif rule_id in first_index:
        problems.add(
            f"duplicate rule id (first used by rules[{first_index[rule_id]}])",
            rule=label,
            field="id",
        )
    else:
        first_index[rule_id] = index
    check_keys(raw, ("id", "when", "outcome", "explanation"), problems, rule=label)

    last = index == count - 1
    when = raw.get("when")
    condition = None
    condition_ok = True
    if when == _OTHERWISE:
        if not last:
            problems.add("'otherwise' is allowed only in the last rule", rule=label, field="when")
            condition_ok = False
    else:
        if last:
            # So that every decision names at least one rule, the table must end with a default.
            problems.add("the last rule must be the default: when: otherwise", rule=label, field="when")
        if "when" not in raw:
            problems.add("missing condition", rule=label, field="when")
            condition_ok = False
        else:
            condition = compile_condition(when, problems, rule_id=label)
            condition_ok = condition is not None
    outcome = _parse_outcome(raw.get("outcome"), kind, label, problems)
    explanations = _parse_explanation(raw.get("explanation"), label, problems)
    if outcome is None or explanations is None or not condition_ok:
        return None
    return Rule(label, outcome, explanations["zh"], explanations["en"], condition)


def _parse_outcome(raw: Any, kind: str | None, rule: str, problems: Problems) -> Outcome | None:
    if not isinstance(raw, dict):
        problems.add(f"expected a mapping with a 'type', got {describe(raw)}", rule=rule, field="outcome")
        return None
    outcome_type = raw.get("type")
    known = [t for ts in OUTCOMES_BY_KIND.values() for t in ts]
    if outcome_type not in known:
        problems.add(
            f"unknown outcome {outcome_type!r}; expected one of {known}",
            rule=rule,
            field="outcome.type",
        )
        return None
    if kind is not None and outcome_type not in OUTCOMES_BY_KIND[kind]:
        problems.add(
            f"outcome {outcome_type!r} is not allowed in a {kind} rule set; "
            f"expected one of {list(OUTCOMES_BY_KIND[kind])}",
            rule=rule,
            field="outcome.type",
        )
        return None
    if outcome_type == "refer-up":
        check_keys(raw, ("type", "urgency", "capability"), problems, prefix="outcome.", rule=rule)
        urgency = raw.get("urgency")
        capability = raw.get("capability")
        ok = True
        if urgency not in URGENCIES:
            problems.add(
                f"unknown urgency {urgency!r}; expected one of {list(URGENCIES)}",
                rule=rule,
                field="outcome.urgency",
            )
            ok = False
        if capability is not None and capability not in CAPABILITIES:
            problems.add(
                f"unknown capability {capability!r}; expected one of {list(CAPABILITIES)} "
                "(leave it out for the general hospital)",
                rule=rule,
                field="outcome.capability",
            )
            ok = False
        return Outcome("refer-up", urgency, capability) if ok else None
    if outcome_type == "down-referral":
        check_keys(raw, ("type", "followup_days"), problems, prefix="outcome.", rule=rule)
        days = raw.get("followup_days")
        valid = (
            isinstance(days, list)
            and bool(days)
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in days)
            and all(a < b for a, b in pairwise(days))
        )
        if not valid:
            problems.add(
                f"wrong value type: expected increasing positive whole days, got {days!r}",
                rule=rule,
                field="outcome.followup_days",
            )
            return None
        assert isinstance(days, list)
        return Outcome("down-referral", followup_days=tuple(days))
    check_keys(raw, ("type",), problems, prefix="outcome.", rule=rule)
    return Outcome(str(outcome_type))


def _parse_explanation(raw: Any, rule: str, problems: Problems) -> dict[str, str] | None:
    if not isinstance(raw, dict):
        problems.add(
            f"expected a mapping with 'zh' and 'en', got {describe(raw)}",
            rule=rule,
            field="explanation",
        )
        return None
    check_keys(raw, _LANGUAGES, problems, prefix="explanation.", rule=rule)
    texts: dict[str, str] = {}
    for language in _LANGUAGES:
        text = raw.get(language)
        if not isinstance(text, str) or not text.strip():
            problems.add(
                f"missing explanation language {language!r}",
                rule=rule,
                field=f"explanation.{language}",
            )
        else:
            texts[language] = text.strip()
    return texts if len(texts) == len(_LANGUAGES) else None


def load_rule_set(path: str | Path) -> RuleSet:
    """Load and validate one rule-set file; raise RuleSetError listing every problem."""
    problems = Problems(str(path))
    data = read_data_file(path, problems)
    rule_set = None if problems else parse_rule_set(data, problems)
    if rule_set is None:
        raise RuleSetError(problems.items)
    return rule_set


def _check_file(path: str | Path) -> tuple[RuleSet | News2Table | None, list[str]]:
    problems = Problems(str(path))
    data = read_data_file(path, problems)
    if problems:
        return None, problems.items
    loaded: RuleSet | News2Table | None
    if isinstance(data, dict) and data.get("kind") == "news2":
        loaded = parse_news2_table(data, problems)
    else:
        loaded = parse_rule_set(data, problems)
    return loaded, problems.items


def check_files(paths: Iterable[str | Path]) -> list[str]:
    """Validate rule and NEWS2 files; return every problem (empty when all are fine)."""
    messages: list[str] = []
    seen: dict[tuple[str, str], str] = {}
    for path in paths:
        loaded, problems = _check_file(path)
        messages.extend(problems)
        if isinstance(loaded, RuleSet):
            key = (loaded.id, loaded.version)
            if key in seen:
                # Decisions store the rule set id and version, which must name one file's rules.
                messages.append(
                    f"{path}: field 'id': rule set {loaded.id!r} version {loaded.version!r} "
                    f"is also defined in {seen[key]}"
                )
            else:
                seen[key] = str(path)
    return messages


def load_default_rule_sets(config_dir: str | Path = DEFAULT_CONFIG_DIR) -> DefaultRuleSets:
    """Load up-referral.yaml, down-referral.yaml and news2.yaml from ``config_dir``."""
    directory = Path(config_dir)
    messages: list[str] = []
    loaded: dict[str, RuleSet | News2Table | None] = {}
    for name, expected_kind in (
        (UP_REFERRAL_FILE, "up-referral"),
        (DOWN_REFERRAL_FILE, "down-referral"),
        (NEWS2_FILE, "news2"),
    ):
        path = directory / name
        item, problems = _check_file(path)
        messages.extend(problems)
        actual_kind = item.kind if isinstance(item, RuleSet) else "news2" if item else None
        if item is not None and actual_kind != expected_kind:
            messages.append(f"{path}: field 'kind': expected {expected_kind!r}, got {actual_kind!r}")
        loaded[name] = item
    if messages:
        raise RuleSetError(messages)
    up, down, news2 = loaded[UP_REFERRAL_FILE], loaded[DOWN_REFERRAL_FILE], loaded[NEWS2_FILE]
    assert isinstance(up, RuleSet)
    assert isinstance(down, RuleSet)
    assert isinstance(news2, News2Table)
    return DefaultRuleSets(up, down, news2)
