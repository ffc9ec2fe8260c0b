"""Synthetic households and residents of the demo county, generated as plain row tuples (pure)."""

from __future__ import annotations

import math
import random
from bisect import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from itertools import accumulate
from typing import NamedTuple

from ..domain import resident_id
from . import names
from .places import (
    COUNTY,
    COUNTY_REGION_CODE,
    INSURANCE_BUREAU,
    NEIGHBOUR_REGION_CODES,
    TOWNSHIPS,
    township_centre_id,
)

POVERTY_LINE = Decimal(4000)  # yuan per person per year
POOR_PER_BLOCK = 3  # 建档立卡: exactly 3 of every 25 consecutive households, i.e. 12 %
POOR_BLOCK = 25
COVERAGE_START = date(2018, 1, 1)
NO_ID_UNDER_DAYS = 30  # newborns get their resident identity number after the first month

_DAYS_PER_YEAR = 365.2425
_REGION_CODES = (COUNTY_REGION_CODE, *NEIGHBOUR_REGION_CODES)
_SEQ_STRIDE = 193  # coprime with 500: spreads order codes without repeating one
_MOBILE_PREFIXES = ("133", "135", "136", "138", "139", "150", "151", "153", "157", "158",
                    "177", "180", "181", "186", "187", "189", "199")
# Townships weighted by population: the county seat is largest, towns (镇) larger than 乡.
_TOWNSHIP_CUM = tuple(accumulate(
    3.0 if no == 1 else 1.3 if name.endswith("镇") else 1.0
    for no, (name, _) in enumerate(TOWNSHIPS, start=1)
))

# Household archetypes as (weight, elders, middle generation adults, children): size = sum.
# Weights give sizes 1-6 about 11/21/23/24/14/7 % (mean 3.3 persons).
_ARCHETYPES: tuple[tuple[float, int, int, int], ...] = (
    (6.6, 1, 0, 0), (4.4, 0, 1, 0),                                   # size 1
    (11.5, 2, 0, 0), (5.3, 0, 2, 0), (2.1, 1, 1, 0), (2.1, 0, 1, 1),  # size 2
    (12.6, 0, 2, 1), (4.6, 2, 0, 1), (3.5, 1, 2, 0), (2.3, 1, 1, 1),  # size 3
    (12.0, 0, 2, 2), (6.0, 1, 2, 1), (3.6, 2, 0, 2), (2.4, 2, 2, 0),  # size 4
    (7.7, 2, 2, 1), (2.1, 0, 2, 3), (4.2, 1, 2, 2),                   # size 5
    (5.2, 2, 2, 2), (1.8, 1, 2, 3),                                   # size 6
)
_ARCHETYPE_CUM = tuple(accumulate(a[0] for a in _ARCHETYPES))


class HouseholdRow(NamedTuple):
    """A row of `household`."""

    id: str
    code: str
    annual_income: Decimal
    district: str
    township: str
    village: str


class PatientRow(NamedTuple):
    """A row of `patient`."""

    id: str
    resident_id: str | None
    family_name: str
    given_name: str
    gender: str
    birth_date: date
    phone: str | None
    district: str
    township: str
    village: str
    address_line: str
    general_practitioner_id: str
    household_id: str
    created_by_org_id: str | None
    active: bool


class PovertyRow(NamedTuple):
    """A row of `poverty_registration` (the id is assigned by the database)."""

    patient_id: str
    start: date
    end: date | None


class CoverageRow(NamedTuple):
    """A row of `coverage`."""

    id: str
    patient_id: str
    type: str
    member_number: str
    status: str
    period_start: date
    period_end: date | None
    payor_id: str


@dataclass(slots=True)
class Household:
    """One household with the rows of its members."""

    household: HouseholdRow
    patients: list[PatientRow]
    poverty: list[PovertyRow]
    coverage: list[CoverageRow]

    @property
    def poor(self) -> bool:
        """Registered poor (建档立卡)."""
        return bool(self.poverty)


class _Member(NamedTuple):
    """A household member before names and numbers are assigned."""

    gender: str
    age_days: int
    family_name: str
    married_in: bool  # spouses and mothers often come from a neighbouring county


