"""Fixtures for the pure referral-rules tests (no database, no Flask app)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from referral_service.rules import Decision, DefaultRuleSets, Facts, evaluate, load_default_rule_sets

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config" / "rules"

# An adult with every vital sign measured and normal: NEWS2 0, complete.
NORMAL_VITALS: dict[str, Any] = {
    "respiration_rate": 16,
    "spo2": Decimal(98),
    "supplemental_oxygen": False,
    "systolic_bp": 120,
    "diastolic_bp": 80,
    "pulse": 70,
    "consciousness": "A",
    "temperature": Decimal("36.8"),
}


@pytest.fixture(scope="session")
def config_dir() -> Path:
    return CONFIG_DIR


@pytest.fixture(scope="session")
def rule_sets() -> DefaultRuleSets:
    return load_default_rule_sets(CONFIG_DIR)


@pytest.fixture
def make_facts() -> Callable[..., Facts]:
    """Return a factory: a healthy 40-year-old at a township clinic, with overrides."""

    def make(**overrides: Any) -> Facts:
        values: dict[str, Any] = {"age_years": 40, "age_months": 480, "sex": "female"}
        values.update(NORMAL_VITALS)
        values.update(overrides)
        return Facts(**values)

    return make


@pytest.fixture
def decide_up(rule_sets: DefaultRuleSets, make_facts: Callable[..., Facts]) -> Callable[..., Decision]:
    """Return a function evaluating the default up-referral rules on facts built from overrides."""

    def decide(**overrides: Any) -> Decision:
        return evaluate(rule_sets.up, make_facts(**overrides), rule_sets.news2)

    return decide


@pytest.fixture
def decide_down(rule_sets: DefaultRuleSets, make_facts: Callable[..., Facts]) -> Callable[..., Decision]:
    """Return a function evaluating the default down-referral rules at an inpatient discharge."""

    def decide(**overrides: Any) -> Decision:
        values: dict[str, Any] = {"encounter_class": "IMP", "discharge_disposition": "home"}
        values.update(overrides)
        return evaluate(rule_sets.down, make_facts(**values), rule_sets.news2)

    return decide


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[..., Path]:
    """Return a function writing a rule file (a mapping dumped as YAML, or raw text)."""

    def write(content: Any, name: str = "rules.yaml") -> Path:
        path = tmp_path / name
        if isinstance(content, str):
            text = content
        else:
            text = yaml.safe_dump(content, allow_unicode=True, sort_keys=False)
        path.write_text(text, encoding="utf-8")
        return path

    return write
