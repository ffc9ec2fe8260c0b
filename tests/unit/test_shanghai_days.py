"""Instants read as days: the day they fall on in Asia/Shanghai, not the first ten characters."""

from __future__ import annotations

from datetime import date

import pytest

from referral_service.fhir.mappers.common import fhir_date
from referral_service.fhir.search_params import shanghai_date
from referral_service.services import payments


@pytest.mark.parametrize(
    ("text", "day"),
    [
        ("2026-11-12T18:00:00Z", date(2026, 11, 13)),  # 02:00 on the 13th in Asia/Shanghai
        ("2026-11-12T15:59:59.999Z", date(2026, 11, 12)),
        ("2026-11-12T16:00:00Z", date(2026, 11, 13)),
        ("2026-11-13T07:00:00-05:00", date(2026, 11, 13)),
        ("2026-11-13T20:00:00-05:00", date(2026, 11, 14)),
        ("2026-11-12T01:00:00+08:00", date(2026, 11, 12)),
        ("2026-11-12T23:30:00", date(2026, 11, 12)),  # zone-less: Asia/Shanghai already
        ("2026-11-12", date(2026, 11, 12)),  # date-only: that day
        ("0001-01-01", date(1, 1, 1)),  # the ends of the calendar are not clamped
        ("9999-12-31T23:00:00-05:00", date(9999, 12, 31)),
    ],
)
def test_the_day_of_an_instant_in_asia_shanghai(text: str, day: date) -> None:
    assert shanghai_date(text) == day
    assert fhir_date(text) == day
    assert payments._date(text) == day


@pytest.mark.parametrize("text", ["2026-11", "2026", "tomorrow", "2026-02-30"])
def test_no_day_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a FHIR date|day is out of range"):
        shanghai_date(text)
    assert payments._date(text) is None