class Population:
    """Deterministic stream of households: the same seed and reference date give the same rows."""

    def __init__(self, seed: int, as_of: date) -> None:
        self._rng = random.Random(seed)
        self._as_of = as_of
        self._id_counts: dict[int, int] = {}
        self._patients = 0
        self._households = 0
        self._poor_slots: frozenset[int] = frozenset()

    def households(self, patients: int) -> Iterator[Household]:
        """Households until exactly `patients` residents exist (the last one may be cut short)."""
        while self._patients < patients:
            members = self._showcase(self._households) or self._family()
            yield self._household(members[: patients - self._patients])

    # -- family composition -------------------------------------------------------------------

    def _years(self, low: float, high: float, mode: float | None = None) -> float:
        """An age in years from a triangular distribution."""
        return self._rng.triangular(low, high, mode)

    def _days(self, years: float) -> int:
        """An age in years as whole days (never negative)."""
        return max(0, int(years * _DAYS_PER_YEAR))

    def _child_gender(self) -> str:
        """Sex at birth, with the skewed rural sex ratio of recent decades."""
        return "male" if self._rng.random() < 0.53 else "female"

    def _showcase(self, index: int) -> list[_Member] | None:
        """The first two households always hold a newborn, a young infant and someone over 80."""
        rng = self._rng
        if index == 0:
            surname = names.surname(rng)
            return [
                _Member("male", self._days(self._years(27, 33)), surname, False),
                _Member("female", self._days(self._years(24, 30)), names.surname(rng), True),
                _Member(self._child_gender(), rng.randint(5, 25), surname, False),
                _Member("female", self._days(self._years(81, 88)), names.surname(rng), False),
            ]
        if index == 1:
            surname = names.surname(rng)
            return [
                _Member("male", self._days(self._years(25, 35)), surname, False),
                _Member("female", self._days(self._years(22, 32)), names.surname(rng), True),
                _Member(self._child_gender(), rng.randint(40, 85), surname, False),
            ]
        return None

    def _family(self) -> list[_Member]:
        """Members of a household of a random archetype, head first."""
        rng = self._rng
        _, elders, middle, children = _ARCHETYPES[
            bisect(_ARCHETYPE_CUM, rng.random() * _ARCHETYPE_CUM[-1])
        ]
        members: list[_Member] = []
        if middle:
            single_female = middle == 1 and rng.random() < (0.5 if children else 0.3)
            head_gender = "female" if single_female else "male"
            head_name = names.surname(rng)
            # Children living at home are 0-24; the parents' ages follow from the eldest.
            child_ages = sorted((rng.uniform(0, 24) for _ in range(children)), reverse=True)
            if children:
                mother_age = child_ages[0] + self._years(20, 36, 25)
                head_age = mother_age + (self._years(-2, 7, 2) if middle == 2 else 0)
            elif elders:
                head_age = self._years(22, 56, 32)
            elif middle == 2:
                head_age = self._years(21, 40, 26)
            else:
                head_age = self._years(20, 60, 35)
            members.append(_Member(head_gender, self._days(head_age), head_name, False))
            if middle == 2:
                wife_age = mother_age if children else max(20.0, head_age - self._years(-2, 7, 2))
                members.append(_Member("female", self._days(wife_age), names.surname(rng),
                                       rng.random() < 0.25))
            child_name = head_name if head_gender == "male" else names.surname(rng)
            for age in child_ages:
                members.append(_Member(self._child_gender(), self._days(age), child_name, False))
            if elders:
                elder_age = min(99.0, head_age + rng.uniform(22, 34))
                members.extend(self._elders(elders, elder_age, head_name))
        else:
            if children:
                elder_age = self._years(48, 80, 60)
            elif elders == 2:
                elder_age = self._years(55, 94, 68)
            else:
                elder_age = self._years(58, 97, 72)
            surname = names.surname(rng)
            members.extend(self._elders(elders, elder_age, surname))
            for _ in range(children):
                age = rng.uniform(0, min(16.0, elder_age - 40))
                members.append(_Member(self._child_gender(), self._days(age), surname, False))
        return members

    def _elders(self, count: int, age: float, surname: str) -> list[_Member]:
        """One elder (more often a widow) or an elderly couple."""
        rng = self._rng
        if count == 1:
            if rng.random() < 0.6:  # more widows than widowers
                return [_Member("female", self._days(age), names.surname(rng), rng.random() < 0.2)]
            return [_Member("male", self._days(age), surname, rng.random() < 0.03)]
        wife_age = max(45.0, age - self._years(-2, 6, 2))
        return [
            _Member("male", self._days(age), surname, rng.random() < 0.03),
            _Member("female", self._days(wife_age), names.surname(rng), rng.random() < 0.2),
        ]

    # -- rows ---------------------------------------------------------------------------------

    def _is_poor(self, index: int) -> bool:
        """Whether household `index` is registered poor (3 random slots per block of 25)."""
        block, slot = divmod(index, POOR_BLOCK)
        if slot == 0:
            if block == 0:  # the second showcase household is always registered poor
                others = self._rng.sample(range(2, POOR_BLOCK), POOR_PER_BLOCK - 1)
                self._poor_slots = frozenset((1, *others))
            else:
                self._poor_slots = frozenset(self._rng.sample(range(POOR_BLOCK), POOR_PER_BLOCK))
        return slot in self._poor_slots

    def _household(self, members: list[_Member]) -> Household:
        """The rows of one household: address, members, coverage, poverty, income."""
        rng = self._rng
        index = self._households
        self._households += 1
        hh_id = f"hh-{index + 1:06d}"
        t_no = bisect(_TOWNSHIP_CUM, rng.random() * _TOWNSHIP_CUM[-1]) + 1
        township, villages = TOWNSHIPS[t_no - 1]
        v_no = rng.randint(1, len(villages))
        village = villages[v_no - 1]
        gp = township_centre_id(t_no)
        address = f"{village}{rng.randint(1, 9)}社{rng.randint(1, 99)}号"
        poor = self._is_poor(index)
        size = len(members)

        household_phone = self._phone()
        patients: list[PatientRow] = []
        coverage: list[CoverageRow] = []
        for member in members:
            self._patients += 1
            number = self._patients
            pt_id = f"pt-{number:07d}"
            birth = self._as_of - timedelta(days=member.age_days)
            years = member.age_days / _DAYS_PER_YEAR
            dependent = years < 16 or years >= 75
            patients.append(PatientRow(
                id=pt_id,
                resident_id=None if member.age_days < NO_ID_UNDER_DAYS else self._resident_id(
                    birth, member.gender, member.married_in),
                family_name=member.family_name,
                given_name=names.given_name(rng, member.gender, birth.year),
                gender=member.gender,
                birth_date=birth,
                phone=household_phone if dependent or not patients else self._phone(),
                district=COUNTY, township=township, village=village, address_line=address,
                general_practitioner_id=gp, household_id=hh_id, created_by_org_id=None,
                active=True,
            ))
            coverage.append(CoverageRow(
                id=f"cov-{number:07d}", patient_id=pt_id, type="basic",
                member_number=f"{COUNTY_REGION_CODE}{number:010d}", status="active",
                period_start=max(COVERAGE_START, birth), period_end=None, payor_id=INSURANCE_BUREAU,
            ))

        poverty = self._poverty(patients) if poor else []
        if poor:
            per_person = rng.uniform(1800, float(POVERTY_LINE) - 100)
        else:
            per_person = float(POVERTY_LINE) + rng.lognormvariate(math.log(5000), 0.6)
        income = Decimal(int(per_person * size))
        household = HouseholdRow(
            id=hh_id, code=f"{COUNTY_REGION_CODE}{t_no:03d}{v_no:03d}{index + 1:06d}",
            annual_income=income, district=COUNTY, township=township, village=village,
        )
        return Household(household, patients, poverty, coverage)

    def _poverty(self, patients: list[PatientRow]) -> list[PovertyRow]:
        """One registration period per member: the household's, from birth for those born later."""
        rng = self._rng
        start = min(self._as_of, date(2016, 1, 1) + timedelta(days=rng.randrange(4 * 365 + 1)))
        starts = [max(start, p.birth_date) for p in patients]
        end: date | None = None
        if rng.random() < 0.25:  # lifted out of poverty (脱贫) by mid-2021
            candidate = start + timedelta(days=rng.randint(365, 3 * 365))
            candidate = min(candidate, date(2021, 6, 30))
            if candidate >= max(starts) and candidate < self._as_of:
                end = candidate
        return [PovertyRow(p.id, s, end) for p, s in zip(patients, starts, strict=True)]

    def _resident_id(self, birth: date, gender: str, married_in: bool) -> str:
        """A unique valid number; people from neighbouring counties carry their region code."""
        first = self._rng.randrange(1, len(_REGION_CODES)) if married_in else 0
        sex = 1 if gender == "male" else 0
        for r in (*range(first, len(_REGION_CODES)), *range(first)):
            key = (birth.toordinal() * len(_REGION_CODES) + r) * 2 + sex
            count = self._id_counts.get(key, 0)
            if count <= resident_id.MAX_SEQUENCE:
                self._id_counts[key] = count + 1
                sequence = (count * _SEQ_STRIDE + key) % (resident_id.MAX_SEQUENCE + 1)
                return resident_id.generate(_REGION_CODES[r], birth, gender, sequence)
        raise RuntimeError(f"no free resident identity number for {birth}")  # pragma: no cover

    def _phone(self) -> str:
        """A mobile number (synthetic)."""
        rng = self._rng
        return f"{rng.choice(_MOBILE_PREFIXES)}{rng.randrange(10**8):08d}"
