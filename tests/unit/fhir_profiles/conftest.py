"""Fixtures for the profile tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.unit.fhir_profiles import samples


@pytest.fixture
def make() -> Callable[..., dict[str, Any]]:
    """Return the factory of valid sample resources: make('patient', gender='male')."""
    return samples.make
