"""Rule conditions: validate the data form once and compile it into plain closures.

Grammar (YAML or JSON; no expressions, nothing is evaluated as code)::

    condition := {all: [condition, ...]} | {any: [condition, ...]} | {not: condition}
               | {fact: NAME, OP: VALUE}      OP: eq ne gt ge lt le between in
               | {is_true: NAME}              a boolean fact is true
               | {icd10: {codes: [...], prefixes: [...], ranges: ["I60-I64", ...]}}
               | {repeat_visits: {min_earlier: N}}

Missing values make a leaf *unknown* (three-valued, Kleene logic): ``all`` is false if any part
is false, ``any`` is true if any part is true, ``not`` of unknown stays unknown, and a rule fires
only when its condition is true. So a leaf that needs a missing value never makes a rule fire,
not even under ``not``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from operator import attrgetter
from typing import Any

from referral_service.rules.facts import (
    ACVPU,
    DISCHARGE_DISPOSITIONS,
    ENCOUNTER_CLASSES,
    FACILITY_LEVELS,
    SEXES,
    Facts,
    expand_icd10_range,
    is_icd10_code,
    is_icd10_prefix,
    normalize_icd10,
    parse_icd10_range,
)
from referral_service.rules.news2 import News2Result
from referral_service.rules.source import Problems, check_keys, describe, is_number

# True, False, or None when a value the condition needs is missing.
Condition = Callable[[Facts, News2Result], bool | None]


@dataclass(frozen=True, slots=True)
class FactSpec:
    """A fact rules may name: where it is read from and what values it takes."""

    kind: str  # 'number', 'bool' or 'enum'
    source: str  # 'facts' (a Facts field) or 'news2' (a News2Result field)
    attribute: str
    values: frozenset[str] = frozenset()


FACTS: Mapping[str, FactSpec] = {
    "age_years": FactSpec("number", "facts", "age_years"),
    "age_months": FactSpec("number", "facts", "age_months"),
    "sex": FactSpec("enum", "facts", "sex", SEXES),
    "pregnant": FactSpec("bool", "facts", "pregnant"),
    "facility_level": FactSpec("enum", "facts", "facility_level", frozenset(FACILITY_LEVELS)),
    "respiration_rate": FactSpec("number", "facts", "respiration_rate"),
    "spo2": FactSpec("number", "facts", "spo2"),
    "supplemental_oxygen": FactSpec("bool", "facts", "supplemental_oxygen"),
    "systolic_bp": FactSpec("number", "facts", "systolic_bp"),
    "diastolic_bp": FactSpec("number", "facts", "diastolic_bp"),
    "pulse": FactSpec("number", "facts", "pulse"),
    "consciousness": FactSpec("enum", "facts", "consciousness", frozenset(ACVPU)),
    "temperature": FactSpec("number", "facts", "temperature"),
    "encounter_class": FactSpec("enum", "facts", "encounter_class", ENCOUNTER_CLASSES),
    "discharge_disposition": FactSpec("enum", "facts", "discharge_disposition", DISCHARGE_DISPOSITIONS),
    "news2_total": FactSpec("number", "news2", "total"),
    "news2_max_single": FactSpec("number", "news2", "max_single"),
}

_COMPARISONS: Mapping[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}
_OPERATORS_BY_KIND: Mapping[str, tuple[str, ...]] = {
    "number": ("eq", "ne", "gt", "ge", "lt", "le", "between", "in"),
    "bool": ("eq", "ne"),
    "enum": ("eq", "ne", "in"),
}
_COMBINATORS = ("all", "any", "not")
_SPECIAL_LEAVES = ("is_true", "icd10", "repeat_visits")
ALL_OPERATORS = (*_COMBINATORS, *_SPECIAL_LEAVES, "fact", *_OPERATORS_BY_KIND["number"])


class _Compiler:
    """Compiles one rule's condition, reporting problems against that rule."""

    def __init__(self, problems: Problems, rule_id: str | None) -> None:
        """Report into ``problems`` under ``rule_id``."""
        self.problems = problems
        self.rule_id = rule_id

    def fail(self, path: str, message: str) -> None:
        """Record one problem at ``path`` (e.g. ``when.all[1].ge``)."""
        self.problems.add(message, rule=self.rule_id, field=path)

    def compile(self, raw: Any, path: str) -> Condition | None:
        """Compile one condition node; None when it is invalid (problems recorded)."""
        if not isinstance(raw, dict) or not raw:
            self.fail(path, f"expected a condition (a mapping), got {describe(raw)}")
            return None
        if "fact" in raw:
            return self._fact_leaf(raw, path)
        if len(raw) != 1:
            self.fail(path, f"expected exactly one operator, got {sorted(map(str, raw))}")
            return None
        ((name, argument),) = raw.items()
        where = f"{path}.{name}"
        if name in ("all", "any"):
            return self._combine(str(name), argument, where)
        if name == "not":
            inner = self.compile(argument, where)
            return None if inner is None else _negate(inner)
        if name == "is_true":
            return self._is_true(argument, where)
        if name == "icd10":
            return self._icd10(argument, where)
        if name == "repeat_visits":
            return self._repeat_visits(argument, where)
        self.fail(where, f"unknown operator {name!r}; expected one of {list(ALL_OPERATORS)}")
        return None

    def _combine(self, name: str, argument: Any, path: str) -> Condition | None:
        if not isinstance(argument, list) or not argument:
            self.fail(path, f"expected a non-empty list of conditions, got {describe(argument)}")
            return None
        parts = [self.compile(item, f"{path}[{index}]") for index, item in enumerate(argument)]
        compiled = [part for part in parts if part is not None]
        if len(compiled) != len(parts):
            return None
        if len(compiled) == 1:
            return compiled[0]
        return _all(tuple(compiled)) if name == "all" else _any(tuple(compiled))

    def _fact(self, name: Any, path: str) -> FactSpec | None:
        spec = FACTS.get(name) if isinstance(name, str) else None
        if spec is None:
            self.fail(path, f"unknown fact {name!r}; expected one of {sorted(FACTS)}")
        return spec

    def _fact_leaf(self, raw: dict[Any, Any], path: str) -> Condition | None:
        spec = self._fact(raw["fact"], f"{path}.fact")
        operators = [key for key in raw if key != "fact"]
        if len(operators) != 1:
            self.fail(path, f"a fact leaf needs exactly one operator, got {operators}")
            return None
        op = operators[0]
        where = f"{path}.{op}"
        if op not in _OPERATORS_BY_KIND["number"]:
            self.fail(
                where,
                f"unknown operator {op!r}; expected one of {list(_OPERATORS_BY_KIND['number'])}",
            )
            return None
        if spec is None:
            return None
        if op not in _OPERATORS_BY_KIND[spec.kind]:
            self.fail(
                where,
                f"operator {op!r} does not apply to {spec.kind} fact {raw['fact']!r}; "
                f"expected one of {list(_OPERATORS_BY_KIND[spec.kind])}",
            )
            return None
        value = raw[op]
        if op == "between":
            if not (isinstance(value, list) and len(value) == 2 and all(map(is_number, value))):
                shown = describe(value) if not isinstance(value, list) else list(map(str, value))
                self.fail(where, f"wrong value type: expected [low, high] numbers, got {shown}")
                return None
            low, high = value
            if low > high:
                self.fail(where, f"low {low} is above high {high}")
                return None
            return _between(spec, low, high)
        if op == "in":
            if not isinstance(value, list) or not value:
                self.fail(where, f"wrong value type: expected a non-empty list, got {describe(value)}")
                return None
            checks = [self._check_value(spec, v, f"{where}[{i}]") for i, v in enumerate(value)]
            if not all(checks):
                return None
            return _member(spec, frozenset(value))
        if not self._check_value(spec, value, where):
            return None
        return _compare(spec, _COMPARISONS[op], value)

    def _check_value(self, spec: FactSpec, value: Any, path: str) -> bool:
        if spec.kind == "number":
            ok = is_number(value)
            expected = "a number"
        elif spec.kind == "bool":
            ok = isinstance(value, bool)
            expected = "true or false"
        else:
            ok = isinstance(value, str)
            expected = f"one of {sorted(spec.values)}"
            if ok and value not in spec.values:
                self.fail(path, f"unknown value {value!r}; expected {expected}")
                return False
        if not ok:
            self.fail(path, f"wrong value type: expected {expected}, got {describe(value)}")
        return ok

    def _is_true(self, name: Any, path: str) -> Condition | None:
        spec = self._fact(name, path)
        if spec is None:
            return None
        if spec.kind != "bool":
            self.fail(path, f"is_true needs a boolean fact, {name!r} is a {spec.kind}")
            return None
        return _compare(spec, operator.is_, True)

    def _icd10(self, argument: Any, path: str) -> Condition | None:
        if not isinstance(argument, dict) or not argument:
            self.fail(path, f"expected a mapping of codes/prefixes/ranges, got {describe(argument)}")
            return None
        check_keys(
            argument,
            ("codes", "prefixes", "ranges"),
            self.problems,
            prefix=f"{path}.",
            rule=self.rule_id,
        )
        codes: set[str] = set()
        prefixes: set[str] = set()
        categories: set[str] = set()
        ok = True
        for key, noun, valid, what in (
            ("codes", "code", is_icd10_code, "an ICD-10 code such as 'I63.9'"),
            ("prefixes", "prefix", is_icd10_prefix, "an ICD-10 code prefix such as 'I63'"),
            ("ranges", "range", None, "a range such as 'I60-I64'"),
        ):
            items = argument.get(key, [])
            if not isinstance(items, list):
                self.fail(f"{path}.{key}", f"wrong value type: expected a list, got {describe(items)}")
                ok = False
                continue
            for index, item in enumerate(items):
                where = f"{path}.{key}[{index}]"
                if not isinstance(item, str):
                    self.fail(where, f"wrong value type: expected {what}, got {describe(item)}")
                    ok = False
                elif key == "ranges":
                    try:
                        low, high = parse_icd10_range(item)
                    except ValueError as exc:
                        self.fail(where, str(exc))
                        ok = False
                    else:
                        categories |= expand_icd10_range(low, high)
                elif valid is not None and not valid(item):
                    self.fail(where, f"malformed ICD-10 {noun} {item!r}: expected {what}")
                    ok = False
                elif key == "codes":
                    codes.add(normalize_icd10(item))
                else:
                    prefix = normalize_icd10(item)
                    # A 3-character prefix is a whole category: a set lookup, no startswith.
                    (categories if len(prefix) == 3 else prefixes).add(prefix)
        if ok and not (codes or prefixes or categories):
            self.fail(path, "give at least one code, prefix or range")
            ok = False
        if not ok:
            return None
        return _icd10_any(frozenset(codes), tuple(sorted(prefixes)), frozenset(categories))

    def _repeat_visits(self, argument: Any, path: str) -> Condition | None:
        if not isinstance(argument, dict):
            self.fail(path, f"expected {{min_earlier: N}}, got {describe(argument)}")
            return None
        check_keys(argument, ("min_earlier",), self.problems, prefix=f"{path}.", rule=self.rule_id)
        minimum = argument.get("min_earlier")
        if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
            self.fail(
                f"{path}.min_earlier",
                f"wrong value type: expected a positive integer, got {describe(minimum)}",
            )
            return None
        return _repeat_visits(minimum)


