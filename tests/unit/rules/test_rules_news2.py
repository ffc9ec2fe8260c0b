"""NEWS2 scoring from config/rules/news2.yaml: every band edge, missing values, table checks."""

from __future__ import annotations

import copy
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from referral_service.rules import DefaultRuleSets, Facts, RuleSetError, load_news2_table

D = Decimal

# The seven NEWS2 parameters in the order of the RCP table (and of config/rules/news2.yaml).
TABLE_ORDER = [
    "respiration_rate",
    "spo2",
    "supplemental_oxygen",
    "systolic_bp",
    "pulse",
    "consciousness",
    "temperature",
]

# (parameter, measured value, expected score): both sides of every band edge of the RCP table.
BAND_EDGES: list[tuple[str, Any, int]] = [
    ("respiration_rate", 4, 3),
    ("respiration_rate", 8, 3),
    ("respiration_rate", D("8.5"), 1),
    ("respiration_rate", 9, 1),
    ("respiration_rate", 11, 1),
    ("respiration_rate", 12, 0),
    ("respiration_rate", 20, 0),
    ("respiration_rate", D("20.5"), 2),
    ("respiration_rate", 21, 2),
    ("respiration_rate", 24, 2),
    ("respiration_rate", 25, 3),
    ("respiration_rate", 40, 3),
    ("spo2", 80, 3),
    ("spo2", 91, 3),
    ("spo2", D("91.5"), 2),
    ("spo2", 92, 2),
    ("spo2", 93, 2),
    ("spo2", D("93.5"), 1),
    ("spo2", 94, 1),
    ("spo2", 95, 1),
    ("spo2", D("95.5"), 0),
    ("spo2", 96, 0),
    ("spo2", 100, 0),
    ("supplemental_oxygen", True, 2),
    ("supplemental_oxygen", False, 0),
    ("systolic_bp", 70, 3),
    ("systolic_bp", 90, 3),
    ("systolic_bp", D("90.5"), 2),
    ("systolic_bp", 91, 2),
    ("systolic_bp", 100, 2),
    ("systolic_bp", 101, 1),
    ("systolic_bp", 110, 1),
    ("systolic_bp", 111, 0),
    ("systolic_bp", 219, 0),
    ("systolic_bp", D("219.5"), 3),
    ("systolic_bp", 220, 3),
    ("pulse", 30, 3),
    ("pulse", 40, 3),
    ("pulse", 41, 1),
    ("pulse", 50, 1),
    ("pulse", 51, 0),
    ("pulse", 90, 0),
    ("pulse", 91, 1),
    ("pulse", 110, 1),
    ("pulse", 111, 2),
    ("pulse", 130, 2),
    ("pulse", 131, 3),
    ("pulse", 180, 3),
    ("consciousness", "A", 0),
    ("consciousness", "C", 3),
    ("consciousness", "V", 3),
    ("consciousness", "P", 3),
    ("consciousness", "U", 3),
    ("temperature", D("33.0"), 3),
    ("temperature", D("35.0"), 3),
    ("temperature", D("35.05"), 1),
    ("temperature", D("35.1"), 1),
    ("temperature", D("36.0"), 1),
    ("temperature", D("36.05"), 0),
    ("temperature", D("36.1"), 0),
    ("temperature", D("38.0"), 0),
    ("temperature", D("38.05"), 1),
    ("temperature", D("38.1"), 1),
    ("temperature", D("39.0"), 1),
    ("temperature", D("39.05"), 2),
    ("temperature", D("39.1"), 2),
    ("temperature", D("42.0"), 2),
]


@pytest.mark.parametrize(("parameter", "value", "expected"), BAND_EDGES)
def test_band_edges(rule_sets: DefaultRuleSets, parameter: str, value: Any, expected: int) -> None:
    facts = Facts(age_years=50, age_months=600, **{parameter: value})
    result = rule_sets.news2.score(facts)
    assert result.score_of(parameter) == expected
    # Only this parameter was measured, so it is the whole (partial) total.
    assert result.total == expected
    assert result.max_single == expected
    assert len(result.missing) == 6


def test_band_edge_table_covers_every_parameter() -> None:
    assert {parameter for parameter, _, _ in BAND_EDGES} == set(TABLE_ORDER)
    assert len(BAND_EDGES) >= 40


def test_all_normal_vitals_score_zero_and_are_complete(
    rule_sets: DefaultRuleSets, make_facts: Callable[..., Facts]
) -> None:
    result = rule_sets.news2.score(make_facts())
    assert (result.total, result.max_single, result.complete) == (0, 0, True)
    assert result.missing == ()
    assert result.message_en == "NEWS2 complete"


def test_breakdown_lists_each_parameter_with_value_and_score(
    rule_sets: DefaultRuleSets, make_facts: Callable[..., Facts]
) -> None:
    facts = make_facts(respiration_rate=25, spo2=D("91"), pulse=91, temperature=D("38.05"))
    result = rule_sets.news2.score(facts)
    assert [(i.parameter, i.value, i.score) for i in result.items] == [
        ("respiration_rate", 25, 3),
        ("spo2", D("91"), 3),
        ("supplemental_oxygen", False, 0),
        ("systolic_bp", 120, 0),
        ("pulse", 91, 1),
        ("consciousness", "A", 0),
        ("temperature", D("38.05"), 1),
    ]
    assert (result.total, result.max_single) == (8, 3)


