"""Policy files: the shipped default, every kind of validation error, the registry."""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from referral_service.settlement import (
    NoPolicyError,
    Policy,
    PolicyError,
    PolicyRegistry,
    check_files,
    load_policy_dir,
    load_policy_file,
    parse_policy,
)

D = Decimal
DEFAULT_FILE = Path(__file__).resolve().parents[3] / "config" / "policies" / "qingshan-2018.yaml"
WritePolicy = Callable[..., Path]


def default_data() -> dict[str, Any]:
    """The shipped default policy as parsed YAML, to be changed by each test."""
    data: dict[str, Any] = yaml.safe_load(DEFAULT_FILE.read_text(encoding="utf-8"))
    return data


@pytest.fixture
def write_policy(tmp_path: Path) -> WritePolicy:
    """Factory: write_policy("name.yaml", data) writes YAML into tmp_path and returns the path."""

    def write(name: str, data: object) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), "utf-8")
        return path

    return write


def set_at(data: dict[str, Any], dotted: str, value: object) -> dict[str, Any]:
    """A copy of `data` with the value at a dotted path (list indexes as numbers) replaced."""
    changed = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    node: Any = changed
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return changed


def delete_at(data: dict[str, Any], dotted: str) -> dict[str, Any]:
    """A copy of `data` without the key at a dotted path."""
    changed = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    node: Any = changed
    for key in parents:
        node = node[key]
    del node[last]
    return changed


def problems_of(path: Path) -> list[str]:
    """The problems PolicyError reports for one file (fails if the file loads)."""
    with pytest.raises(PolicyError) as error:
        load_policy_file(path)
    assert str(error.value).startswith(f"{len(error.value.problems)} problem")
    return error.value.problems


# ---- the shipped default ---------------------------------------------------------------------


def test_default_policy_has_the_numbers_of_design() -> None:
    policy = load_policy_file(DEFAULT_FILE)
    assert (policy.id, policy.version, policy.region) == ("qingshan-2018", "1", "青山县")
    assert (policy.valid_from, policy.valid_to) == (dt.date(2018, 1, 1), None)
    inpatient = policy.basic_insurance.inpatient
    assert inpatient.deductible.levels() == ("township", "county", "city", "province")
    assert [inpatient.deductible.get(lv) for lv in inpatient.deductible.levels()] == [
        D(200),
        D(500),
        D(1000),
        D(3000),
    ]
    assert [inpatient.ratio.get(lv) for lv in inpatient.ratio.levels()] == [
        D("0.90"),
        D("0.80"),
        D("0.70"),
        D("0.60"),
    ]
    assert inpatient.deductible.village is None and inpatient.ratio.village is None
    assert inpatient.yearly_cap == D(150000)
    outpatient = policy.basic_insurance.outpatient
    assert [outpatient.ratio.get(lv) for lv in ("village", "township", "county", "city", "province")] == [
        D("0.65"),
        D("0.60"),
        D("0.50"),
        D(0),
        D(0),
    ]
    assert outpatient.yearly_cap == D(500)
    assert policy.basic_insurance.unreferred_out_of_county_penalty == D("0.20")
    ci = policy.critical_illness
    assert (ci.threshold, ci.threshold_poor, ci.poor_bonus) == (D(5000), D(2500), D("0.05"))
    assert [(b.lower, b.upper, b.ratio) for b in ci.bands] == [
        (D(0), D(50000), D("0.60")),
        (D(50000), D(100000), D("0.70")),
        (D(100000), None, D("0.80")),
    ]
    assert (ci.yearly_cap, ci.yearly_cap_poor) == (D(300000), None)
    assert (policy.medical_assistance.ratio, policy.medical_assistance.yearly_cap) == (D("0.70"), D(30000))
    assert policy.poverty_safety_net.oop_ceiling_per_stay == D(3000)
    assert policy.poverty_safety_net.target_reimbursement_ratio == D("0.85")
    assert policy.class_b.self_pay_share == D("0.10")
    # exact decimals all the way: no float ever touched them
    assert str(inpatient.ratio.county) == "0.80"


def test_to_dict_round_trips_and_prints_as_json() -> None:
    policy = load_policy_file(DEFAULT_FILE)
    data = policy.to_dict()
    assert parse_policy(data, "printed") == policy
    text = json.dumps(data, ensure_ascii=False)
    assert '"ratio": "0.80"' in text
    assert data["valid_to"] is None


