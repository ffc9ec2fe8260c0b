"""A policy that changes on a validity date: each claim uses the one in force on its discharge date."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from flask.testing import FlaskClient

from referral_service.config import PROJECT_ROOT
from referral_service.services import settlement
from tests.functional.settlement_helpers import County, claim, components


@pytest.fixture
def switching_policies(tmp_path: Path) -> Iterator[None]:
    source = PROJECT_ROOT / "config" / "policies" / "qingshan-2018.yaml"
    old = yaml.safe_load(source.read_text(encoding="utf-8"))
    old["valid_to"] = "2025-12-31"
    new = dict(old, id="qingshan-2026", version="1", valid_from="2026-01-01", valid_to=None)
    new["basic_insurance"] = dict(old["basic_insurance"])
    new["basic_insurance"]["inpatient"] = dict(old["basic_insurance"]["inpatient"])
    new["basic_insurance"]["inpatient"]["ratio"] = dict(old["basic_insurance"]["inpatient"]["ratio"],
                                                        county="0.85")
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(old, allow_unicode=True), encoding="utf-8")
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(new, allow_unicode=True), encoding="utf-8")
    settlement.configure(tmp_path)
    try:
        yield
    finally:
        settlement.configure(PROJECT_ROOT / "config" / "policies")


def test_policy_switches_on_its_validity_date(
    client: FlaskClient, make_api_client: Callable[..., tuple[str, str]], switching_policies: None
) -> None:
    county = County(client, make_api_client)
    pid, cov = county.patient()
    hosp = county.his["hosp"]
    before = hosp.post("Claim/$submit", claim(pid, cov, "hosp", [("10500.00", "A")], discharge="2025-12-31"))
    after = hosp.post("Claim/$submit", claim(pid, cov, "hosp", [("10500.00", "A")], discharge="2026-01-01"))
    assert components(before.json)["basic-insurance"] == Decimal("8000.00")  # (10500 - 500) * 0.80
    assert components(after.json)["basic-insurance"] == Decimal("8500.00")  # new year, 0.85
    ids = [e["extension"][0]["extension"] for e in (before.json, after.json)]
    assert [i[0]["valueString"] for i in ids] == ["qingshan-2018", "qingshan-2026"]