def test_missing_spo2_scores_nothing_and_is_reported(
    rule_sets: DefaultRuleSets, make_facts: Callable[..., Facts]
) -> None:
    result = rule_sets.news2.score(make_facts(spo2=None, pulse=131))
    assert result.complete is False
    assert result.missing == ("spo2",)
    assert result.score_of("spo2") is None
    assert result.total == 3
    assert result.message_en == "NEWS2 incomplete: no SpO2"
    assert result.message_zh == "NEWS2 不完整：缺少血氧饱和度"


def test_several_missing_are_listed_in_table_order(
    rule_sets: DefaultRuleSets, make_facts: Callable[..., Facts]
) -> None:
    result = rule_sets.news2.score(make_facts(temperature=None, spo2=None))
    assert result.missing == ("spo2", "temperature")
    assert result.message_en == "NEWS2 incomplete: no SpO2, temperature"
    assert result.message_zh == "NEWS2 不完整：缺少血氧饱和度、体温"


def test_to_dict_is_json_ready(rule_sets: DefaultRuleSets, make_facts: Callable[..., Facts]) -> None:
    data = rule_sets.news2.score(make_facts(spo2=D("91.5"), pulse=None)).to_dict()
    assert data["total"] == 2
    assert data["complete"] is False
    assert data["missing"] == ["pulse"]
    assert data["parameters"][1] == {"parameter": "spo2", "value": 91.5, "score": 2}
    assert data["parameters"][4] == {"parameter": "pulse", "value": None, "score": None}


# --- validation of the table file -------------------------------------------------------------


@pytest.fixture
def news2_data(config_dir: Path) -> dict[str, Any]:
    text = (config_dir / "news2.yaml").read_text(encoding="utf-8")
    return dict(yaml.safe_load(text))


def _row(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(row for row in data["parameters"] if row["parameter"] == name)


def _load_error(write_file: Callable[..., Path], data: dict[str, Any]) -> tuple[Path, str]:
    path = write_file(data, "news2.yaml")
    with pytest.raises(RuleSetError) as caught:
        load_news2_table(path)
    return path, str(caught.value)


def test_default_table_loads(config_dir: Path) -> None:
    table = load_news2_table(config_dir / "news2.yaml")
    assert (table.id, table.version) == ("news2-rcp-2017", "2017")
    assert [p.name for p in table.parameters] == TABLE_ORDER


def test_bands_must_increase(write_file: Callable[..., Path], news2_data: dict[str, Any]) -> None:
    data = copy.deepcopy(news2_data)
    _row(data, "pulse")["bands"][2]["max"] = 45
    path, message = _load_error(write_file, data)
    assert f"{path}: parameter 'pulse': field 'bands[2].max': band upper bounds must increase" in (message)


def test_last_band_must_be_open(write_file: Callable[..., Path], news2_data: dict[str, Any]) -> None:
    data = copy.deepcopy(news2_data)
    _row(data, "temperature")["bands"][-1]["max"] = 45.0
    _, message = _load_error(write_file, data)
    assert "parameter 'temperature': field 'bands[4].max': the last band must have no 'max'" in (message)


def test_scores_must_be_0_to_3(write_file: Callable[..., Path], news2_data: dict[str, Any]) -> None:
    data = copy.deepcopy(news2_data)
    _row(data, "spo2")["bands"][0]["score"] = 4
    _row(data, "consciousness")["scores"]["V"] = "three"
    _, message = _load_error(write_file, data)
    assert "parameter 'spo2': field 'bands[0].score': expected an integer 0-3, got number 4" in (message)
    assert "parameter 'consciousness': field 'scores.V': expected an integer 0-3" in message


def test_every_parameter_is_required(write_file: Callable[..., Path], news2_data: dict[str, Any]) -> None:
    data = copy.deepcopy(news2_data)
    data["parameters"] = [r for r in data["parameters"] if r["parameter"] != "pulse"]
    _row(data, "consciousness")["scores"].pop("C")
    _, message = _load_error(write_file, data)
    assert "parameter 'pulse': field 'parameters': NEWS2 parameter missing from the table" in (message)
    assert "parameter 'consciousness': field 'scores.C': no score given" in message


def test_unknown_parameter_and_missing_label(
    write_file: Callable[..., Path], news2_data: dict[str, Any]
) -> None:
    data = copy.deepcopy(news2_data)
    data["parameters"].append({"parameter": "blood_sugar", "bands": [{"score": 0}]})
    del _row(data, "spo2")["label"]["zh"]
    _, message = _load_error(write_file, data)
    assert "field 'parameters[7].parameter': unknown NEWS2 parameter 'blood_sugar'" in message
    assert "parameter 'spo2': field 'label.zh': missing or empty label" in message
