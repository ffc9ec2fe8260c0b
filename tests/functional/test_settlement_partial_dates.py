"""Periods written with partial dates (FHIR `date`/`dateTime` of year or month precision) in the
registrations a settlement rests on: a poverty registration and a basic Coverage cover the whole year
or month their bounds name, as FHIR's implicit precision (and HAPI) reads them. Before, a partial start
dropped the registration (not registered poor) and a partial end read as open (poor, or insured, for
ever)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from flask.testing import FlaskClient

from tests.functional.settlement_helpers import County, basic_coverage, claim, components


@pytest.fixture
def county(client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]) -> County:
    return County(client, make_api_client)


def _assistance(county: County, pid: str, cov: str, discharge: str) -> Decimal:
    response = county.his["hosp"].post(
        "Claim/$submit", claim(pid, cov, "hosp", [("10000.00", "A")], discharge=discharge)
    )
    assert response.status_code == 200, response.json
    return components(response.json)["medical-assistance"]


@pytest.mark.parametrize(
    ("poor_from", "poor_to", "discharge", "poor"),
    [
        ("2016-03", None, "2026-03-10", True),  # a month start: registered since 2016-03-01
        ("2016", None, "2026-03-10", True),  # a year start: since 2016-01-01
        ("2026-03", None, "2026-03-01", True),  # the month's first day is covered
        ("2026-04", None, "2026-03-31", False),  # not before it
        ("2016-01-01", "2018-06", "2026-03-10", False),  # ended with June 2018: not open
        ("2016-01-01", "2026-03", "2026-03-31", True),  # a month end covers its last day
        ("2016-01-01", "2025", "2026-01-01", False),  # a year end: over on 2025-12-31
    ],
)
def test_poverty_registration_with_partial_dates(
    county: County, poor_from: str, poor_to: str | None, discharge: str, poor: bool
) -> None:
    pid, cov = county.patient(poor=True, poor_from=poor_from, poor_to=poor_to)
    assert (_assistance(county, pid, cov, discharge) > 0) is poor


def test_basic_coverage_with_partial_dates(county: County) -> None:
    pid, _ = county.patient(coverage_from="2030-01-01")  # not insured in 2026 by this one
    coverage = county.platform.post("Coverage", basic_coverage(pid, {"start": "2018", "end": "2025-12"}))
    assert coverage.status_code == 201, coverage.json
    cov = coverage.json["id"]
    assert _assistance(county, pid, cov, "2025-12-31") == 0  # insured (not poor) through December
    refused = county.his["hosp"].post(
        "Claim/$submit", claim(pid, cov, "hosp", [("100.00", "A")], discharge="2026-01-01")
    )
    assert refused.status_code == 422, refused.json  # the enrolment ended with 2025, not open
    assert "Coverage" in refused.json["issue"][0]["diagnostics"]