def test_shipped_directory_checks_clean() -> None:
    assert check_files([DEFAULT_FILE]) == []
    registry = load_policy_dir(DEFAULT_FILE.parent)
    assert [p.id for p in registry] == ["qingshan-2018"]
    assert PolicyRegistry.check_files([DEFAULT_FILE]) == []
    assert len(PolicyRegistry.load_policy_dir(DEFAULT_FILE.parent)) == 1


# ---- one test per kind of validation error ---------------------------------------------------

# fmt: off
ERRORS = [
    # (id, change, field path expected in the message, words expected in the message)
    ("missing-field", lambda d: delete_at(d, "region"), "region", "required field is missing"),
    ("missing-nested-field", lambda d: delete_at(d, "medical_assistance.yearly_cap"),
     "medical_assistance.yearly_cap", "required field is missing"),
    ("unknown-field", lambda d: set_at(d, "basic_insurance.inpatient.yearly_cpa", "1"),
     "basic_insurance.inpatient.yearly_cpa", "unknown field"),
    ("wrong-type-text", lambda d: set_at(d, "region", ["青山县"]), "region",
     "must be a non-empty string, got a list"),
    ("empty-text", lambda d: set_at(d, "id", "  "), "id", "must be a non-empty string"),
    ("bad-id", lambda d: set_at(d, "id", "qing shan"), "id", "letters, digits"),
    ("float-ratio", lambda d: set_at(d, "critical_illness.poor_bonus", 0.05),
     "critical_illness.poor_bonus", "must be written as a string"),
    ("float-money", lambda d: set_at(d, "basic_insurance.inpatient.yearly_cap", 150000.0),
     "basic_insurance.inpatient.yearly_cap", "float"),
    ("boolean-number", lambda d: set_at(d, "basic_insurance.outpatient.yearly_cap", True),
     "basic_insurance.outpatient.yearly_cap", "got a boolean"),
    ("not-a-number", lambda d: set_at(d, "class_b.self_pay_share", "ten percent"),
     "class_b.self_pay_share", "not a decimal number"),
    ("not-finite", lambda d: set_at(d, "medical_assistance.yearly_cap", "Infinity"),
     "medical_assistance.yearly_cap", "finite"),
    ("ratio-above-one", lambda d: set_at(d, "medical_assistance.ratio", "1.5"),
     "medical_assistance.ratio", "between 0 and 1"),
    ("ratio-negative", lambda d: set_at(d, "basic_insurance.inpatient.ratio.county", "-0.1"),
     "basic_insurance.inpatient.ratio.county", "between 0 and 1"),
    ("negative-money", lambda d: set_at(d, "critical_illness.threshold", "-1"),
     "critical_illness.threshold", "must not be negative"),
    ("money-below-fen", lambda d: set_at(d, "poverty_safety_net.oop_ceiling_per_stay", "3000.001"),
     "poverty_safety_net.oop_ceiling_per_stay", "whole fen"),
    ("null-required-money", lambda d: set_at(d, "critical_illness.threshold_poor", None),
     "critical_illness.threshold_poor", "got null"),
    ("section-not-mapping", lambda d: set_at(d, "medical_assistance", "70%"),
     "medical_assistance", "must be a mapping"),
    ("unknown-level", lambda d: set_at(d, "basic_insurance.outpatient.ratio.hamlet", "0.5"),
     "basic_insurance.outpatient.ratio.hamlet", "unknown facility level"),
    ("level-table-not-mapping", lambda d: set_at(d, "basic_insurance.inpatient.deductible", "500"),
     "basic_insurance.inpatient.deductible", "must be a mapping from facility level"),
    ("deductible-without-ratio", lambda d: delete_at(d, "basic_insurance.inpatient.ratio.city"),
     "basic_insurance.inpatient.ratio.city", "needs a ratio too"),
    ("ratio-without-deductible",
     lambda d: set_at(d, "basic_insurance.inpatient.ratio.village", "0.95"),
     "basic_insurance.inpatient.deductible.village", "needs a deductible too"),
    ("bands-not-from-zero", lambda d: set_at(d, "critical_illness.bands.0.from", "100"),
     "critical_illness.bands[0].from", "must start at 0"),
    ("bands-gap", lambda d: set_at(d, "critical_illness.bands.1.from", "60000"),
     "critical_illness.bands[1].from", "contiguous"),
    ("band-upside-down",
     lambda d: set_at(set_at(d, "critical_illness.bands.1.to", "40000"),
                      "critical_illness.bands.2.from", "40000"),
     "critical_illness.bands[1].to", "must be greater than 'from'"),
    ("open-band-not-last", lambda d: set_at(d, "critical_illness.bands.1.to", None),
     "critical_illness.bands[1].to", "only the last band may be open-ended"),
    ("last-band-closed", lambda d: set_at(d, "critical_illness.bands.2.to", "200000"),
     "critical_illness.bands[2].to", "must be open-ended"),
    ("no-bands", lambda d: set_at(d, "critical_illness.bands", []),
     "critical_illness.bands", "non-empty list"),
    ("band-not-mapping", lambda d: set_at(d, "critical_illness.bands.2", "0.80"),
     "critical_illness.bands[2]", "must be a mapping"),
    ("band-ratio-plus-bonus-above-one", lambda d: set_at(d, "critical_illness.bands.2.ratio",
                                                         "0.98"),
     "critical_illness.bands[2].ratio", "ratio + poor_bonus must not exceed 1"),
    ("valid-to-before-from", lambda d: set_at(d, "valid_to", dt.date(2017, 12, 31)),
     "valid_to", "must not be before valid_from"),
    ("bad-date", lambda d: set_at(d, "valid_from", "2018-13-01"), "valid_from",
     "must be a date"),
    ("null-valid-from", lambda d: set_at(d, "valid_from", None), "valid_from", "got null"),
    ("date-time-not-date", lambda d: set_at(d, "valid_from", dt.datetime(2018, 1, 1, 8, 0)),
     "valid_from", "not a date-time"),
    ("top-level-not-mapping", lambda d: [d], "(document)", "must be a mapping"),
]
# fmt: on


