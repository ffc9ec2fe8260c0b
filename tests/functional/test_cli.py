"""Flask sub-commands through the real CLI runner."""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from tests.functional.test_referral_workflow import _first_visit, county  # noqa: F401 - fixture

BAD_RULES = """kind: up-referral
id: broken
version: "1"
rules:
  - id: fever
    when: {fact: temperatur, ge: 38}
    outcome: {type: refer-up, urgency: urgent}
    explanation: {zh: 发热}
  - id: default
    when: otherwise
    outcome: {type: treat-here}
    explanation: {zh: 本院治疗, en: treat here}
"""


def test_rules_check_default_files(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["rules", "check"])
    assert result.exit_code == 0, result.output
    assert "3 rule file(s) OK" in result.output


def test_rules_check_names_file_rule_and_field(app: Flask, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BAD_RULES, encoding="utf-8")
    result = app.test_cli_runner().invoke(args=["rules", "check", str(path)])
    assert result.exit_code == 1
    assert "broken.yaml: rule 'fever': field 'when.fact': unknown fact 'temperatur'" in result.output
    assert "rule 'fever': field 'explanation.en'" in result.output


def test_rules_explain_a_stored_visit(app: Flask, county: dict) -> None:  # noqa: F811
    _, eid, _ = _first_visit(county)
    result = app.test_cli_runner().invoke(args=["rules", "explain", "--encounter", eid])
    assert result.exit_code == 0, result.output
    assert "outcome: refer-up, urgency emergency (priority stat)" in result.output
    assert "NEWS2 total 10" in result.output
    assert "news2-high:" in result.output and "news2-medium:" in result.output
