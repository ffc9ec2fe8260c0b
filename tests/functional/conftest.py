"""Client fixtures shared by the functional tests that do not define their own (the write tests,
`$everything`): the county platform, which registers two townships' clinics, and each township's
HIS (what one registers, the other does not see)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask.testing import FlaskClient

from tests.functional.fhir_helpers import Fhir, organization, token_for


@pytest.fixture
def platform(client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]) -> Fhir:
    cid, secret = make_api_client("county-platform", "system/*.cruds", "qs-health-commission")
    fhir = Fhir(client, token_for(client, cid, secret))
    for org_id in ("th-01", "th-02"):
        assert fhir.put(f"Organization/{org_id}", organization(org_id)).status_code == 201
    return fhir


@pytest.fixture
def his(client: FlaskClient, make_api_client: Callable[..., tuple[str, str]], platform: Fhir) -> Fhir:
    cid, secret = make_api_client("township-his", "system/*.cruds", "th-01")
    return Fhir(client, token_for(client, cid, secret))


@pytest.fixture
def other_his(client: FlaskClient, make_api_client: Callable[..., tuple[str, str]], platform: Fhir) -> Fhir:
    """Another township's HIS (th-02): what it registers, th-01 does not see."""
    cid, secret = make_api_client("township2-his", "system/*.cruds", "th-02")
    return Fhir(client, token_for(client, cid, secret))

