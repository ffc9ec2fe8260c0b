"""Every rule id a decision can carry is a code of the published CodeSystem referral-rule (en and zh).

A decision lists the ids of the rules that fired in GuidanceResponse.reasonCode with the system
{base}/CodeSystem/referral-rule (DESIGN section 4), so each id of every shipped rule file, and the
codes the referral workflow adds itself, must be concepts of fhir_profiles/CodeSystem-referral-rule.json.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from referral_service.fhir import codes, profiles
from referral_service.rules import load_rule_set
from tests.unit.rules.conftest import CONFIG_DIR

RULE_FILES = sorted(
    p
    for p in CONFIG_DIR.iterdir()
    if p.suffix in (".yaml", ".yml", ".json") and not p.name.startswith("news2")
)
# Codes the referral workflow writes in reasonCode on its own (not rules of a file).
WORKFLOW_CODES = (codes.ReferralRule.DOWN_REFERRAL_NO_CLINIC.value,)


def _rule_ids(path: Path) -> list[str]:
    return [rule.id for rule in load_rule_set(path).rules]


def test_the_shipped_rule_files_are_found() -> None:
    assert {p.name for p in RULE_FILES} >= {"up-referral.yaml", "down-referral.yaml"}


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_every_rule_id_is_a_code_with_an_english_and_a_chinese_display(path: Path) -> None:
    known = profiles.codes_of(codes.REFERRAL_RULE_SYSTEM)
    for rule_id in _rule_ids(path):
        assert rule_id in known, f"{path.name}: rule {rule_id!r} is not a code of CodeSystem referral-rule"
        english = profiles.display(codes.REFERRAL_RULE_SYSTEM, rule_id, "en")
        chinese = profiles.display(codes.REFERRAL_RULE_SYSTEM, rule_id, "zh-CN")
        assert english and english.isascii(), rule_id
        assert chinese and chinese != english and not chinese.isascii(), rule_id


@pytest.mark.parametrize("code", WORKFLOW_CODES)
def test_the_workflows_own_reason_codes_are_codes_too(code: str) -> None:
    assert code in profiles.codes_of(codes.REFERRAL_RULE_SYSTEM)
    assert profiles.display(codes.REFERRAL_RULE_SYSTEM, code, "zh-CN") != profiles.display(
        codes.REFERRAL_RULE_SYSTEM, code, "en"
    )


def test_up_and_down_defaults_are_different_codes() -> None:
    """`default` means "treat at the township clinic" (up); a discharge's "no down-referral" has its own."""
    up = _rule_ids(CONFIG_DIR / "up-referral.yaml")
    down = _rule_ids(CONFIG_DIR / "down-referral.yaml")
    assert not set(up) & set(down)
    assert up[-1] == "default"
    assert down[-1] == "down-referral-none"
    assert down[0] == "down-referral-dx"
