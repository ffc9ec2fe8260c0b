"""Facts about one visit that referral rules read, plus pure age and ICD-10 helpers."""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from types import MappingProxyType

SEXES = frozenset({"male", "female", "other", "unknown"})
FACILITY_LEVELS = ("village", "township", "county", "city", "province")
ENCOUNTER_CLASSES = frozenset({"AMB", "IMP"})
ACVPU = ("A", "C", "V", "P", "U")
# http://terminology.hl7.org/CodeSystem/discharge-disposition
DISCHARGE_DISPOSITIONS = frozenset(
    {"home", "alt-home", "other-hcf", "hosp", "long", "aadvice", "exp", "psy", "rehab", "snf"} | {"oth"}
)

_CATEGORY_RE = re.compile(r"[A-Z][0-9]{2}")
_CODE_RE = re.compile(r"[A-Z][0-9]{2}[0-9A-Z]{0,4}")
_PREFIX_RE = re.compile(r"[A-Z][0-9](?:[0-9][0-9A-Z]{0,4})?")
_RANGE_RE = re.compile(r"([A-Z][0-9]{2})-([A-Z][0-9]{2})")


def normalize_icd10(code: str) -> str:
    """Return an ICD-10 code upper-cased without dots or white space (``i63.9`` -> ``I639``)."""
    return "".join(code.split()).replace(".", "").upper()


def icd10_category(code: str) -> str:
    """Return the 3-character category (letter and two digits) of an ICD-10 code."""
    normalized = normalize_icd10(code)
    category = normalized[:3]
    if not _CATEGORY_RE.fullmatch(category):
        raise ValueError(f"not an ICD-10 code: {code!r}")
    return category


def is_icd10_code(code: str) -> bool:
    """Tell whether ``code`` is a well-formed ICD-10 code (category plus up to 4 characters)."""
    return _CODE_RE.fullmatch(normalize_icd10(code)) is not None


def is_icd10_prefix(prefix: str) -> bool:
    """Tell whether ``prefix`` can start an ICD-10 code (``I6``, ``I63``, ``I63.9``)."""
    return _PREFIX_RE.fullmatch(normalize_icd10(prefix)) is not None


def icd10_matches_prefix(code: str, prefix: str) -> bool:
    """Tell whether ``code`` starts with ``prefix``, ignoring dots and case (I63 matches I63.9)."""
    return normalize_icd10(code).startswith(normalize_icd10(prefix))


def parse_icd10_range(text: str) -> tuple[str, str]:
    """Parse an inclusive category range such as ``I60-I64`` into its two end categories."""
    match = _RANGE_RE.fullmatch("".join(text.split()).upper())
    if match is None:
        raise ValueError(f"malformed ICD-10 range {text!r}: expected like 'I60-I64'")
    low, high = match.group(1), match.group(2)
    if _category_ordinal(low) > _category_ordinal(high):
        raise ValueError(f"malformed ICD-10 range {text!r}: {low} comes after {high}")
    return low, high


def icd10_in_range(code: str, low: str, high: str) -> bool:
    """Tell whether the category of ``code`` lies in the inclusive range ``low``-``high``."""
    # Categories have a fixed shape (letter + two digits), so string order is category order.
    return icd10_category(low) <= icd10_category(code) <= icd10_category(high)


def expand_icd10_range(low: str, high: str) -> frozenset[str]:
    """Return every category of the inclusive range, so matching is one set lookup."""
    start, stop = _category_ordinal(low), _category_ordinal(high)
    return frozenset(f"{chr(ord('A') + n // 100)}{n % 100:02d}" for n in range(start, stop + 1))


def _category_ordinal(category: str) -> int:
    return (ord(category[0]) - ord("A")) * 100 + int(category[1:3])


def age_on(birth_date: date, on: date) -> tuple[int, int]:
    """Return (completed years, completed months in total) of age on a date.

    A month is complete on the same day of the month, or on the month's last day when that day
    does not exist (born 2024-01-31: one month complete on 2024-02-29). The months figure is the
    whole age in months (2 years 3 months -> 27), not the part after the years. ``on`` is the
    visit's start date in Asia/Shanghai; the caller converts the instant.
    """
    if on < birth_date:
        raise ValueError(f"date {on.isoformat()} is before birth date {birth_date.isoformat()}")
    months = (on.year - birth_date.year) * 12 + (on.month - birth_date.month)
    anniversary_day = min(birth_date.day, calendar.monthrange(on.year, on.month)[1])
    if on.day < anniversary_day:
        months -= 1
    return months // 12, months


