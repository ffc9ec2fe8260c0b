"""Exact decimals of the quantity index: SQLite's sortable text key, the bounds a search compares
stored values with, and what a Quantity yields to the index."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from referral_service.domain.base import MAX_KEY_DIGITS, decimal_from_key, decimal_key
from referral_service.fhir.resources import RESOURCES
from referral_service.fhir.search_params import extract, quantities_of, quantity_bounds, quantity_number

decimals = st.decimals(allow_nan=False, allow_infinity=False, min_value=Decimal("-1e30"),
                       max_value=Decimal("1e30"), places=None).filter(
    lambda d: len(d.as_tuple().digits) <= MAX_KEY_DIGITS)
# Values that differ only far beyond a binary float's precision, and ends of the key's range.
EDGES = [Decimal(v) for v in ("0", "-0", "0.3", "0.30000000000000000001", "0.29999999999999999999", "-0.3",
                              "-0.30000000000000000001", "5.4", "5.40", "5.35", "5.45", "1e-499", "-1e-499",
                              "9.99e499", "-9.99e499", "100", "1e2", "99.999", "-100", "-99.999", "12", "123",
                              "-12", "-123", "1.2", "1.19", "-1.2", "-1.19")]


@given(decimals, decimals)
def test_keys_sort_as_the_numbers_do(a: Decimal, b: Decimal) -> None:
    ka, kb = decimal_key(a), decimal_key(b)
    assert (ka < kb) == (a < b)
    assert (ka == kb) == (a == b)


def test_keys_of_edge_values_sort_and_round_trip() -> None:
    for a in EDGES:
        assert decimal_from_key(decimal_key(a)) == a
        for b in EDGES:
            assert (decimal_key(a) < decimal_key(b)) == (a < b), (a, b)
            assert (decimal_key(a) == decimal_key(b)) == (a == b), (a, b)


@pytest.mark.parametrize("value", [Decimal("1e500"), Decimal("-1e-500"), Decimal("NaN"), Decimal("Infinity"),
                                   Decimal("1." + "1" * 80)])
def test_numbers_beyond_the_key_are_refused(value: Decimal) -> None:
    with pytest.raises(ValueError, match="number"):
        decimal_key(value)


@pytest.mark.parametrize(
    ("prefix", "number", "bounds"),
    [
        ("eq", "5.4", ("5.35", "5.45")),
        ("ne", "5.40", ("5.395", "5.405")),
        ("eq", "100", ("99.5", "100.5")),
        ("eq", "1e2", ("50", "150")),
        ("eq", "-1", ("-1.5", "-0.5")),
        ("sa", "5.4", ("5.45",)),
        ("eb", "5.4", ("5.35",)),
        ("gt", "5.4", ("5.4",)),
        ("le", "0.30000000000000000001", ("0.30000000000000000001",)),
        ("ap", "100", ("90", "110")),
        ("ap", "-100", ("-110", "-90")),
        ("ap", "0", ("-0.5", "0.5")),
        ("ap", "0.1", ("0.05", "0.15")),  # 10 % is narrower than the precision range
        ("eq", "123456789012345678901234567890.5", ("123456789012345678901234567890.45",
                                                    "123456789012345678901234567890.55")),
    ],
)
def test_bounds_are_exact(prefix: str, number: str, bounds: tuple[str, ...]) -> None:
    assert quantity_bounds(prefix, Decimal(number)) == tuple(Decimal(b) for b in bounds)


def test_a_quantity_yields_its_unit_and_exact_value() -> None:
    assert list(quantities_of({"value": Decimal("5.40"), "unit": "mmol/L", "system": "http://unitsofmeasure.org",
                               "code": "mmol/L"})) == [("http://unitsofmeasure.org", "mmol/L", "mmol/L",
                                                        Decimal("5.4"))]
    assert list(quantities_of({"value": 38.6, "unit": "Cel"})) == [(None, None, "Cel", Decimal("38.6"))]
    assert list(quantities_of({"unit": "Cel"})) == []  # no value, nothing to compare
    assert list(quantities_of({"value": True})) == []
    assert list(quantities_of({"value": "5"})) == []
    assert quantity_number(Decimal("1e300")) is None  # beyond what is indexed
    assert quantity_number(Decimal("1." + "1" * 70)) is None  # more digits than kept
    assert quantity_number(Decimal("1" + "0" * 70 + ".0")) == Decimal("1e70")
    assert quantity_number(Decimal("100." + "0" * 70)) == 100  # trailing zeros are no digits kept


def test_observation_values_and_components_are_extracted() -> None:
    panel = {
        "resourceType": "Observation",
        "valueQuantity": {"value": 1, "code": "a"},
        "component": [{"valueQuantity": {"value": 2, "code": "b"}},
                      {"valueQuantity": {"value": Decimal("2.0"), "code": "b"}}],  # one value, twice
    }
    rows = extract(panel, list(RESOURCES["Observation"].params)).quantities
    assert rows == [
        ("value-quantity", None, "a", None, Decimal(1)),
        ("component-value-quantity", None, "b", None, Decimal(2)),
        ("combo-value-quantity", None, "a", None, Decimal(1)),
        ("combo-value-quantity", None, "b", None, Decimal(2)),
    ]
