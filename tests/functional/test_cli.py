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
    unknown = app.test_cli_runner().invoke(args=["rules", "explain", "--encounter", "nope"])
    assert unknown.exit_code == 1 and "Error: Encounter/nope is not known" in unknown.output


def test_policy_check_and_show(app: Flask, tmp_path: Path) -> None:
    runner = app.test_cli_runner()
    ok = runner.invoke(args=["policy", "check"])
    assert ok.exit_code == 0, ok.output
    shown = runner.invoke(args=["policy", "show", "--region", "青山县", "--date", "2026-03-01"])
    assert shown.exit_code == 0
    assert '"id": "qingshan-2018"' in shown.output
    assert '"county": "0.80"' in shown.output
    missing = runner.invoke(args=["policy", "show", "--region", "别县", "--date", "2026-03-01"])
    assert missing.exit_code == 1
    assert "别县" in missing.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: x\nversion: '1'\nregion: 青山县\nvalid_from: 2018-01-01\n", encoding="utf-8")
    refused = runner.invoke(args=["policy", "check", str(bad)])
    assert refused.exit_code == 1
    assert "bad.yaml" in refused.output
