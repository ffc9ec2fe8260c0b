"""Facts, age in completed years and months, and ICD-10 helpers."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from referral_service.rules.facts import (
    Facts,
    age_on,
    expand_icd10_range,
    icd10_category,
    icd10_in_range,
    icd10_matches_prefix,
    is_icd10_code,
    is_icd10_prefix,
    parse_icd10_range,
)


@pytest.mark.parametrize(
    ("born", "on", "expected"),
    [
        (date(2024, 5, 10), date(2024, 5, 10), (0, 0)),
        # Month-end births: the month completes on the last day when the day does not exist.
        (date(2024, 1, 31), date(2024, 2, 28), (0, 0)),
        (date(2024, 1, 31), date(2024, 2, 29), (0, 1)),
        (date(2023, 1, 31), date(2023, 2, 27), (0, 0)),
        (date(2023, 1, 31), date(2023, 2, 28), (0, 1)),
        (date(2024, 1, 30), date(2024, 2, 29), (0, 1)),
        (date(2024, 1, 31), date(2024, 3, 30), (0, 1)),
        (date(2024, 1, 31), date(2024, 3, 31), (0, 2)),
        (date(2024, 5, 31), date(2024, 6, 29), (0, 0)),
        (date(2024, 5, 31), date(2024, 6, 30), (0, 1)),
        (date(2024, 3, 30), date(2024, 4, 29), (0, 0)),
        (date(2024, 3, 30), date(2024, 4, 30), (0, 1)),
        # The 3-month threshold of the infant-fever rule.
        (date(2024, 3, 15), date(2024, 6, 14), (0, 2)),
        (date(2024, 3, 15), date(2024, 6, 15), (0, 3)),
        # Leap-day births complete a year on 28 February in common years.
        (date(2020, 2, 29), date(2021, 2, 27), (0, 11)),
        (date(2020, 2, 29), date(2021, 2, 28), (1, 12)),
        (date(2020, 2, 29), date(2024, 2, 28), (3, 47)),
        (date(2020, 2, 29), date(2024, 2, 29), (4, 48)),
        # Across a year end.
        (date(2023, 12, 31), date(2024, 1, 30), (0, 0)),
        (date(2023, 12, 31), date(2024, 1, 31), (0, 1)),
        # The 80-year threshold of the elderly-watch rule.
        (date(1944, 5, 10), date(2024, 5, 9), (79, 959)),
        (date(1944, 5, 10), date(2024, 5, 10), (80, 960)),
    ],
)
def test_age_on(born: date, on: date, expected: tuple[int, int]) -> None:
    assert age_on(born, on) == expected


def test_age_on_before_birth_is_an_error() -> None:
    with pytest.raises(ValueError, match="before birth date"):
        age_on(date(2024, 5, 10), date(2024, 5, 9))


@settings(database=None, deadline=None)
@given(
    born=st.dates(min_value=date(1900, 1, 1), max_value=date(2030, 12, 31)),
    days=st.integers(min_value=0, max_value=40_000),
)
def test_age_grows_by_at_most_one_month_a_day(born: date, days: int) -> None:
    on = born + timedelta(days=days)
    years, months = age_on(born, on)
    next_years, next_months = age_on(born, on + timedelta(days=1))
    assert years == months // 12
    assert next_months - months in (0, 1)
    assert next_years - years in (0, 1)


@pytest.mark.parametrize(
    ("code", "category"),
    [("I63.9", "I63"), ("i63.9", "I63"), ("I639", "I63"), (" I63 ", "I63"), ("C97", "C97")],
)
def test_icd10_category(code: str, category: str) -> None:
    assert icd10_category(code) == category


@pytest.mark.parametrize("code", ["", "63", "II3", "I6", "163.9"])
def test_icd10_category_refuses_malformed_codes(code: str) -> None:
    with pytest.raises(ValueError, match="not an ICD-10 code"):
        icd10_category(code)


@pytest.mark.parametrize(
    ("code", "prefix", "expected"),
    [
        ("I63.9", "I63", True),
        ("I63", "I63", True),
        ("i63.9", "I63.9", True),
        ("I63.9", "I6", True),
        ("I64", "I63", False),
        ("I63", "I63.9", False),
    ],
)
def test_icd10_prefix_matching(code: str, prefix: str, expected: bool) -> None:
    assert icd10_matches_prefix(code, prefix) is expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [("I59", False), ("I60", True), ("I62.9", True), ("I64.9", True), ("I65", False)],
)
def test_icd10_inclusive_range(code: str, expected: bool) -> None:
    assert icd10_in_range(code, "I60", "I64") is expected


def test_parse_icd10_range_ignores_case_and_spaces() -> None:
    assert parse_icd10_range(" i60 - I64 ") == ("I60", "I64")


@pytest.mark.parametrize("text", ["I64-I60", "I6-I64", "I60", "I60-I64-I66", "I60..I64", "60-64"])
def test_parse_icd10_range_refuses_malformed_ranges(text: str) -> None:
    with pytest.raises(ValueError, match="malformed ICD-10 range"):
        parse_icd10_range(text)


def test_expand_icd10_range_crosses_letters() -> None:
    expanded = expand_icd10_range("A98", "B01")
    assert expanded == frozenset({"A98", "A99", "B00", "B01"})
    assert len(expand_icd10_range("C00", "C97")) == 98


@pytest.mark.parametrize(
    ("text", "code_ok", "prefix_ok"),
    [
        ("I63.9", True, True),
        ("I63", True, True),
        ("I6", False, True),
        ("I", False, False),
        ("63", False, False),
        ("I63.9XYZA", False, False),
    ],
)
def test_icd10_shapes(text: str, code_ok: bool, prefix_ok: bool) -> None:
    assert is_icd10_code(text) is code_ok
    assert is_icd10_prefix(text) is prefix_ok


def test_facts_normalise_values() -> None:
    facts = Facts(
        age_years=1,
        age_months=14,
        consciousness="c",
        temperature=38.05,  # type: ignore[arg-type]
        spo2="91.5",  # type: ignore[arg-type]
        diagnosis_codes=("j06.9", "I10", "bad"),
        repeat_visit_counts={"j06": 2},
    )
    assert facts.consciousness == "C"
    assert facts.temperature == Decimal("38.05")
    assert facts.spo2 == Decimal("91.5")
    assert facts.diagnosis_normalized == ("J069", "I10", "BAD")
    # A malformed code has no category rather than failing the whole visit.
    assert facts.diagnosis_categories == frozenset({"J06", "I10"})
    assert dict(facts.repeat_visit_counts) == {"J06": 2}


def test_facts_are_immutable() -> None:
    facts = Facts(age_years=1, age_months=12)
    with pytest.raises(AttributeError):
        facts.age_years = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sex": "M"}, "sex must be one of"),
        ({"facility_level": "clinic"}, "facility_level must be one of"),
        ({"encounter_class": "EMER"}, "encounter_class must be one of"),
        ({"consciousness": "X"}, "consciousness must be one of"),
        ({"temperature": True}, "temperature must be a number"),
        ({"pulse": "fast"}, "pulse is not a number"),
        ({"spo2": Decimal("NaN")}, "spo2 must be finite"),
        ({"age_months": -1}, "age_months must be a non-negative int"),
        ({"pregnant": "yes"}, "pregnant must be a bool"),
        ({"supplemental_oxygen": 1}, "supplemental_oxygen must be a bool"),
        ({"diagnosis_codes": "I63"}, "diagnosis_codes must be a tuple of str"),
        ({"repeat_visit_counts": {"63": 1}}, "is not an ICD-10 category"),
        ({"repeat_visit_counts": {"J06": -1}}, "must be a non-negative int"),
        ({"repeat_visit_counts": {"J06": 1, "j06": 2}}, "repeats category J06"),
    ],
)
def test_facts_refuse_bad_values(overrides: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"age_years": 30, "age_months": 360}
    values.update(overrides)
    with pytest.raises(ValueError, match=message):
        Facts(**values)  # type: ignore[arg-type]


def test_facts_report_every_bad_value_at_once() -> None:
    with pytest.raises(ValueError, match="sex must be one of") as caught:
        Facts(age_years=30, age_months=360, sex="M", facility_level="clinic")
    assert "facility_level must be one of" in str(caught.value)
