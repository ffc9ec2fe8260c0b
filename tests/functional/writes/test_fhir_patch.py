"""FHIR PATCH with JSON Patch (RFC 6902) over HTTP on both engines: the patched resource is stored
as a PUT of it would be (validation, versions, headers, If-Match, Prefer, scopes, audit, hooks), and
in transaction and batch Bundles as a Binary (FHIR http.html#patch, #transaction)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.functional.fhir_helpers import (
    FHIR,
    JSON_PATCH,
    RESIDENT_ID,
    Fhir,
    patient,
    token_for,
)
from tests.functional.test_referral_workflow import _first_visit, _one, county  # noqa: F401 - fixture

PID_1 = "620421199003070021"
PID_2 = "620421198505050077"
PHONE = [{"system": "phone", "value": "13800000000"}]




@pytest.fixture
def pid(his: Fhir) -> str:
    created = his.post("Patient", patient(PID_1))
    assert created.status_code == 201, created.json
    return str(created.json["id"])


def _version(fhir: Fhir, path: str) -> str:
    return str(fhir.get(path).json["meta"]["versionId"])


def test_a_patch_is_stored_as_a_new_version_as_an_update_would_be(his: Fhir, pid: str) -> None:
    operations = [
        {"op": "test", "path": "/gender", "value": "female"},
        {"op": "add", "path": "/telecom", "value": PHONE},
        {"op": "replace", "path": "/name/0/given/0", "value": "芳芳"},
    ]
    patched = his.patch(f"Patient/{pid}", operations)
    assert patched.status_code == 200, patched.json
    assert patched.mimetype == FHIR
    assert patched.json["telecom"] == PHONE
    assert patched.json["name"][0]["given"] == ["芳芳"]
    assert patched.json["meta"]["versionId"] == "2"
    assert patched.headers["ETag"] == 'W/"2"'
    assert patched.headers["Location"].endswith(f"/fhir/Patient/{pid}/_history/2")
    assert patched.headers["Last-Modified"].endswith(" GMT")
    assert his.get(f"Patient/{pid}").json == patched.json
    assert "telecom" not in his.get(f"Patient/{pid}/_history/1").json
    history = his.get(f"Patient/{pid}/_history").json
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    # The search indexes are those of the new version.
    assert his.get("Patient?given=芳芳").json["total"] == 1
    assert his.get("Patient?given:exact=芳").json["total"] == 0


def test_if_match_and_prefer_work_as_for_a_put(his: Fhir, pid: str) -> None:
    phone = [{"op": "add", "path": "/telecom", "value": PHONE}]
    assert his.patch(f"Patient/{pid}", phone, headers={"If-Match": 'W/"1"'}).status_code == 200
    stale = his.patch(f"Patient/{pid}", [{"op": "remove", "path": "/telecom"}], headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412, stale.json
    assert stale.json["resourceType"] == "OperationOutcome"
    assert his.get(f"Patient/{pid}").json["telecom"] == PHONE
    # A stale client is told so before its patch is tried on a version it was not written for.
    gone_path = [{"op": "remove", "path": "/nothing-here"}]
    assert his.patch(f"Patient/{pid}", gone_path, headers={"If-Match": 'W/"1"'}).status_code == 412
    minimal = his.patch(f"Patient/{pid}", [{"op": "remove", "path": "/telecom"}],
                        headers={"If-Match": '"2"', "Prefer": "return=minimal"})
    assert minimal.status_code == 200
    assert minimal.data == b""
    assert minimal.headers["ETag"] == 'W/"3"'
    assert minimal.headers["Location"].endswith(f"/Patient/{pid}/_history/3")
    full = his.patch(f"Patient/{pid}", phone, headers={"If-Match": "*", "Prefer": "return=representation"})
    assert full.status_code == 200 and full.json["meta"]["versionId"] == "4"
    # A test of meta.versionId is a patch-level If-Match (the version it was written against).
    guarded = [{"op": "test", "path": "/meta/versionId", "value": "4"}, {"op": "remove", "path": "/telecom"}]
    assert his.patch(f"Patient/{pid}", guarded).status_code == 200
    assert his.patch(f"Patient/{pid}", guarded).status_code == 422


@pytest.mark.parametrize(
    "body",
    [
        b'{"op": "add", "path": "/telecom", "value": []}',  # one operation, not an array of them
        b'[{"op": "merge", "path": "/gender", "value": "male"}]',
        b'[{"path": "/gender", "value": "male"}]',
        b'[{"op": "add", "path": "gender", "value": "male"}]',  # no JSON Pointer
        b'[{"op": "add", "path": "/name/~2", "value": "x"}]',
        b'[{"op": "replace", "path": "/gender"}]',  # no value
        b'[{"op": "move", "path": "/gender"}]',  # no from
        b'[{"op": "copy", "from": 7, "path": "/gender"}]',
        b'["add", "/gender"]',
        b'[{"op": "add", "path": "/gender", "value": "male"}',  # not JSON
        b'[{"op": "add", "path": "/name/0/family", "value": "\\u0000"}]',  # no FHIR string holds NUL
        b"",
    ],
)
def test_a_body_that_is_no_json_patch_is_400_and_changes_nothing(his: Fhir, pid: str, body: bytes) -> None:
    response = his.client.patch(f"/fhir/Patient/{pid}", data=body, content_type=JSON_PATCH,
                                headers={"Authorization": f"Bearer {his.token}"})
    assert response.status_code == 400, response.json
    assert response.json["resourceType"] == "OperationOutcome"
    assert _version(his, f"Patient/{pid}") == "1"


@pytest.mark.parametrize(
    ("operations", "expression", "code"),
    [
        ([{"op": "remove", "path": "/telecom"}], "Patient.telecom", "processing"),
        ([{"op": "replace", "path": "/name/3/family", "value": "李"}], "Patient.name[3].family",
         "processing"),
        ([{"op": "add", "path": "/name/0/given/5", "value": "芳"}], "Patient.name[0].given[5]", "processing"),
        ([{"op": "add", "path": "/gender/code", "value": "x"}], "Patient.gender.code", "processing"),
        ([{"op": "move", "from": "/telecom", "path": "/contact"}], "Patient.contact", "processing"),
        ([{"op": "test", "path": "/gender", "value": "male"}], "Patient.gender", "conflict"),
        ([{"op": "test", "path": "/deceasedBoolean", "value": False}], "Patient.deceasedBoolean", "conflict"),
        # The first operation applies, the second does not: nothing of the patch is stored.
        ([{"op": "add", "path": "/telecom", "value": PHONE}, {"op": "remove", "path": "/photo"}],
         "Patient.photo", "processing"),
    ],
)
def test_a_patch_that_cannot_be_applied_is_422_naming_the_operation(
    his: Fhir, pid: str, operations: list[dict[str, Any]], expression: str, code: str
) -> None:
    response = his.patch(f"Patient/{pid}", operations)
    assert response.status_code == 422, response.json
    issue = response.json["issue"][0]
    assert issue["expression"] == [expression]
    assert issue["code"] == code
    assert f"JSON Patch operation {len(operations) - 1}" in issue["diagnostics"]
    assert _version(his, f"Patient/{pid}") == "1"
    assert "telecom" not in his.get(f"Patient/{pid}").json


def test_a_patch_that_would_grow_the_resource_beyond_a_writes_limit_is_422(his: Fhir, pid: str) -> None:
    """Each copy of a list into itself doubles it: 40 operations (2 kB) would ask for terabytes."""
    seed = [{"op": "add", "path": "/telecom", "value": [{"system": "phone", "value": "1" * 200}]}]
    doubling = [{"op": "copy", "from": "/telecom", "path": "/telecom/-"}] * 40
    response = his.patch(f"Patient/{pid}", seed + doubling)
    assert response.status_code == 422, response.json
    issue = response.json["issue"][0]
    assert issue["code"] == "too-costly" and "larger than 20 MiB" in issue["diagnostics"]
    assert _version(his, f"Patient/{pid}") == "1"


@pytest.mark.parametrize(
    ("operations", "expression"),
    [
        ([{"op": "replace", "path": "/id", "value": "another"}], "Patient.id"),
        ([{"op": "remove", "path": "/id"}], "Patient.id"),
        ([{"op": "replace", "path": "/resourceType", "value": "Practitioner"}], "Patient.resourceType"),
        ([{"op": "remove", "path": "/resourceType"}], "Patient.resourceType"),
        ([{"op": "replace", "path": "", "value": []}], "Patient.resourceType"),
    ],
)
def test_a_patch_that_changes_id_or_resource_type_is_400(
    his: Fhir, pid: str, operations: list[dict[str, Any]], expression: str
) -> None:
    response = his.patch(f"Patient/{pid}", operations)
    assert response.status_code == 400, response.json
    assert response.json["issue"][0]["expression"] == [expression]
    assert _version(his, f"Patient/{pid}") == "1"
    assert his.get("Patient/another").status_code == 404


@pytest.mark.parametrize(
    ("operations", "status", "expression"),
    [
        ([{"op": "replace", "path": "/gender", "value": "femail"}], 422, None),  # binding
        ([{"op": "replace", "path": "/gender", "value": 7}], 400, "Patient.gender"),
        ([{"op": "replace", "path": "/birthDate", "value": "1990-13-45"}], 400, "Patient.birthDate"),
        ([{"op": "add", "path": "/unknownElement", "value": 1}], 400, None),
        ([{"op": "add", "path": "/telecom", "value": []}], 400, "Patient.telecom"),
        ([{"op": "replace", "path": "/birthDate", "value": "2999-01-01"}], 422, "Patient.birthDate"),
        ([{"op": "replace", "path": "/identifier/0/value", "value": "620421199003070022"}], 422, None),
        ([{"op": "add", "path": "/managingOrganization", "value": {"reference": "Organization/nowhere"}}],
         422, None),
        ([{"op": "add", "path": "/managingOrganization", "value": {"reference": "Organization/"}}],
         422, "Patient.managingOrganization.reference"),
    ],
)
def test_the_patched_resource_is_validated_as_a_put_body(
    his: Fhir, pid: str, operations: list[dict[str, Any]], status: int, expression: str | None
) -> None:
    response = his.patch(f"Patient/{pid}", operations)
    assert response.status_code == status, response.json
    assert response.json["resourceType"] == "OperationOutcome"
    if expression is not None:
        assert [expression] in [issue.get("expression") for issue in response.json["issue"]]
    assert _version(his, f"Patient/{pid}") == "1"


def test_a_conditional_reference_in_a_patch_is_resolved(his: Fhir, pid: str) -> None:
    value = {"reference": "Organization?_id=th-01"}
    patched = his.patch(f"Patient/{pid}", [{"op": "add", "path": "/managingOrganization", "value": value}])
    assert patched.status_code == 200, patched.json
    assert patched.json["managingOrganization"] == {"reference": "Organization/th-01"}
    assert his.get("Patient?organization=Organization/th-01").json["total"] == 1


@pytest.mark.parametrize(
    ("content_type", "body", "named"),
    [
        (FHIR, {"resourceType": "Parameters", "parameter": [{"name": "operation"}]}, "FHIRPath Patch"),
        ("application/json", {"resourceType": "Parameters"}, "FHIRPath Patch"),
        ("application/merge-patch+json", {"gender": "male"}, "JSON Merge Patch"),
        ("text/plain", [{"op": "remove", "path": "/gender"}], "text/plain"),
        ("application/fhir+xml", "<Parameters/>", "XML Patch"),
    ],
)
def test_other_patch_formats_are_415_naming_the_one_supported(
    his: Fhir, pid: str, content_type: str, body: Any, named: str
) -> None:
    response = his.patch(f"Patient/{pid}", body, content_type=content_type)
    assert response.status_code == 415, response.json
    issue = response.json["issue"][0]
    assert issue["code"] == "not-supported"
    assert named in issue["diagnostics"] and JSON_PATCH in issue["diagnostics"]
    empty = his.client.patch(f"/fhir/Patient/{pid}", content_type=content_type,
                             headers={"Authorization": f"Bearer {his.token}"})
    assert empty.status_code == 415  # (an empty body passes the check made before routing)
    assert _version(his, f"Patient/{pid}") == "1"
    with_charset = his.patch(f"Patient/{pid}", [{"op": "add", "path": "/telecom", "value": PHONE}],
                             content_type=f"{JSON_PATCH}; charset=utf-8")
    assert with_charset.status_code == 200, with_charset.json


def test_unknown_hidden_and_deleted_resources(his: Fhir, other_his: Fhir, pid: str) -> None:
    operations = [{"op": "add", "path": "/telecom", "value": PHONE}]
    unknown = his.patch("Patient/never-was", operations)
    assert unknown.status_code == 404, unknown.json
    assert his.patch("Spaceship/1", operations).status_code == 404
    assert his.patch("Patient/not%20an%20id", operations).status_code == 404
    # Another township's patient: as unknown to th-01 as one that never was, and left as it is.
    theirs = other_his.post("Patient", patient(PID_2, gender="male", birth="1985-05-05", gp="th-02"))
    assert theirs.status_code == 201, theirs.json
    hidden = his.patch(f"Patient/{theirs.json['id']}", operations)
    assert hidden.status_code == 404, hidden.json
    assert hidden.json["issue"][0]["code"] == unknown.json["issue"][0]["code"]
    assert "telecom" not in other_his.get(f"Patient/{theirs.json['id']}").json
    assert his.delete(f"Patient/{pid}").status_code == 204
    gone = his.patch(f"Patient/{pid}", operations)
    assert gone.status_code == 410, gone.json
    assert gone.json["issue"][0]["code"] == "deleted"


def test_who_may_patch_what(
    client: FlaskClient, make_api_client: Callable[..., tuple[str, str]], his: Fhir, pid: str
) -> None:
    operations = [{"op": "add", "path": "/telecom", "value": PHONE}]
    # Organizations are written by the platform only; ClaimResponses by nobody; our profiles ship.
    org = his.patch("Organization/th-01", [{"op": "replace", "path": "/name", "value": "改名"}])
    assert org.status_code == 403, org.json
    assert his.patch("ClaimResponse/x", operations).status_code == 403
    assert his.patch("StructureDefinition/x", operations).status_code == 405
    # The update permission (SMART `u`) is what a patch needs.
    cid, secret = make_api_client("reader", "system/Patient.crs", "th-01")
    reader = Fhir(client, token_for(client, cid, secret))
    refused = reader.patch(f"Patient/{pid}", operations)
    assert refused.status_code == 403, refused.json
    cid, secret = make_api_client("updater", "system/Patient.u", "th-01")
    updater = Fhir(client, token_for(client, cid, secret))
    assert updater.patch(f"Patient/{pid}", operations).status_code == 200
    assert _version(his, f"Patient/{pid}") == "2"


def test_a_patch_is_audited_as_a_write_and_a_failed_one_is_not(platform: Fhir, his: Fhir, pid: str) -> None:
    assert his.patch(f"Patient/{pid}", [{"op": "add", "path": "/telecom", "value": PHONE}]).status_code == 200
    assert his.patch(f"Patient/{pid}", [{"op": "remove", "path": "/photo"}]).status_code == 422
    events = platform.get("AuditEvent?agent-name=township-his").json["entry"]
    actions = [(e["resource"]["action"], e["resource"]["subtype"][0]["code"]) for e in events]
    assert actions == [("U", "patch"), ("C", "create")]
    assert events[0]["resource"]["entity"][0]["what"]["reference"] == f"Patient/{pid}"


def test_patching_a_referral_to_active_sends_it_as_a_put_does(county: dict[str, Fhir]) -> None:  # noqa: F811
    clinic, hospital = county["township-his"], county["county-his"]
    pid, _eid, gr = _first_visit(county)
    sr_id = gr["result"]["reference"].split("/")[1]
    task = _one(clinic, f"Task?focus=ServiceRequest/{sr_id}")
    assert task["status"] == "draft"
    sent = clinic.patch(f"ServiceRequest/{sr_id}", [{"op": "replace", "path": "/status", "value": "active"}])
    assert sent.status_code == 200, sent.json
    assert _one(hospital, "Task?owner=Organization/hosp&status=requested")["id"] == task["id"]
    assert _one(clinic, f"EpisodeOfCare?patient=Patient/{pid}")["status"] == "active"
    # The referral's own rules hold for a patch too: changing the urgency of a sent one needs a reason,
    # and the new urgency becomes the open Task's.
    routine = [{"op": "replace", "path": "/priority", "value": "routine"}]
    refused = clinic.patch(f"ServiceRequest/{sr_id}", routine)
    assert refused.status_code == 422, refused.json
    assert refused.json["issue"][0]["expression"] == ["ServiceRequest.note"]
    noted = clinic.patch(f"ServiceRequest/{sr_id}", [*routine, {"op": "add", "path": "/note",
                                                                "value": [{"text": "病情稳定"}]}])
    assert noted.status_code == 200, noted.json
    assert clinic.get(f"Task/{task['id']}").json["priority"] == "routine"


def _binary(operations: Any, content_type: str = JSON_PATCH) -> dict[str, Any]:
    data = base64.b64encode(json.dumps(operations).encode()).decode()
    return {"resourceType": "Binary", "contentType": content_type, "data": data}


def _patch_entry(url: str, resource: Any) -> dict[str, Any]:
    return {"resource": resource, "request": {"method": "PATCH", "url": url}}


def test_patch_entries_of_a_transaction(his: Fhir, pid: str) -> None:
    encounter = "urn:uuid:8a3c1b5e-0c6b-4f5e-9d3e-2a3c1b5e7f90"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        _patch_entry(f"Patient/{pid}", _binary([
            {"op": "add", "path": "/telecom", "value": PHONE},
            {"op": "add", "path": "/link",
             "value": [{"other": {"reference": f"Patient/{pid}"}, "type": "seealso"}]},
        ])),
        {"fullUrl": encounter, "request": {"method": "POST", "url": "Encounter"}, "resource": {
            "resourceType": "Encounter", "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": f"Patient/{pid}"},
            "serviceProvider": {"reference": "Organization/th-01"}}},
    ]}
    answer = his.post("", bundle)
    assert answer.status_code == 200, answer.json
    first = answer.json["entry"][0]
    assert first["response"]["status"] == "200 OK"
    assert first["response"]["etag"] == 'W/"2"'
    assert first["response"]["location"] == f"Patient/{pid}/_history/2"
    assert first["resource"]["telecom"] == PHONE
    assert his.get(f"Patient/{pid}").json["telecom"] == PHONE
    minimal = his.post("", {"resourceType": "Bundle", "type": "transaction", "entry": [
        _patch_entry(f"Patient/{pid}", _binary([{"op": "remove", "path": "/link"}]))]},
        headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 200, minimal.json
    assert "resource" not in minimal.json["entry"][0]
    assert minimal.json["entry"][0]["response"]["etag"] == 'W/"3"'
    # One entry's patch cannot be applied: the transaction fails whole, with its 422.
    failing = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient(PID_2, gender="male", birth="1985-05-05"),
         "request": {"method": "POST", "url": "Patient"}},
        _patch_entry(f"Patient/{pid}", _binary([{"op": "remove", "path": "/photo"}])),
    ]}
    refused = his.post("", failing)
    assert refused.status_code == 422, refused.json
    assert "Bundle.entry[1]" in refused.json["issue"][0]["diagnostics"]
    assert his.get(f"Patient?identifier={RESIDENT_ID}|{PID_2}").json["total"] == 0
    assert _version(his, f"Patient/{pid}") == "3"


def test_a_patch_entry_may_reference_what_the_transaction_creates(his: Fhir, pid: str) -> None:
    org = "urn:uuid:0c6b1c4e-8a0c-4f5e-9d3e-2a3c1b5e7f91"
    value = {"reference": org}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        _patch_entry(f"Patient/{pid}",
                     _binary([{"op": "add", "path": "/managingOrganization", "value": value}])),
        {"fullUrl": org, "resource": {**patient(PID_2, gender="male", birth="1985-05-05")},
         "request": {"method": "POST", "url": "Patient"}},
    ]}
    # (a Patient cannot manage a Patient: the element's type rules still hold on the patched resource)
    assert his.post("", bundle).status_code == 400
    link = {"other": {"reference": org}, "type": "seealso"}
    linked = _binary([{"op": "add", "path": "/link", "value": [link]}])
    bundle["entry"][0] = _patch_entry(f"Patient/{pid}", linked)
    answer = his.post("", bundle)
    assert answer.status_code == 200, answer.json
    created = answer.json["entry"][1]["resource"]["id"]
    assert his.get(f"Patient/{pid}").json["link"][0]["other"] == {"reference": f"Patient/{created}"}


@pytest.mark.parametrize(
    ("resource", "status"),
    [
        ({"resourceType": "Parameters", "parameter": [{"name": "operation"}]}, 415),  # FHIRPath Patch
        (_binary([{"op": "remove", "path": "/gender"}], "application/json"), 415),
        ({"resourceType": "Binary", "contentType": JSON_PATCH, "data": "not base64!"}, 400),
        ({"resourceType": "Binary", "contentType": JSON_PATCH}, 400),
        (_binary({"op": "remove", "path": "/gender"}), 400),
        ({"resourceType": "Basic"}, 400),
        (None, 400),
    ],
)
def test_malformed_patch_entries_are_4xx(his: Fhir, pid: str, resource: Any, status: int) -> None:
    entry = _patch_entry(f"Patient/{pid}", resource)
    if resource is None:
        del entry["resource"]
    for kind in ("transaction", "batch"):
        answer = his.post("", {"resourceType": "Bundle", "type": kind, "entry": [entry]})
        if kind == "transaction":
            assert answer.status_code == status, answer.json
            assert answer.json["resourceType"] == "OperationOutcome"
        else:
            assert answer.status_code == 200, answer.json
            assert answer.json["entry"][0]["response"]["status"] == str(status)
    assert _version(his, f"Patient/{pid}") == "1"


def test_patch_entries_of_a_batch_answer_each_on_its_own(his: Fhir, other_his: Fhir, pid: str) -> None:
    theirs = other_his.post("Patient", patient(PID_2, gender="male", birth="1985-05-05", gp="th-02"))
    their_id = theirs.json["id"]
    phone = _binary([{"op": "add", "path": "/telecom", "value": PHONE}])
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        _patch_entry(f"Patient/{pid}", phone),
        _patch_entry(f"Patient/{their_id}", phone),
        _patch_entry("Patient/never-was", phone),
        _patch_entry(f"Patient/{pid}", _binary([{"op": "test", "path": "/gender", "value": "male"}])),
        _patch_entry(f"Patient?identifier={RESIDENT_ID}|{PID_1}",
                     _binary([{"op": "replace", "path": "/telecom/0/value", "value": "13900000000"}])),
    ]}
    answer = his.post("", bundle)
    assert answer.status_code == 200, answer.json
    statuses = [e["response"]["status"] for e in answer.json["entry"]]
    assert statuses == ["200 OK", "404", "404", "422", "200 OK"]
    assert his.get(f"Patient/{pid}").json["telecom"] == [{"system": "phone", "value": "13900000000"}]
    assert "telecom" not in other_his.get(f"Patient/{their_id}").json


def test_conditional_patch(his: Fhir, other_his: Fhir, pid: str) -> None:
    """PATCH Type?criteria (http.html#patch): the one match the client sees; none 404, several 412."""
    operations = [{"op": "add", "path": "/telecom", "value": PHONE}]
    patched = his.patch(f"Patient?identifier={RESIDENT_ID}|{PID_1}", operations)
    assert patched.status_code == 200, patched.json
    assert patched.json["id"] == pid and patched.json["telecom"] == PHONE
    assert patched.headers["Location"].endswith(f"/Patient/{pid}/_history/2")
    assert his.patch(f"Patient?identifier={RESIDENT_ID}|{PID_2}", operations).status_code == 404
    other_his.post("Patient", patient(PID_2, gender="male", birth="1985-05-05", gp="th-02"))
    assert his.patch(f"Patient?identifier={RESIDENT_ID}|{PID_2}", operations).status_code == 404  # not seen
    assert his.post("Patient", patient(None, family="李")).status_code == 201
    assert his.post("Patient", patient(None, family="李")).status_code == 201
    several = his.patch("Patient?family=李", operations)
    assert several.status_code == 412, several.json
    for criteria in ("", "?_format=json", "?_count=1"):
        empty = his.patch(f"Patient{criteria}", operations)
        assert empty.status_code == 400, (criteria, empty.json)
    assert his.patch("Patient?colour=blue", operations).status_code == 400
