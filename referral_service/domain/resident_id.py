"""Resident identity number (居民身份证号码): validation and generation, per GB 11643-1999."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Literal

Sex = Literal["male", "female"]

LENGTH = 18
LEGACY_LENGTH = 15
WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
# ISO 7064 MOD 11-2: the check character for (sum of digit * weight) % 11.
CHECK_CHARS = "10X98765432"
MAX_SEQUENCE = 499  # order codes 000-999, two per sequence (one per sex)

_DIGITS = frozenset("0123456789")
_SEX_ZH = {"male": "男", "female": "女"}


@dataclass(frozen=True, slots=True)
class IdProblem:
    """One problem with a resident identity number, with an English and a Chinese message."""

    code: str
    en: str
    zh: str

    def message(self, language: str = "en") -> str:
        """Return the message in `language` ('zh...' for Chinese, anything else English)."""
        return self.zh if language.lower().startswith("zh") else self.en

    def __str__(self) -> str:
        """Return the English message."""
        return self.en


def messages(problems: Iterable[IdProblem], language: str = "en") -> list[str]:
    """Return the messages of `problems` in `language`."""
    return [problem.message(language) for problem in problems]


def normalise(value: str) -> str:
    """Strip surrounding white space and store the check character x upper-case."""
    return value.strip().upper()


def check_char(first17: str) -> str:
    """Return the ISO 7064 MOD 11-2 check character of 17 digits."""
    total = sum(int(digit) * weight for digit, weight in zip(first17, WEIGHTS, strict=True))
    return CHECK_CHARS[total % 11]


def _parse_date(digits: str) -> date | None:
    """Return the date of YYYYMMDD digits, or None when it is not a real date."""
    if len(digits) != 8 or not set(digits) <= _DIGITS:
        return None
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def _sex_of_digit(digit: str) -> Sex:
    """Return the sex that the 17th character denotes: odd male, even female."""
    return "male" if int(digit) % 2 else "female"


def validate(
    value: str, birth_date: date | None = None, gender: str | None = None
) -> list[IdProblem]:
    """Return every problem with `value`, checked against `birth_date` and `gender` when given."""
    if not isinstance(value, str):
        return [
            IdProblem(
                "type",
                "The resident identity number must be a string.",
                "居民身份证号码必须是字符串。",
            )
        ]
    number = normalise(value)
    if len(number) == LEGACY_LENGTH and set(number) <= _DIGITS:
        return [
            IdProblem(
                "legacy",
                "The 15-digit legacy resident identity number is not accepted; "
                "give the 18-character number.",
                "不接受15位旧版身份证号码，请填写18位号码。",
            )
        ]
    problems: list[IdProblem] = []
    if len(number) != LENGTH:
        problems.append(
            IdProblem(
                "length",
                f"The resident identity number must have 18 characters, not {len(number)}.",
                f"居民身份证号码应为18位，实际为{len(number)}位。",
            )
        )
    if number and not (
        set(number[:-1]) <= _DIGITS and (number[-1] in _DIGITS or number[-1] == "X")
    ):
        problems.append(
            IdProblem(
                "characters",
                "The resident identity number must be 17 digits followed by a digit or X.",
                "居民身份证号码应为17位数字加1位校验码（数字或X）。",
            )
        )
    if problems:
        return problems

    body, last = number[:17], number[17]
    expected = check_char(body)
    if last != expected:
        problems.append(
            IdProblem(
                "check-digit",
                f"The check character is {last} but the first 17 digits give {expected} "
                "(ISO 7064 MOD 11-2).",
                f"校验码错误：应为{expected}，实际为{last}。",
            )
        )
    date_digits = number[6:14]
    encoded = _parse_date(date_digits)
    if encoded is None:
        problems.append(
            IdProblem(
                "date",
                f"Characters 7-14 ({date_digits}) are not a real date (YYYYMMDD).",
                f"第7-14位（{date_digits}）不是有效的出生日期（年月日）。",
            )
        )
    elif birth_date is not None and encoded != birth_date:
        problems.append(
            IdProblem(
                "birth-date-mismatch",
                f"The birth date in the resident identity number ({encoded.isoformat()}) "
                f"differs from birthDate ({birth_date.isoformat()}).",
                f"身份证号码中的出生日期（{encoded.isoformat()}）"
                f"与出生日期（{birth_date.isoformat()}）不一致。",
            )
        )
    sex = _sex_of_digit(number[16])
    if gender is not None and gender in _SEX_ZH and gender != sex:
        problems.append(
            IdProblem(
                "gender-mismatch",
                f"Character 17 of the resident identity number ({number[16]}) denotes {sex}, "
                f"but gender is {gender}.",
                f"身份证号码第17位（{number[16]}）表示{_SEX_ZH[sex]}性，"
                f"与性别（{_SEX_ZH[gender]}）不一致。",
            )
        )
    return problems


def is_valid(value: str, birth_date: date | None = None, gender: str | None = None) -> bool:
    """Return True when `value` has no problem (see `validate`)."""
    return not validate(value, birth_date, gender)


def _require_valid(value: str) -> str:
    """Return the normalised `value`, or raise ValueError naming its first problem."""
    problems = validate(value)
    if problems:
        raise ValueError(problems[0].en)
    return normalise(value)


def birth_date_of(value: str) -> date:
    """Return the birth date encoded in a valid number; raise ValueError when it is invalid."""
    number = _require_valid(value)
    return date(int(number[6:10]), int(number[10:12]), int(number[12:14]))


def gender_of(value: str) -> Sex:
    """Return 'male' or 'female' from a valid number; raise ValueError when it is invalid."""
    return _sex_of_digit(_require_valid(value)[16])


def _weighted(digits: str, first_weight: int) -> int:
    """Return the weighted sum of `digits` placed from position `first_weight`."""
    return sum(
        int(digit) * weight
        for digit, weight in zip(digits, WEIGHTS[first_weight:], strict=False)
    )


_REGION_PARTS: dict[str, int] = {}
_DATE_PARTS: dict[date, tuple[str, int]] = {}
_DATE_CACHE_LIMIT = 100_000


def _region_sum(region_code: str) -> int:
    """Return the weighted sum of a region code, checking it on first use."""
    if len(region_code) != 6 or not set(region_code) <= _DIGITS:
        raise ValueError(f"region_code must be 6 digits, got {region_code!r}")
    _REGION_PARTS[region_code] = total = _weighted(region_code, 0)
    return total


def _date_part(birth_date: date) -> tuple[str, int]:
    """Return YYYYMMDD of a date and its weighted sum."""
    digits = f"{birth_date.year:04d}{birth_date.month:02d}{birth_date.day:02d}"
    part = (digits, _weighted(digits, 6))
    if len(_DATE_PARTS) < _DATE_CACHE_LIMIT:
        _DATE_PARTS[birth_date] = part
    return part


# Order code (characters 15-17) for every value 000-999 with its weighted sum.
_ORDER_PARTS: tuple[tuple[str, int], ...] = tuple(
    (f"{code:03d}", _weighted(f"{code:03d}", 14)) for code in range(1000)
)
_PARITY = {"male": 1, "female": 0}


def generate(region_code: str, birth_date: date, gender: str, sequence: int) -> str:
    """Return a valid number; `sequence` 0-499 picks order code 2*sequence (+1 for male)."""
    # Called about a million times by the demo-data generator: the parts' weighted sums are
    # computed once per region and date and looked up in dicts.
    parity = _PARITY.get(gender)
    if parity is None:
        raise ValueError(f"gender must be 'male' or 'female', got {gender!r}")
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise ValueError(f"sequence must be 0-{MAX_SEQUENCE}, got {sequence}")
    region_sum = _REGION_PARTS.get(region_code)
    if region_sum is None:
        region_sum = _region_sum(region_code)
    date_part = _DATE_PARTS.get(birth_date) if type(birth_date) is date else None
    if date_part is None:
        date_part = _date_part(birth_date)
    order, order_sum = _ORDER_PARTS[2 * sequence + parity]
    check = CHECK_CHARS[(region_sum + date_part[1] + order_sum) % 11]
    return f"{region_code}{date_part[0]}{order}{check}"
