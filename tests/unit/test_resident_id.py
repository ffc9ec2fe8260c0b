"""Resident identity number (居民身份证号码): validation, parts and generation."""

from __future__ import annotations

import random
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from referral_service.domain import resident_id
from referral_service.domain.resident_id import (
    birth_date_of,
    gender_of,
    generate,
    is_valid,
    normalise,
    validate,
)

# The example of GB 11643-1999: Beijing Chaoyang, born 1949-12-31, female, check character X.
EXAMPLE_X = "11010519491231002X"
EXAMPLE_MALE = "440524188001010014"


def codes_of(value: str, **kwargs) -> list[str]:
    return [problem.code for problem in validate(value, **kwargs)]


def test_known_example_with_x_check_character():
    assert validate(EXAMPLE_X) == []
    assert validate(EXAMPLE_X, birth_date=date(1949, 12, 31), gender="female") == []
    assert birth_date_of(EXAMPLE_X) == date(1949, 12, 31)
    assert gender_of(EXAMPLE_X) == "female"


def test_known_male_example():
    assert is_valid(EXAMPLE_MALE, date(1880, 1, 1), "male")
    assert gender_of(EXAMPLE_MALE) == "male"


def test_lower_case_x_is_accepted_and_normalised():
    assert validate("11010519491231002x") == []
    assert normalise(" 11010519491231002x\n") == EXAMPLE_X
    assert birth_date_of("11010519491231002x") == date(1949, 12, 31)


@pytest.mark.parametrize("value", ["", "1101051949123100", "1101051949123100201", "1" * 17])
def test_wrong_length(value):
    assert codes_of(value) == ["length"]
    assert "18 characters" in validate(value)[0].en


def test_length_and_characters_are_both_reported():
    assert codes_of("1101051949123A") == ["length", "characters"]


@pytest.mark.parametrize(
    "value",
    ["1101051949123100XX", "11010519491231002Y", "11010519491231 02X", "１１０１05194912310021"],
)
def test_bad_characters(value):
    assert "characters" in codes_of(value)


def test_not_a_string():
    assert codes_of(110105194912310020) == ["type"]  # type: ignore[arg-type]


@pytest.mark.parametrize("last", ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"])
def test_wrong_check_digit(last):
    problems = validate(EXAMPLE_X[:17] + last)
    assert [p.code for p in problems] == ["check-digit"]
    assert "give X" in problems[0].en


def test_every_single_digit_error_is_caught():
    for position in range(17):
        digit = EXAMPLE_X[position]
        for other in "0123456789":
            if other != digit:
                changed = EXAMPLE_X[:position] + other + EXAMPLE_X[position + 1 :]
                assert "check-digit" in codes_of(changed)


@pytest.mark.parametrize("digits", ["19990230", "19991301", "20230229", "19990000", "00001231"])
def test_impossible_date(digits):
    body = "110105" + digits + "002"
    value = body + resident_id.check_char(body)
    assert codes_of(value) == ["date"]
    assert digits in validate(value)[0].en


def test_leap_day_is_a_real_date():
    body = "110105" + "20000229" + "002"
    assert is_valid(body + resident_id.check_char(body), date(2000, 2, 29))


def test_birth_date_mismatch():
    problems = validate(EXAMPLE_X, birth_date=date(1949, 12, 30))
    assert [p.code for p in problems] == ["birth-date-mismatch"]
    assert "1949-12-31" in problems[0].en
    assert "1949-12-30" in problems[0].en


def test_sex_mismatch():
    problems = validate(EXAMPLE_X, gender="male")
    assert [p.code for p in problems] == ["gender-mismatch"]
    assert "female" in problems[0].en
    assert "男" in problems[0].zh


@pytest.mark.parametrize("gender", ["other", "unknown", None])
def test_other_genders_skip_the_sex_check(gender):
    assert validate(EXAMPLE_X, gender=gender) == []


def test_legacy_fifteen_digit_number_is_refused_with_its_own_message():
    problems = validate("110105491231002")
    assert [p.code for p in problems] == ["legacy"]
    assert "15-digit" in problems[0].en
    assert "15位" in problems[0].zh


def test_all_problems_at_once():
    body = "110105" + "19990230" + "002"
    wrong_check = "0" if resident_id.check_char(body) != "0" else "1"
    value = body + wrong_check
    assert codes_of(value, gender="male") == ["check-digit", "date", "gender-mismatch"]


def test_messages_in_both_languages():
    problems = validate("110105491231002")
    assert resident_id.messages(problems) == [problems[0].en]
    assert resident_id.messages(problems, "zh-CN") == [problems[0].zh]
    assert str(problems[0]) == problems[0].en


def test_parts_of_an_invalid_number_raise():
    with pytest.raises(ValueError, match="check character"):
        birth_date_of(EXAMPLE_X[:17] + "1")
    with pytest.raises(ValueError, match="15-digit"):
        gender_of("110105491231002")


def test_generate_reproduces_the_standard_example():
    assert generate("110105", date(1949, 12, 31), "female", 1) == EXAMPLE_X
    assert generate("440524", date(1880, 1, 1), "male", 0) == EXAMPLE_MALE


def test_many_generated_numbers_are_valid_and_round_trip():
    rng = random.Random(20240301)
    seen = set()
    for _ in range(20_000):
        region = f"{rng.randrange(110000, 660000):06d}"
        born = date(1920, 1, 1) + timedelta(days=rng.randrange(0, 105 * 365))
        gender = rng.choice(["male", "female"])
        sequence = rng.randrange(0, resident_id.MAX_SEQUENCE + 1)
        number = generate(region, born, gender, sequence)
        assert validate(number, birth_date=born, gender=gender) == []
        assert birth_date_of(number) == born
        assert gender_of(number) == gender
        assert number[:6] == region
        seen.add(number)
    assert len(seen) > 19_000


@given(
    region=st.from_regex(r"\A[0-9]{6}\Z"),
    born=st.dates(min_value=date(1000, 1, 1), max_value=date(9999, 12, 31)),
    gender=st.sampled_from(["male", "female"]),
    sequence=st.integers(min_value=0, max_value=resident_id.MAX_SEQUENCE),
)
def test_generated_numbers_round_trip(region, born, gender, sequence):
    number = generate(region, born, gender, sequence)
    assert len(number) == 18
    assert is_valid(number, born, gender)
    assert (birth_date_of(number), gender_of(number)) == (born, gender)


def test_sequences_of_one_day_are_distinct():
    born = date(1990, 5, 17)
    numbers = {
        generate("532301", born, gender, sequence)
        for gender in ("male", "female")
        for sequence in range(resident_id.MAX_SEQUENCE + 1)
    }
    assert len(numbers) == 1000


@pytest.mark.parametrize(
    ("region", "gender", "sequence", "message"),
    [
        ("53230", "male", 0, "region_code"),
        ("53230A", "male", 0, "region_code"),
        ("532301", "other", 0, "gender"),
        ("532301", "male", 500, "sequence"),
        ("532301", "female", -1, "sequence"),
    ],
)
def test_generate_refuses_bad_arguments(region, gender, sequence, message):
    with pytest.raises(ValueError, match=message):
        generate(region, date(1990, 1, 1), gender, sequence)
