"""Server defects found while testing interoperability, kept as regression tests.

Each test states the behaviour FHIR and DESIGN.md section 9 ask for ("never 500 for bad input", "a
duplicate business key: 409", valid FHIR is stored on both engines, absolute references are external).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from referral_service.fhir.codes import BASE
from tests.functional.fhir_helpers import Fhir, organization, patient, token_for
from tests.interop.conftest import PLATFORM_ORG

V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


@pytest.fixture
def platform(client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]) -> Fhir:
    client_id, secret = make_api_client("county-platform", "system/*.cruds", PLATFORM_ORG)
    fhir = Fhir(client, token_for(client, client_id, secret))
    assert fhir.put("Organization/o1", organization("o1")).status_code == 201
    assert fhir.put("Patient/p1", patient(None) | {"id": "p1"}).status_code == 201
    assert fhir.put("Practitioner/d1", {"resourceType": "Practitioner", "id": "d1"}).status_code == 201
    return fhir


def coverage(cid: str, **fields: Any) -> dict[str, Any]:
    return {"resourceType": "Coverage", "id": cid, "status": "active",
            "beneficiary": {"reference": "Patient/p1"}, "payor": [{"reference": "Organization/o1"}], **fields}


def test_reference_to_another_server_is_not_checked_against_local_resources(platform: Fhir) -> None:
    external = {"reference": "http://insurer.example/fhir/Organization/X1"}
    response = platform.put("Coverage/c1", coverage("c1", payor=[external]))
    assert response.status_code == 201, response.json


DUPLICATE_KEYS = [
    ("Practitioner", {"identifier": [{"system": f"{BASE}/sid/practitioner-license", "value": "L-1"}]}),
    ("Organization", organization() | {
        "identifier": [{"system": f"{BASE}/sid/organization-code", "value": "ORG-1"}]}),
    ("Group", {"type": "person", "actual": True,
               "identifier": [{"system": f"{BASE}/sid/household", "value": "HH-1"}]}),
]


@pytest.mark.parametrize(("rtype", "body"), DUPLICATE_KEYS, ids=[k[0] for k in DUPLICATE_KEYS])
def test_duplicate_business_identifier_is_409(platform: Fhir, rtype: str, body: dict[str, Any]) -> None:
    first = platform.put(f"{rtype}/first", {**body, "resourceType": rtype, "id": "first"})
    assert first.status_code == 201, first.json
    second = platform.put(f"{rtype}/second", {**body, "resourceType": rtype, "id": "second"})
    assert second.status_code == 409, second.json
    assert (second.json or {}).get("resourceType") == "OperationOutcome"


def test_same_member_number_at_two_payors_is_fine(platform: Fhir) -> None:
    assert platform.put("Coverage/a", coverage("a", subscriberId="M-1")).status_code == 201
    other_payor = coverage("b", subscriberId="M-1", payor=[{"reference": "Patient/p1"}])  # self-pay
    response = platform.put("Coverage/b", other_payor)
    assert response.status_code == 201, response.json


LONG = [
    ("Patient", "patient address line 150", patient(None) | {
        "address": [{"district": "青山县", "line": ["x" * 150]}]}),
    ("Patient", "patient phone 40", patient(None) | {"telecom": [{"system": "phone", "value": "1" * 40}]}),
    ("Patient", "identifier system 250", patient(None) | {
        "identifier": [{"system": "http://x.example/" + "s" * 250, "value": "1"}]}),
    ("Organization", "organization address line 150", organization() | {
        "address": [{"district": "青山县", "line": ["y" * 150]}]}),
    ("Organization", "organization city 150", organization() | {
        "address": [{"district": "青山县", "city": "c" * 150}]}),
    ("Practitioner", "practitioner phone 40", {"telecom": [{"system": "phone", "value": "1" * 40}]}),
    ("PractitionerRole", "role code 40", {
        "practitioner": {"reference": "Practitioner/d1"}, "organization": {"reference": "Organization/o1"},
        "code": [{"coding": [{"system": "http://x.example", "code": "c" * 40}]}]}),
    ("Coverage", "subscriberId 70", coverage("x", subscriberId="s" * 70)),
    ("Coverage", "reference to a 50-character type", coverage("x", payor=[
        {"reference": "http://x.example/fhir/" + "T" * 50 + "/1"}])),
]


@pytest.mark.parametrize(("rtype", "what", "body"), LONG, ids=[case[1] for case in LONG])
def test_long_strings_are_stored_on_both_engines(
    platform: Fhir, backend: str, request: pytest.FixtureRequest, rtype: str, what: str, body: dict[str, Any]
) -> None:
    """FHIR strings may be long; a registry column of String(n) must not turn them into a 500."""
    response = platform.put(f"{rtype}/long", {**body, "resourceType": rtype, "id": "long"})
    assert response.status_code == 201, response.json
    assert platform.get(f"{rtype}/long").json == response.json


BAD_IDS = {"nul": "%00", "inner-nul": "a%00b", "underscore": "a_b", "65-chars": "x" * 65,
           "chinese": "%E7%8E%8B", "space": "a%20b"}


@pytest.mark.parametrize("bad", BAD_IDS.values(), ids=BAD_IDS.keys())
def test_a_path_id_outside_the_fhir_grammar_is_unknown_not_a_server_error(platform: Fhir, bad: str) -> None:
    """PostgreSQL refused a NUL in the id of GET Patient/%00 with a 500."""
    for path, method in ((f"Patient/{bad}", "get"), (f"Patient/{bad}/_history", "get"),
                         (f"Patient/{bad}/_history/1", "get"), (f"Patient/{bad}", "delete"),
                         (f"Claim/{bad}/$reverse", "post")):
        if method == "get":
            response = platform.get(path)
        elif method == "delete":
            response = platform.delete(path)
        else:
            response = platform.post(path, {"resourceType": "Parameters"})
        # A NUL is refused for the whole request (400); any other id outside the grammar is unknown.
        assert response.status_code == (400 if "%00" in bad else 404), (path, method, response.status_code)
        assert response.json["resourceType"] == "OperationOutcome"
    written = platform.put(f"Patient/{bad}", patient(None))
    assert written.status_code == 400 and written.json["resourceType"] == "OperationOutcome"
    assert platform.get("Patient/p1").status_code == 200  # a well-formed id still answers


def test_bundle_entries_with_ids_outside_the_grammar_answer_per_entry(platform: Fhir) -> None:
    """A batch DELETE of Patient/<NUL> reached SQL (500 on PostgreSQL); a NUL now fails the body (400)."""
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/%00"}},
        {"request": {"method": "DELETE", "url": "Patient/a$b"}},
        {"request": {"method": "PUT", "url": "Patient/a b"}, "resource": {"resourceType": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/p1"}},
    ]}
    answer = platform.post("", batch)
    assert answer.status_code == 200, answer.json
    assert [e["response"]["status"][:3] for e in answer.json["entry"]] == ["404", "404", "400", "200"]
    transaction = {"resourceType": "Bundle", "type": "transaction",
                   "entry": [{"request": {"method": "DELETE", "url": "Patient/a$b"}}]}
    refused = platform.post("", transaction)
    assert refused.status_code == 404 and refused.json["resourceType"] == "OperationOutcome"
    for kind in ("batch", "transaction"):  # no FHIR string holds a NUL: the whole body is refused
        nul = {"resourceType": "Bundle", "type": kind, "entry": [
            {"request": {"method": "GET", "url": "Patient/p1"}},
            {"request": {"method": "DELETE", "url": "Patient/\u0000"}},
        ]}
        refused = platform.post("", nul)
        assert refused.status_code == 400 and refused.json["resourceType"] == "OperationOutcome"
        assert refused.json["issue"][0]["expression"] == ["Bundle.entry[1].request.url"]


def test_an_audit_event_search_with_a_bad_date_is_400(platform: Fhir) -> None:
    for value in ("%00", "2026-13-45", "gtnot-a-date"):
        answer = platform.get(f"AuditEvent?date={value}")
        assert answer.status_code == 400, (value, answer.status_code)
        assert "date" in answer.json["issue"][0]["diagnostics"]


BIG = "99999999999999999999999"  # beyond every integer column (and SQLite's 64 bits)


def test_numbers_too_large_for_an_integer_key_are_unknown_not_a_server_error(platform: Fhir) -> None:
    """vread, AuditEvent read and its cursor sent a 23-digit number to an integer column (500)."""
    assert platform.get(f"Patient/p1/_history/{BIG}").status_code == 404
    assert platform.get("Patient/p1/_history/2147483648").status_code == 404  # one past int4
    assert platform.get("Patient/p1/_history/1").status_code == 200
    assert platform.get(f"AuditEvent/{BIG}").status_code == 404
    assert platform.get(f"AuditEvent?_cursor={BIG}").status_code == 400
