"""Our StructureDefinitions, CodeSystems and ValueSets over HTTP: read with version headers, search."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask.testing import FlaskClient

from referral_service.fhir.codes import BASE
from tests.functional.fhir_helpers import Fhir, token_for


@pytest.fixture
def his(client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]) -> Fhir:
    cid, secret = make_api_client("township-his", "system/*.rs", "org-1")
    return Fhir(client, token_for(client, cid, secret))


def ids(bundle: dict) -> list[str]:
    return sorted(entry["resource"]["id"] for entry in bundle.get("entry", []))


def test_read_carries_version_headers_matching_meta(his: Fhir) -> None:
    response = his.get("CodeSystem/facility-level")
    assert response.status_code == 200
    body = response.json
    assert body["meta"]["versionId"] == "1"
    assert response.headers["ETag"] == 'W/"1"'
    assert response.headers["Last-Modified"].endswith(" GMT")
    assert body["meta"]["lastUpdated"].startswith(body["date"][:10])
    assert his.get("CodeSystem/nope").status_code == 404


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (f"url={BASE}/ValueSet/capability", ["capability"]),
        (f"url={BASE}/ValueSet/capability|1.0.0", ["capability"]),
        (f"url={BASE}/ValueSet/capability|9.9.9", []),
        ("_id=capability,charge-class", ["capability", "charge-class"]),
        ("name=charge", ["charge-class"]),
        ("name:exact=charge", []),
        ("name:contains=LEVEL", ["facility-level"]),
        ("status=retired", []),
        ("identifier=urn:ietf:rfc:3986|x", []),
    ],
)
def test_search_parameters(his: Fhir, query: str, expected: list[str]) -> None:
    response = his.get(f"ValueSet?{query}")
    assert response.status_code == 200, response.json
    assert ids(response.json) == expected
    assert response.json["total"] == len(expected)


def test_status_and_count(his: Fhir) -> None:
    every = his.get("CodeSystem?status=active").json
    assert every["total"] >= 9
    page = his.get("CodeSystem?_count=2").json
    assert page["total"] == every["total"]
    assert len(page["entry"]) == 2
    counted = his.get("CodeSystem?_summary=count").json
    assert counted["total"] == every["total"]
    assert "entry" not in counted  # (FHIR arrays are never empty)


@pytest.mark.parametrize("query", ["foo=bar", "name:missing=true", "url:below=x", "_summary=banana", "_id="])
def test_unknown_parameters_and_modifiers_are_400(his: Fhir, query: str) -> None:
    response = his.get(f"StructureDefinition?{query}")
    assert response.status_code == 400
    assert response.json["resourceType"] == "OperationOutcome"


def test_capability_statement_lists_the_parameters(his: Fhir) -> None:
    statement = his.client.get("/fhir/metadata").json
    entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "StructureDefinition")
    assert {p["name"] for p in entry["searchParam"]} >= {"url", "identifier", "name", "status", "version"}


def test_self_link_repeats_the_query(his: Fhir) -> None:
    bundle = his.get("ValueSet?name=charge").json
    assert bundle["link"][0]["url"].endswith("/fhir/ValueSet?name=charge")


def test_post_search_history_and_read_only(his: Fhir) -> None:
    posted = his.client.post(
        "/fhir/ValueSet/_search", data={"name": "charge"},
        headers={"Authorization": f"Bearer {his.token}"},
    )
    assert posted.status_code == 200, posted.json
    assert ids(posted.json) == ["charge-class"]
    assert his.get("CodeSystem/facility-level/_history/1").json["id"] == "facility-level"
    assert his.get("CodeSystem/facility-level/_history/2").status_code == 404
    history = his.get("CodeSystem/facility-level/_history").json
    assert history["type"] == "history"
    assert [e["resource"]["id"] for e in history["entry"]] == ["facility-level"]
    for method, path in (("put", "CodeSystem/facility-level"), ("delete", "CodeSystem/facility-level"),
                         ("post", "StructureDefinition")):
        response = getattr(his.client, method)(f"/fhir/{path}", json={"resourceType": "CodeSystem"},
                                                headers={"Authorization": f"Bearer {his.token}"})
        assert response.status_code == 405, (method, path, response.json)
        assert response.json["resourceType"] == "OperationOutcome"
