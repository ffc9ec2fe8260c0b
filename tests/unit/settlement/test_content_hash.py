"""The idempotency fingerprint of a claim: its meaning, not its spelling."""

from __future__ import annotations

from decimal import Decimal

from referral_service.fhir import jsonio
from referral_service.services.settlement import canonical, content_hash


def _claim(text: str) -> dict:
    return dict(jsonio.loads(text.encode()))


BASE = '{"resourceType": "Claim", "created": "2026-03-10", "item": [{"net": {"value": 27000.00}}]}'


def test_numbers_keys_white_space_and_created_do_not_count() -> None:
    same = [
        '{"item":[{"net":{"value":27000}}],"resourceType":"Claim","created":"2026-03-10"}',
        '{"resourceType": "Claim", "item": [{"net": {"value": 2.7e4}}], "created": "2026-03-11T08:00:00Z"}',
        '{"resourceType": "Claim", "item": [{"net": {"value": 27000.0000}}], "id": "x", "meta": {}}',
    ]
    for text in same:
        assert content_hash(_claim(text)) == content_hash(_claim(BASE)), text


def test_real_changes_count() -> None:
    for text in (
        '{"resourceType": "Claim", "item": [{"net": {"value": 27000.01}}]}',
        '{"resourceType": "Claim", "item": [{"net": {"value": "27000"}}]}',  # a string is not a number
        '{"resourceType": "Claim", "item": [{"net": {"value": 27000}}, {"net": {"value": 0}}]}',
        '{"resourceType": "Claim", "item": [{"net": {"value": 27000}}], "status": "active"}',
    ):
        assert content_hash(_claim(text)) != content_hash(_claim(BASE)), text


def test_canonical_numbers() -> None:
    assert canonical([-0.0, Decimal("-0.00"), 0]) == [Decimal(0)] * 3
    assert canonical({"a": [True, None, "1.0", 1.50]}) == {"a": [True, None, "1.0", Decimal("1.5")]}
    assert canonical(Decimal("1e999999")) == Decimal("1e999999")