def compile_condition(
    raw: Any, problems: Problems, *, rule_id: str | None, path: str = "when"
) -> Condition | None:
    """Validate a condition and compile it; record problems and return None when invalid."""
    return _Compiler(problems, rule_id).compile(raw, path)


def _getter(spec: FactSpec) -> Callable[[Facts, News2Result], Any]:
    get = attrgetter(spec.attribute)
    if spec.source == "news2":
        return lambda facts, news2: get(news2)
    return lambda facts, news2: get(facts)


def _compare(spec: FactSpec, op: Callable[[Any, Any], bool], bound: Any) -> Condition:
    get = attrgetter(spec.attribute)
    if spec.source == "news2":
        # NEWS2 total and highest score always exist (partial when vitals are missing).
        def news2_leaf(facts: Facts, news2: News2Result) -> bool | None:
            return bool(op(get(news2), bound))

        return news2_leaf

    def leaf(facts: Facts, news2: News2Result) -> bool | None:
        value = get(facts)
        if value is None:
            return None
        return bool(op(value, bound))

    return leaf


def _between(spec: FactSpec, low: int | Decimal, high: int | Decimal) -> Condition:
    get = _getter(spec)

    def leaf(facts: Facts, news2: News2Result) -> bool | None:
        value = get(facts, news2)
        if value is None:
            return None
        return bool(low <= value <= high)

    return leaf