def _optional_decimal(name: str, value: object) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    try:
        # str() first, so 38.05 (float) becomes Decimal('38.05') and not its binary neighbour.
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{name} is not a number: {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def _optional_number(name: str, value: object) -> int | Decimal | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return _optional_decimal(name, value)


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything the referral rules may read about one visit (built by the caller from the DB).

    Vital signs are None when not measured; a rule leaf that needs a missing value never matches.
    ``repeat_visit_counts`` maps a 3-character ICD-10 category to the number of EARLIER qualifying
    visits with that category in the look-back window (DESIGN section 4, rule repeat-visits).
    """

    age_years: int | None  # None: no birth date, so no age rule applies
    age_months: int | None  # completed months in total, e.g. 27 for 2 years 3 months
    sex: str = "unknown"
    pregnant: bool = False
    facility_level: str = "township"
    diagnosis_codes: tuple[str, ...] = ()
    respiration_rate: int | Decimal | None = None
    spo2: int | Decimal | None = None
    supplemental_oxygen: bool | None = None
    systolic_bp: int | Decimal | None = None
    diastolic_bp: int | Decimal | None = None
    pulse: int | Decimal | None = None
    consciousness: str | None = None  # ACVPU letter
    temperature: int | Decimal | None = None  # degrees Celsius
    repeat_visit_counts: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    encounter_class: str = "AMB"
    discharge_disposition: str | None = None
    # Derived once here so that every rule evaluation on these facts is a set lookup.
    diagnosis_normalized: tuple[str, ...] = field(init=False, repr=False, compare=False)
    diagnosis_categories: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Check values and derive the normalised diagnosis codes and categories."""
        problems: list[str] = []
        for name in ("age_years", "age_months"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                problems.append(f"{name} must be a non-negative int or None, got {value!r}")
        if self.sex not in SEXES:
            problems.append(f"sex must be one of {sorted(SEXES)}, got {self.sex!r}")
        if not isinstance(self.pregnant, bool):
            problems.append(f"pregnant must be a bool, got {self.pregnant!r}")
        if self.facility_level not in FACILITY_LEVELS:
            levels = list(FACILITY_LEVELS)
            problems.append(f"facility_level must be one of {levels}, got {self.facility_level!r}")
        if self.encounter_class not in ENCOUNTER_CLASSES:
            problems.append(
                f"encounter_class must be one of {sorted(ENCOUNTER_CLASSES)}, got {self.encounter_class!r}"
            )
        if self.supplemental_oxygen is not None and not isinstance(self.supplemental_oxygen, bool):
            problems.append(f"supplemental_oxygen must be a bool, got {self.supplemental_oxygen!r}")
        consciousness = self.consciousness
        if consciousness is not None:
            consciousness = consciousness.strip().upper() if isinstance(consciousness, str) else ""
            if consciousness not in ACVPU:
                problems.append(f"consciousness must be one of {list(ACVPU)}, got {self.consciousness!r}")
            object.__setattr__(self, "consciousness", consciousness)
        if self.discharge_disposition is not None and not isinstance(self.discharge_disposition, str):
            problems.append(f"discharge_disposition must be a str, got {self.discharge_disposition!r}")
        for name in (
            "respiration_rate",
            "spo2",
            "systolic_bp",
            "diastolic_bp",
            "pulse",
            "temperature",
        ):
            try:
                object.__setattr__(self, name, _optional_number(name, getattr(self, name)))
            except (TypeError, ValueError) as exc:
                problems.append(str(exc))
        codes = self.diagnosis_codes
        if isinstance(codes, str) or not all(isinstance(code, str) for code in codes):
            problems.append(f"diagnosis_codes must be a tuple of str, got {codes!r}")
            codes = ()
        object.__setattr__(self, "diagnosis_codes", tuple(codes))
        normalized = tuple(normalize_icd10(code) for code in codes)
        object.__setattr__(self, "diagnosis_normalized", normalized)
        # A malformed code has no category; it still takes part in exact and prefix matching.
        object.__setattr__(
            self,
            "diagnosis_categories",
            frozenset(code[:3] for code in normalized if _CATEGORY_RE.fullmatch(code[:3])),
        )
        counts: dict[str, int] = {}
        for key, count in dict(self.repeat_visit_counts).items():
            try:
                category = icd10_category(key)
            except (TypeError, ValueError, AttributeError):
                problems.append(f"repeat_visit_counts: {key!r} is not an ICD-10 category")
                continue
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                problems.append(f"repeat_visit_counts[{key!r}] must be a non-negative int")
                continue
            if category in counts:
                # Two keys for one category would make the count ambiguous (sum? latest?).
                problems.append(f"repeat_visit_counts: {key!r} repeats category {category}")
                continue
            counts[category] = count
        object.__setattr__(self, "repeat_visit_counts", MappingProxyType(counts))
        if problems:
            raise ValueError("invalid Facts: " + "; ".join(problems))
