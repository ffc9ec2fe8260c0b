"""Fixtures for the settlement unit tests: the shipped default policy and factories for inputs."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from referral_service.settlement import ClaimInput, Policy, YearAccumulators, load_policy_file

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_POLICY_FILE = REPO_ROOT / "config" / "policies" / "qingshan-2018.yaml"


def parse_items(spec: str) -> list[tuple[Decimal, str]]:
    """Items from text such as "A:27000 B:100.50 C:3000" (class:amount, space separated)."""
    items: list[tuple[Decimal, str]] = []
    for part in spec.split():
        charge_class, amount = part.split(":")
        items.append((Decimal(amount), charge_class))
    return items


def build_claim(
    kind: str,
    level: str,
    items: str = "",
    *,
    poor: bool = False,
    ooc: bool = False,
    borne: str = "0",
) -> ClaimInput:
    """A ClaimInput from compact text; `ooc` = unreferred out of county, `borne` = episode deductible."""
    return ClaimInput(
        claim_type=kind,
        facility_level=level,
        items=parse_items(items),
        registered_poor=poor,
        unreferred_out_of_county=ooc,
        episode_deductible_borne=Decimal(borne),
    )


def build_accumulators(**amounts: str) -> YearAccumulators:
    """YearAccumulators from keyword strings, e.g. inpatient_basic_paid="150000"."""
    return YearAccumulators(**{name: Decimal(value) for name, value in amounts.items()})


@pytest.fixture(scope="session")
def policy() -> Policy:
    """The default policy as shipped in config/policies (青山县 2018)."""
    return load_policy_file(DEFAULT_POLICY_FILE)


@pytest.fixture(scope="session")
def make_claim() -> Callable[..., ClaimInput]:
    """Factory: make_claim("inpatient", "county", "A:27000 C:3000", poor=True)."""
    return build_claim


@pytest.fixture(scope="session")
def make_accumulators() -> Callable[..., YearAccumulators]:
    """Factory: make_accumulators(inpatient_basic_paid="150000")."""
    return build_accumulators