def _member(spec: FactSpec, values: frozenset[Any]) -> Condition:
    get = _getter(spec)

    def leaf(facts: Facts, news2: News2Result) -> bool | None:
        value = get(facts, news2)
        if value is None:
            return None
        return value in values

    return leaf


def _icd10_any(codes: frozenset[str], prefixes: tuple[str, ...], categories: frozenset[str]) -> Condition:
    def leaf(facts: Facts, news2: News2Result) -> bool | None:
        if categories and not categories.isdisjoint(facts.diagnosis_categories):
            return True
        if codes and not codes.isdisjoint(facts.diagnosis_normalized):
            return True
        if prefixes:
            return any(code.startswith(prefixes) for code in facts.diagnosis_normalized)
        return False

    return leaf


def _repeat_visits(minimum: int) -> Condition:
    def leaf(facts: Facts, news2: News2Result) -> bool | None:
        counts = facts.repeat_visit_counts
        if not counts:
            return False
        return any(counts.get(category, 0) >= minimum for category in facts.diagnosis_categories)

    return leaf


def _all(parts: tuple[Condition, ...]) -> Condition:
    def condition(facts: Facts, news2: News2Result) -> bool | None:
        unknown = False
        for part in parts:
            result = part(facts, news2)
            if result is False:
                return False
            if result is None:
                unknown = True
        return None if unknown else True

    return condition


def _any(parts: tuple[Condition, ...]) -> Condition:
    def condition(facts: Facts, news2: News2Result) -> bool | None:
        unknown = False
        for part in parts:
            result = part(facts, news2)
            if result is True:
                return True
            if result is None:
                unknown = True
        return None if unknown else False

    return condition


def _negate(inner: Condition) -> Condition:
    def condition(facts: Facts, news2: News2Result) -> bool | None:
        result = inner(facts, news2)
        return None if result is None else not result

    return condition
