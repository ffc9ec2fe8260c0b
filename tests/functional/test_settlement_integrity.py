"""Settlement integrity (acceptance audit): deleted parties, records a settlement rests on, claims
that must be refused, idempotency on content, the standard $submit input, EOB payers, reversal."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from referral_service.domain.ledger import Settlement, YearAccumulator
from referral_service.extensions import database
from tests.functional.settlement_helpers import County, claim

D = Decimal


@pytest.fixture
def county(client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]) -> County:
    return County(client, make_api_client)


def _nothing_settled() -> None:
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(Settlement)) == 0
        assert s.scalar(select(func.count()).select_from(YearAccumulator)) == 0


@pytest.mark.parametrize("deleted", ["Patient", "Coverage", "Organization"])
def test_a_deleted_patient_coverage_or_provider_is_unknown_to_submit(county: County, deleted: str) -> None:
    pid, cov = county.patient()
    target = {"Patient": f"Patient/{pid}", "Coverage": f"Coverage/{cov}", "Organization": "Organization/hosp"}
    gone = county.platform.delete(target[deleted])
    assert gone.status_code == 204, gone.json
    assert county.platform.get(target[deleted]).status_code == 410
    response = county.platform.post("Claim/$submit", claim(pid, cov, "hosp", [("1000.00", "A")]))
    assert response.status_code == 422, response.json
    expression = {"Patient": "Claim.patient", "Coverage": "Claim.insurance[0].coverage",
                  "Organization": "Claim.provider"}[deleted]
    assert response.json["issue"][0]["expression"] == [expression]
    _nothing_settled()
