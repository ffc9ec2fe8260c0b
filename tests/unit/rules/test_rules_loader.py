"""Rule-file validation: every kind of problem names the file, the rule id and the field."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from referral_service.rules import (
    RuleSetError,
    check_files,
    load_default_rule_sets,
    load_rule_set,
)

WriteFile = Callable[..., Path]

VALID: dict[str, Any] = {
    "kind": "up-referral",
    "id": "test-set",
    "version": "1",
    "rules": [
        {
            "id": "fever",
            "when": {"fact": "temperature", "ge": 38.0},
            "outcome": {"type": "refer-up", "urgency": "urgent"},
            "explanation": {"zh": "发热", "en": "fever"},
        },
        {
            "id": "stroke",
            "when": {"icd10": {"ranges": ["I60-I64"]}},
            "outcome": {"type": "refer-up", "urgency": "emergency"},
            "explanation": {"zh": "卒中", "en": "stroke"},
        },
        {
            "id": "default",
            "when": "otherwise",
            "outcome": {"type": "treat-here"},
            "explanation": {"zh": "本院诊治", "en": "treat here"},
        },
    ],
}


def _problems(write_file: WriteFile, data: Any) -> tuple[Path, list[str]]:
    """Write ``data``, check it both ways, and return the file and its problems."""
    path = write_file(data)
    with pytest.raises(RuleSetError) as caught:
        load_rule_set(path)
    problems = list(caught.value.problems)
    assert check_files([path]) == problems
    for problem in problems:
        assert problem in str(caught.value)
    return path, problems


def _mutated(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = copy.deepcopy(VALID)
    change(data)
    return data


def test_valid_file_loads(write_file: WriteFile) -> None:
    rule_set = load_rule_set(write_file(VALID))
    assert (rule_set.id, rule_set.version, rule_set.kind) == ("test-set", "1", "up-referral")
    assert [rule.id for rule in rule_set.rules] == ["fever", "stroke", "default"]
    assert check_files([write_file(VALID)]) == []


def test_default_files_are_valid(config_dir: Path) -> None:
    paths = sorted(config_dir.glob("*.yaml"))
    assert [p.name for p in paths] == ["down-referral.yaml", "news2.yaml", "up-referral.yaml"]
    assert check_files(paths) == []


def test_unknown_fact(write_file: WriteFile) -> None:
    data = _mutated(lambda d: d["rules"][0]["when"].update(fact="temprature"))
    path, problems = _problems(write_file, data)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: rule 'fever': field 'when.fact': unknown fact 'temprature'")


def test_wrong_value_type(write_file: WriteFile) -> None:
    data = _mutated(lambda d: d["rules"][0]["when"].update(ge="high"))
    path, problems = _problems(write_file, data)
    assert problems == [
        f"{path}: rule 'fever': field 'when.ge': wrong value type: expected a number, got string 'high'"
    ]


def test_unknown_operator(write_file: WriteFile) -> None:
    data = _mutated(lambda d: d["rules"][0].update(when={"fact": "temperature", "gte": 38}))
    path, problems = _problems(write_file, data)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: rule 'fever': field 'when.gte': unknown operator 'gte'")


def test_unknown_combinator(write_file: WriteFile) -> None:
    data = _mutated(lambda d: d["rules"][0].update(when={"either": []}))
    path, problems = _problems(write_file, data)
    assert problems[0].startswith(f"{path}: rule 'fever': field 'when.either': unknown operator")


def test_operator_that_does_not_fit_the_fact(write_file: WriteFile) -> None:
    data = _mutated(lambda d: d["rules"][0].update(when={"fact": "sex", "gt": "female"}))
    path, problems = _problems(write_file, data)
    assert problems[0].startswith(
        f"{path}: rule 'fever': field 'when.gt': operator 'gt' does not apply to enum fact 'sex'"
    )


def test_unknown_enum_value(write_file: WriteFile) -> None:
    data = _mutated(
        lambda d: d["rules"][0].update(when={"fact": "discharge_disposition", "in": ["home", "other_hcf"]})
    )
    path, problems = _problems(write_file, data)
    assert problems[0].startswith(f"{path}: rule 'fever': field 'when.in[1]': unknown value 'other_hcf'")


def test_unknown_outcome(write_file: WriteFile) -> None:
    data = _mutated(lambda d: d["rules"][0]["outcome"].update(type="refer-sideways"))
    path, problems = _problems(write_file, data)
    assert problems[0].startswith(
        f"{path}: rule 'fever': field 'outcome.type': unknown outcome 'refer-sideways'"
    )


def test_outcome_of_the_other_kind(write_file: WriteFile) -> None:
    data = _mutated(lambda d: d["rules"][0].update(outcome={"type": "down-referral", "followup_days": [7]}))
    path, problems = _problems(write_file, data)
    assert problems[0].startswith(
        f"{path}: rule 'fever': field 'outcome.type': outcome 'down-referral' is not allowed in "
        "a up-referral rule set"
    )


def test_unknown_urgency(write_file: WriteFile) -> None:
    data = _mutated(lambda d: d["rules"][0]["outcome"].update(urgency="asap"))
    path, problems = _problems(write_file, data)
    assert problems == [
        f"{path}: rule 'fever': field 'outcome.urgency': unknown urgency 'asap'; "
        "expected one of ['emergency', 'urgent', 'routine']"
    ]


def test_unknown_capability(write_file: WriteFile) -> None:
    data = _mutated(lambda d: d["rules"][0]["outcome"].update(capability="cardiology"))
    path, problems = _problems(write_file, data)
    assert problems[0].startswith(
        f"{path}: rule 'fever': field 'outcome.capability': unknown capability 'cardiology'"
    )


def test_duplicate_rule_id(write_file: WriteFile) -> None:
    data = _mutated(lambda d: d["rules"][1].update(id="fever"))
    path, problems = _problems(write_file, data)
    assert problems == [f"{path}: rule 'fever': field 'id': duplicate rule id (first used by rules[0])"]


def test_missing_explanation_language(write_file: WriteFile) -> None:
    data = _mutated(lambda d: d["rules"][1]["explanation"].pop("en"))
    path, problems = _problems(write_file, data)
    assert problems == [f"{path}: rule 'stroke': field 'explanation.en': missing explanation language 'en'"]


@pytest.mark.parametrize(
    ("bad_range", "reason"),
    [
        ("I64-I60", "I64 comes after I60"),
        ("I6-I64", "expected like 'I60-I64'"),
        ("I60:I64", "expected like 'I60-I64'"),
    ],
)
def test_malformed_icd10_range(write_file: WriteFile, bad_range: str, reason: str) -> None:
    data = _mutated(lambda d: d["rules"][1]["when"]["icd10"]["ranges"].append(bad_range))
    path, problems = _problems(write_file, data)
    assert len(problems) == 1
    assert problems[0].startswith(
        f"{path}: rule 'stroke': field 'when.icd10.ranges[1]': malformed ICD-10 range {bad_range!r}"
    )
    assert reason in problems[0]


def test_malformed_icd10_prefix(write_file: WriteFile) -> None:
    data = _mutated(lambda d: d["rules"][1]["when"]["icd10"].update(prefixes=["63"]))
    path, problems = _problems(write_file, data)
    assert problems[0].startswith(
        f"{path}: rule 'stroke': field 'when.icd10.prefixes[0]': malformed ICD-10 prefix '63'"
    )


def test_overlapping_code_lists_are_fine(write_file: WriteFile) -> None:
    data = _mutated(
        lambda d: d["rules"][1]["when"]["icd10"].update(
            ranges=["I60-I64", "I63-I66"], prefixes=["I63", "I63.9"], codes=["I63.9"]
        )
    )
    assert len(load_rule_set(write_file(data)).rules) == 3


def test_bad_yaml(write_file: WriteFile) -> None:
    path, problems = _problems(write_file, "kind: up-referral\nrules: [\n  - id: x\n")
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: bad YAML:")
    assert "line" in problems[0]


def test_duplicate_yaml_key_is_bad_yaml(write_file: WriteFile) -> None:
    text = (
        "kind: up-referral\nid: t\nversion: '1'\nrules:\n"
        "  - id: a\n    when: {fact: pulse, ge: 100, ge: 120}\n"
    )
    path, problems = _problems(write_file, text)
    assert problems[0].startswith(f"{path}: bad YAML:")
    assert "duplicate key 'ge'" in problems[0]


def test_every_problem_is_reported_at_once(write_file: WriteFile) -> None:
    def break_everything(d: dict[str, Any]) -> None:
        d["version"] = 1.1
        d["rules"][0]["when"] = {"fact": "temprature", "ge": 38}
        d["rules"][0]["outcome"]["urgency"] = "asap"
        d["rules"][1]["explaination"] = d["rules"][1].pop("explanation")
        d["rules"][2]["id"] = "fever"

    path, problems = _problems(write_file, _mutated(break_everything))
    assert [p.removeprefix(f"{path}: ").split(": ")[:2] for p in problems] == [
        ["field 'version'", "expected a non-empty string (quote numbers), got number 1.1"],
        ["rule 'fever'", "field 'when.fact'"],
        ["rule 'fever'", "field 'outcome.urgency'"],
        ["rule 'stroke'", "field 'explaination'"],
        ["rule 'stroke'", "field 'explanation'"],
        ["rule 'fever'", "field 'id'"],
    ]
    assert all(p.startswith(f"{path}: ") for p in problems)
    assert "6 problems in rule files" in str(RuleSetError(problems))


def test_version_must_be_a_string(write_file: WriteFile) -> None:
    data = _mutated(lambda d: d.update(version=1.10))
    path, problems = _problems(write_file, data)
    assert problems == [
        f"{path}: field 'version': expected a non-empty string (quote numbers), got number 1.1"
    ]


def test_default_rule_must_come_last(write_file: WriteFile) -> None:
    data = _mutated(lambda d: d["rules"].reverse())
    path, problems = _problems(write_file, data)
    assert problems == [
        f"{path}: rule 'default': field 'when': 'otherwise' is allowed only in the last rule",
        f"{path}: rule 'fever': field 'when': the last rule must be the default: when: otherwise",
    ]


def test_down_referral_followups_must_increase(write_file: WriteFile) -> None:
    data = {
        "kind": "down-referral",
        "id": "down",
        "version": "1",
        "rules": [
            {
                "id": "home",
                "when": {"fact": "discharge_disposition", "eq": "home"},
                "outcome": {"type": "down-referral", "followup_days": [30, 7]},
                "explanation": {"zh": "回家", "en": "home"},
            },
            {
                "id": "default",
                "when": "otherwise",
                "outcome": {"type": "none"},
                "explanation": {"zh": "无", "en": "none"},
            },
        ],
    }
    path, problems = _problems(write_file, data)
    assert problems[0].startswith(f"{path}: rule 'home': field 'outcome.followup_days': wrong value type")


def test_json_rule_files_are_read_with_exact_decimals(write_file: WriteFile) -> None:
    path = write_file(json.dumps(VALID, ensure_ascii=False), "rules.json")
    rule_set = load_rule_set(path)
    assert rule_set.rule("fever").outcome.urgency == "urgent"
    broken = write_file('{"kind": "up-referral", "kind": "down-referral"}', "broken.json")
    assert check_files([broken]) == [f"{broken}: bad JSON: duplicate key 'kind'"]


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    problems = check_files([missing])
    assert len(problems) == 1
    assert problems[0].startswith(f"{missing}: cannot read file")


def test_check_files_flags_one_rule_set_in_two_files(write_file: WriteFile) -> None:
    first = write_file(VALID, "a.yaml")
    second = write_file(VALID, "b.yaml")
    assert check_files([first, second]) == [
        f"{second}: field 'id': rule set 'test-set' version '1' is also defined in {first}"
    ]


def test_load_default_rule_sets_reports_all_files(
    tmp_path: Path, config_dir: Path, write_file: WriteFile
) -> None:
    for name in ("up-referral.yaml", "down-referral.yaml", "news2.yaml"):
        (tmp_path / name).write_text((config_dir / name).read_text(encoding="utf-8"), encoding="utf-8")
    defaults = load_default_rule_sets(tmp_path)
    assert defaults.up.id == "up-referral-default"
    assert defaults.down.kind == "down-referral"

    up = tmp_path / "up-referral.yaml"
    up.write_text(
        up.read_text(encoding="utf-8").replace("urgency: urgent,", "urgency: soon,"), encoding="utf-8"
    )
    (tmp_path / "news2.yaml").write_text("kind: news2\nparameters: [", encoding="utf-8")
    with pytest.raises(RuleSetError) as caught:
        load_default_rule_sets(tmp_path)
    problems = caught.value.problems
    assert f"{up}: rule 'infant-fever': field 'outcome.urgency': unknown urgency 'soon'" in (problems[0])
    assert any(p.startswith(f"{tmp_path / 'news2.yaml'}: bad YAML") for p in problems)
    assert not any("down-referral.yaml" in p for p in problems)