@pytest.mark.parametrize(("change", "field", "words"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_each_kind_of_error_names_file_and_field(
    write_policy: WritePolicy, change: Callable[[dict[str, Any]], Any], field: str, words: str
) -> None:
    path = write_policy("broken.yaml", change(default_data()))
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: {field}: ")
    assert words in problems[0]


def test_bands_out_of_order(write_policy: WritePolicy) -> None:
    data = default_data()
    bands = data["critical_illness"]["bands"]
    data["critical_illness"]["bands"] = [bands[0], bands[2], bands[1]]
    problems = problems_of(write_policy("order.yaml", data))
    assert any("bands[1].from: bands must be contiguous" in p for p in problems)
    assert any("bands[1].to: only the last band may be open-ended" in p for p in problems)
    assert any("bands[2].to: the last band must be open-ended" in p for p in problems)


def test_unchanged_copy_loads(write_policy: WritePolicy) -> None:
    """The error tests start from valid data, so each of them is about its one change."""
    assert load_policy_file(write_policy("copy.yaml", default_data())).id == "qingshan-2018"


def test_all_problems_are_listed_at_once(write_policy: WritePolicy) -> None:
    data = set_at(default_data(), "medical_assistance.ratio", "1.5")
    data = set_at(data, "critical_illness.bands.1.from", "60000")
    data = delete_at(data, "region")
    path = write_policy("many.yaml", data)
    problems = problems_of(path)
    assert len(problems) == 3
    assert {p.split(": ")[1] for p in problems} == {
        "region",
        "medical_assistance.ratio",
        "critical_illness.bands[1].from",
    }
    with pytest.raises(PolicyError, match="3 problems in policy files"):
        load_policy_file(path)


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "syntax.yaml"
    path.write_text("id: qingshan\nregion: [unclosed\n", "utf-8")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: (document): not valid YAML at line ")


def test_missing_file_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    (problem,) = check_files([missing])
    assert problem.startswith(f"{missing}: (document): cannot read")


def test_ints_are_exact_too(write_policy: WritePolicy) -> None:
    policy = load_policy_file(
        write_policy("ints.yaml", set_at(default_data(), "medical_assistance.yearly_cap", 30000))
    )
    assert policy.medical_assistance.yearly_cap == D(30000)


# ---- across files: overlap, duplicates; the registry -------------------------------------


def successor(**changes: object) -> dict[str, Any]:
    data = default_data()
    data.update({"id": "qingshan-2021", "version": "1"}, **changes)
    return data


def test_overlapping_validity_in_one_region_names_both_files(write_policy: WritePolicy) -> None:
    first = write_policy("a.yaml", default_data())  # 2018-01-01, open
    second = write_policy("b.yaml", successor(valid_from=dt.date(2021, 1, 1)))
    (problem,) = check_files([first, second])
    assert problem.startswith(f"{second}: valid_from/valid_to: ")
    assert str(first) in problem
    assert "2021-01-01..open" in problem and "2018-01-01..open" in problem
    assert "青山县" in problem
    with pytest.raises(PolicyError, match="overlaps"):
        load_policy_dir(first.parent)


def test_validity_dates_are_inclusive_when_checking_overlap(write_policy: WritePolicy) -> None:
    first = write_policy("a.yaml", set_at(default_data(), "valid_to", dt.date(2020, 12, 31)))
    same_day = write_policy("b.yaml", successor(valid_from=dt.date(2020, 12, 31)))
    assert len(check_files([first, same_day])) == 1
    next_day = write_policy("c.yaml", successor(valid_from=dt.date(2021, 1, 1)))
    assert check_files([first, next_day]) == []


def test_other_regions_may_overlap(write_policy: WritePolicy) -> None:
    first = write_policy("a.yaml", default_data())
    other = write_policy("b.yaml", successor(region="白水县"))
    assert check_files([first, other]) == []


def test_same_id_and_version_twice(write_policy: WritePolicy) -> None:
    first = write_policy("a.yaml", default_data())
    twin = write_policy("b.yaml", set_at(default_data(), "region", "白水县"))
    (problem,) = check_files([first, twin])
    assert problem.startswith(f"{twin}: id/version: qingshan-2018 version 1 is already defined")


def test_broken_file_and_overlap_are_reported_together(write_policy: WritePolicy) -> None:
    first = write_policy("a.yaml", default_data())
    broken = write_policy("b.yaml", set_at(default_data(), "class_b.self_pay_share", "2"))
    overlapping = write_policy("c.yaml", successor(valid_from=dt.date(2022, 1, 1)))
    problems = check_files([first, broken, overlapping])
    assert len(problems) == 2
    assert problems[0].startswith(f"{broken}: class_b.self_pay_share: ")
    assert problems[1].startswith(f"{overlapping}: valid_from/valid_to: ")


def test_load_policy_dir_needs_a_directory_with_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not a directory"):
        load_policy_dir(tmp_path / "absent")
    with pytest.raises(PolicyError, match="no policy files"):
        load_policy_dir(tmp_path)


def two_policies(write_policy: WritePolicy) -> PolicyRegistry:
    write_policy("a.yaml", set_at(default_data(), "valid_to", dt.date(2020, 12, 31)))
    write_policy("b.yml", successor(valid_from=dt.date(2021, 1, 1), name="2021 版"))
    return load_policy_dir(
        write_policy(
            "c.yaml", successor(id="baishui-2018", region="白水县", valid_from=dt.date(2018, 1, 1))
        ).parent
    )


def test_in_force_picks_by_region_and_date(write_policy: WritePolicy) -> None:
    registry = two_policies(write_policy)
    assert len(registry) == 3
    assert registry.in_force("青山县", dt.date(2018, 1, 1)).id == "qingshan-2018"
    assert registry.in_force("青山县", dt.date(2020, 12, 31)).id == "qingshan-2018"
    assert registry.in_force("青山县", dt.date(2021, 1, 1)).id == "qingshan-2021"
    assert registry.in_force("青山县", dt.date(2035, 6, 1)).id == "qingshan-2021"
    assert registry.in_force("白水县", dt.date(2020, 12, 31)).id == "baishui-2018"
    assert registry.in_force("  青山县 ", dt.date(2019, 5, 5)).id == "qingshan-2018"


def test_no_policy_in_force(write_policy: WritePolicy) -> None:
    registry = two_policies(write_policy)
    with pytest.raises(NoPolicyError, match=r"region '黑山县' on 2020-01-01") as error:
        registry.in_force("黑山县", dt.date(2020, 1, 1))
    assert "青山县" in str(error.value)  # says which regions do have policies
    with pytest.raises(NoPolicyError, match="2017-12-31"):
        registry.in_force("青山县", dt.date(2017, 12, 31))
    with pytest.raises(TypeError, match="not a datetime"):
        registry.in_force("青山县", dt.datetime(2020, 1, 1, 12, 0))


def test_find_by_id_and_version(write_policy: WritePolicy) -> None:
    registry = two_policies(write_policy)
    found = registry.find("qingshan-2021", "1")
    assert found is not None and found.name == "2021 版"
    assert registry.find("qingshan-2021", "2") is None


def test_registry_refuses_overlapping_policies() -> None:
    policy = load_policy_file(DEFAULT_FILE)
    later = Policy(**{**vars_of(policy), "id": "other", "valid_from": dt.date(2030, 1, 1)})
    with pytest.raises(PolicyError, match="overlaps"):
        PolicyRegistry([policy, later])
    assert PolicyRegistry([]).policies == ()


def vars_of(policy: Policy) -> dict[str, Any]:
    return {name: getattr(policy, name) for name in Policy.__dataclass_fields__}
