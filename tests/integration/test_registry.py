"""Registry models on both engines: uniqueness, poverty periods, coverage, time zones, money."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from referral_service.domain.base import utcnow
from referral_service.domain.registry import (
    AuditRecord,
    Coverage,
    Household,
    Patient,
    PovertyRegistration,
)
from referral_service.extensions import database


def _patient(pid: str, resident_id: str | None = None, **kw: object) -> Patient:
    return Patient(id=pid, family_name="王", given_name="芳", gender="female",
                   birth_date=date(1990, 3, 7), resident_id=resident_id, district="青山县", **kw)


def test_one_patient_per_resident_id(app: Flask) -> None:
    with database.unit_of_work() as s:
        s.add(_patient("p1", "62042119900307002X"))
    with pytest.raises(IntegrityError), database.unit_of_work() as s:
        s.add(_patient("p2", "62042119900307002X"))
    with database.session() as s:
        assert s.scalars(select(Patient.id)).all() == ["p1"]


def test_patients_without_resident_id_may_coexist(app: Flask) -> None:
    with database.unit_of_work() as s:
        s.add_all([_patient("n1"), _patient("n2")])
    with database.session() as s:
        assert len(s.scalars(select(Patient.id)).all()) == 2


def test_poverty_registration_periods_are_inclusive(app: Flask) -> None:
    with database.unit_of_work() as s:
        p = _patient("p1")
        p.poverty_registrations = [PovertyRegistration(start=date(2018, 1, 1), end=date(2019, 12, 31)),
                                   PovertyRegistration(start=date(2021, 6, 1), end=None)]
        s.add(p)
    with database.session() as s:
        p = s.get(Patient, "p1")
        assert p is not None
        assert p.registered_poor_on(date(2018, 1, 1)) and p.registered_poor_on(date(2019, 12, 31))
        assert not p.registered_poor_on(date(2020, 1, 1)) and not p.registered_poor_on(date(2017, 12, 31))
        assert p.registered_poor_on(date(2030, 1, 1))


def test_household_members_income_and_size(app: Flask) -> None:
    with database.unit_of_work() as s:
        hh = Household(id="h1", annual_income=Decimal("11999.50"), district="青山县")
        s.add(hh)
        s.add_all([_patient("a", household_id="h1"), _patient("b", household_id="h1")])
    with database.session() as s:
        hh = s.get(Household, "h1")
        assert hh is not None
        assert hh.size == 2
        assert hh.annual_income == Decimal("11999.50")


def test_money_refuses_float(app: Flask) -> None:
    with pytest.raises(Exception, match="float"), database.unit_of_work() as s:
        s.add(Household(id="h1", annual_income=1.5, district="青山县"))


def test_coverage_active_on(app: Flask, make_org: Callable[..., str]) -> None:
    make_org("bureau", facility_level=None, kind="insurer")
    with database.unit_of_work() as s:
        s.add(_patient("p1"))
        s.flush()
        s.add(Coverage(id="c1", patient_id="p1", member_number="M1", period_start=date(2018, 1, 1),
                       period_end=date(2018, 12, 31), payor_id="bureau"))
    with database.session() as s:
        cov = s.get(Coverage, "c1")
        assert cov is not None
        assert cov.active_on(date(2018, 12, 31)) and not cov.active_on(date(2019, 1, 1))


def test_times_are_stored_utc_and_read_aware(app: Flask) -> None:
    from zoneinfo import ZoneInfo

    shanghai = datetime(2026, 1, 1, 8, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
    with database.unit_of_work() as s:
        s.add(AuditRecord(recorded=shanghai, action="R", interaction="read", agent_kind="client"))
    with database.session() as s:
        rec = s.scalars(select(AuditRecord)).one()
        assert rec.recorded == datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
        assert rec.recorded.tzinfo is not None


def test_naive_datetime_is_refused(app: Flask) -> None:
    with pytest.raises(Exception, match="naive"), database.unit_of_work() as s:
        s.add(AuditRecord(recorded=datetime(2026, 1, 1), action="R", interaction="read",
                          agent_kind="client"))
    assert utcnow().tzinfo is UTC
