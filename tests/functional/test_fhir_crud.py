"""FHIR interactions over HTTP on both engines: create, read, vread, update, history, delete, errors."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pytest
from flask.testing import FlaskClient

from tests.functional.fhir_helpers import FHIR, RESIDENT_ID, Fhir, organization, patient, token_for

PID_1 = "620421199003070021"
PID_2 = "620421198505050077"


@pytest.fixture
def platform(client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]) -> Fhir:
    cid, secret = make_api_client("county-platform", "system/*.cruds", "qs-health-commission")
    return Fhir(client, token_for(client, cid, secret))


@pytest.fixture
def clinic_org(platform: Fhir) -> str:
    response = platform.put("Organization/th-01", organization("th-01"))
    assert response.status_code == 201, response.json
    return "th-01"


@pytest.fixture
def his(client: FlaskClient, make_api_client: Callable[..., tuple[str, str]], clinic_org: str) -> Fhir:
    cid, secret = make_api_client("township-his", "system/*.cruds", clinic_org)
    return Fhir(client, token_for(client, cid, secret))


def test_create_read_vread_update_history(his: Fhir) -> None:
    created = his.post("Patient", patient(PID_1))
    assert created.status_code == 201, created.json
    pid = created.json["id"]
    assert created.headers["ETag"] == 'W/"1"'
    assert created.headers["Location"].endswith(f"/fhir/Patient/{pid}/_history/1")
    assert created.json["meta"]["versionId"] == "1"
    assert created.mimetype == FHIR

    read = his.get(f"Patient/{pid}")
    assert read.status_code == 200
    assert read.json == created.json
    assert read.headers["Last-Modified"]

    body = read.json | {"gender": "female", "telecom": [{"system": "phone", "value": "13800000000"}]}
    updated = his.put(f"Patient/{pid}", body, headers={"If-Match": 'W/"1"'})
    assert updated.status_code == 200, updated.json
    assert updated.json["meta"]["versionId"] == "2"

    stale = his.put(f"Patient/{pid}", body, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json["resourceType"] == "OperationOutcome"

    v1 = his.get(f"Patient/{pid}/_history/1")
    assert v1.status_code == 200
    assert "telecom" not in v1.json
    history = his.get(f"Patient/{pid}/_history")
    assert history.json["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in history.json["entry"]] == ["2", "1"]
    assert his.get(f"Patient/{pid}/_history/9").status_code == 404


def test_delete_then_read_is_gone(his: Fhir) -> None:
    pid = his.post("Patient", patient(PID_1)).json["id"]
    deleted = his.delete(f"Patient/{pid}")
    assert deleted.status_code == 204
    assert deleted.data == b"" and "Content-Type" not in deleted.headers
    gone = his.get(f"Patient/{pid}")
    assert gone.status_code == 410
    assert gone.json["issue"][0]["code"] == "deleted"
    assert his.delete(f"Patient/{pid}").status_code == 204  # again: nothing more to do
    history = his.get(f"Patient/{pid}/_history")
    assert history.status_code == 200, history.json
    assert [e["request"]["method"] for e in history.json["entry"]] == ["DELETE", "POST"]
    assert "resource" not in history.json["entry"][0]


def test_delete_of_an_unknown_id_is_404(his: Fhir) -> None:
    response = his.delete("Patient/never-was")
    assert response.status_code == 404
    assert response.json["resourceType"] == "OperationOutcome"


def test_prefer_minimal_and_outcome(his: Fhir) -> None:
    minimal = his.post("Patient", patient(PID_1), headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201
    assert minimal.data == b""
    assert minimal.headers["Location"]
    outcome = his.post(
        "Patient",
        patient(PID_2, gender="male", birth="1985-05-05"),
        headers={"Prefer": "return=OperationOutcome"},
    )
    assert outcome.json["resourceType"] == "OperationOutcome"


def test_pretty_output(his: Fhir) -> None:
    pid = his.post("Patient", patient(PID_1)).json["id"]
    assert b"\n  " in his.get(f"Patient/{pid}?_pretty=true").data
    assert b"\n" not in his.get(f"Patient/{pid}").data


def test_conditional_create_returns_the_existing_one(his: Fhir) -> None:
    first = his.post("Patient", patient(PID_1))
    again = his.post(
        "Patient",
        patient(PID_1),
        headers={"If-None-Exist": f"identifier=http://referral-service.example/fhir/sid/resident-id|{PID_1}"},
    )
    assert again.status_code == 200
    assert again.json["id"] == first.json["id"]


@pytest.mark.parametrize("prefix", ["Patient?", "http://localhost/fhir/Patient?", "/Patient?"])
def test_a_condition_may_name_its_type_as_hapi_takes_it(his: Fhir, prefix: str) -> None:
    """`If-None-Exist: Patient?identifier=...` (and a URL ending so) was 400 "unknown search parameter
    'Patient?identifier'"; HAPI reads the criteria after the `?`. Another type is 400, naming it."""
    first = his.post("Patient", patient(PID_1)).json["id"]
    condition = f"{prefix}identifier={RESIDENT_ID}|{PID_1}"
    again = his.post("Patient", patient(PID_1), headers={"If-None-Exist": condition})
    assert again.status_code == 200, again.json
    assert again.json["id"] == first
    request = {"method": "POST", "url": "Patient", "ifNoneExist": condition}
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": patient(PID_1), "request": request}]}
    answered = his.post("", bundle)
    assert answered.status_code == 200, answered.json
    assert answered.json["entry"][0]["resource"]["id"] == first
    other = his.post("Patient", patient(None), headers={"If-None-Exist": "Encounter?identifier=x|y"})
    assert other.status_code == 400, other.json
    assert "Encounter" in other.json["issue"][0]["diagnostics"]
    assert his.post("Patient", patient(None), headers={"If-None-Exist": "Patient?"}).status_code == 400
    assert his.get("Patient").json["total"] == 1


def test_duplicate_resident_id_is_409(his: Fhir) -> None:
    assert his.post("Patient", patient(PID_1)).status_code == 201
    dup = his.post("Patient", patient(PID_1))
    assert dup.status_code == 409
    assert dup.json["issue"][0]["code"] == "duplicate"


def test_invalid_resident_id_is_422_naming_the_field(his: Fhir) -> None:
    response = his.post("Patient", patient("620421199003070022"))
    assert response.status_code == 422
    assert any("identifier" in (i.get("expression") or [""])[0] for i in response.json["issue"])


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"{not json", FHIR, 400),
        (b"\xff\xfe{}", FHIR, 400),
        (b"[1, 2]", FHIR, 400),
        (b'{"resourceType": "Patient"}', "text/plain", 415),
        (b'{"resourceType": "Patient"}', f"{FHIR}; fhirVersion=3.0", 415),  # STU3 JSON: not R4's (201)
        (b'{"resourceType": "Observation", "status": "final"}', FHIR, 400),
        (b'{"resourceType": "Patient", "gender": 7}', FHIR, 400),
        (b'{"resourceType": "Patient", "birthDate": "1990-13-45"}', FHIR, 400),
        (b'{"resourceType": "Patient", "unknownElement": 1}', FHIR, 400),
        (b'{"resourceType": "Patient", "gender": "femail"}', FHIR, 422),
    ],
)
def test_bad_bodies(his: Fhir, data: bytes, content_type: str, status: int) -> None:
    response = his.client.post(
        "/fhir/Patient",
        data=data,
        content_type=content_type,
        headers={"Authorization": f"Bearer {his.token}"},
    )
    assert response.status_code == status, response.json
    assert response.json["resourceType"] == "OperationOutcome"


def test_put_with_other_id_is_400(his: Fhir) -> None:
    response = his.put("Patient/abc", patient(PID_1) | {"id": "xyz"})
    assert response.status_code == 400


def test_put_without_id_in_the_body_is_400_and_writes_nothing(his: Fhir) -> None:
    response = his.put("Patient/abc", patient(PID_1))
    assert response.status_code == 400
    assert response.json["issue"][0]["expression"] == ["Patient.id"]
    assert his.get("Patient/abc").status_code == 404


def test_body_over_limit_is_413(his: Fhir) -> None:
    his.client.application.config["MAX_CONTENT_LENGTH"] = 1000
    response = his.client.post(
        "/fhir/Patient",
        data=b"{" + b" " * 2000 + b"}",
        content_type=FHIR,
        headers={"Authorization": f"Bearer {his.token}"},
    )
    assert response.status_code == 413
    assert response.json["resourceType"] == "OperationOutcome"


def test_unknown_type_and_id(his: Fhir) -> None:
    assert his.get("Spaceship/1").status_code == 404
    assert his.get("Spaceship").status_code == 404
    missing = his.get("Patient/does-not-exist")
    assert missing.status_code == 404
    assert missing.json["issue"][0]["code"] == "not-found"


def test_405_is_an_operation_outcome(his: Fhir) -> None:
    response = his.client.patch("/fhir/metadata", headers={"Authorization": f"Bearer {his.token}"})
    assert response.status_code == 405
    assert response.json["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_an_operation_by_another_method_than_post_is_405(his: Fhir, method: str) -> None:
    """`GET Claim/$submit` was taken for a read of the id '$submit' (404): it is 405 naming POST."""
    headers = {"Authorization": f"Bearer {his.token}", "Content-Type": "application/fhir+json"}
    for path in ("/fhir/Claim/$submit", "/fhir/Patient/$validate"):
        response = his.client.open(path, method=method, headers=headers, data=b"{}")
        assert response.status_code == 405, (path, response.json)
        assert response.headers["Allow"] == "POST"
        assert response.json["resourceType"] == "OperationOutcome"
    assert his.get("Patient/$no-such-operation").status_code == 404


def test_an_operation_on_a_read_only_conformance_type_is_not_405_naming_post(his: Fhir) -> None:
    """`GET ValueSet/$expand`: no operation is POSTed there (the POST reaches only the read-only
    types' refusal), so Allow: POST would send the client to an answer just as refused; it is the
    404 of an unknown id, as for any other operation we do not have."""
    for path in ("ValueSet/$expand", "StructureDefinition/$snapshot", "CodeSystem/$lookup"):
        response = his.get(path)
        assert response.status_code == 404, (path, response.json)
        assert "Allow" not in response.headers


def test_missing_and_bad_tokens(client: FlaskClient, his: Fhir) -> None:
    none = client.get("/fhir/Patient")
    assert none.status_code == 401
    assert none.headers["WWW-Authenticate"].startswith("Bearer")
    assert "invalid_token" not in none.headers["WWW-Authenticate"]
    assert none.json["resourceType"] == "OperationOutcome"
    bad = client.get("/fhir/Patient", headers={"Authorization": "Bearer not.a.token"})
    assert bad.status_code == 401
    assert 'error="invalid_token"' in bad.headers["WWW-Authenticate"]


def test_scope_outside_token_is_403(
    client: FlaskClient, make_api_client: Callable[..., tuple[str, str]], clinic_org: str
) -> None:
    cid, secret = make_api_client("reader", "system/Patient.rs", clinic_org)
    reader = Fhir(client, token_for(client, cid, secret))
    response = reader.post("Patient", patient(PID_1))
    assert response.status_code == 403
    assert reader.get("Encounter").status_code == 403


def test_organizations_are_written_only_by_the_platform(his: Fhir) -> None:
    response = his.post("Organization", organization())
    assert response.status_code == 403


def test_validate_reports_every_problem(his: Fhir) -> None:
    body = patient("620421199003070022") | {"gender": "femail"}
    response = his.post("Patient/$validate", body)
    assert response.status_code == 200
    assert len(response.json["issue"]) >= 2
    ok = his.post("Patient/$validate", patient(PID_1))
    assert ok.json["issue"][0]["severity"] == "information"


def test_if_match_star_updates_any_current_version(his: Fhir) -> None:
    """RFC 9110 13.1.1: `If-Match: *` holds when the resource has a current version (it was 412)."""
    pid = his.post("Patient", patient(PID_1)).json["id"]
    body = his.get(f"Patient/{pid}").json | {"gender": "female"}
    updated = his.put(f"Patient/{pid}", body, headers={"If-Match": "*"})
    assert updated.status_code == 200, updated.json
    assert updated.json["meta"]["versionId"] == "2"
    absent = his.put("Patient/not-yet", patient(None) | {"id": "not-yet"}, headers={"If-Match": "*"})
    assert absent.status_code == 412, absent.json
    assert his.get("Patient/not-yet").status_code == 404
    assert his.delete(f"Patient/{pid}").status_code == 204
    assert his.put(f"Patient/{pid}", body, headers={"If-Match": "*"}).status_code == 412


def test_reference_to_unknown_patient_is_422(his: Fhir) -> None:
    enc = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/nobody"},
        "serviceProvider": {"reference": "Organization/th-01"},
    }
    response = his.post("Encounter", enc)
    assert response.status_code == 422
    assert "Patient/nobody" in response.json["issue"][0]["diagnostics"]


def test_failed_request_leaves_no_rows(his: Fhir) -> None:
    from sqlalchemy import func, select

    from referral_service.domain.fhir_store import StoredResource
    from referral_service.domain.registry import Patient
    from referral_service.extensions import database

    his.post("Patient", patient("620421199003070022"))
    his.post("Patient", {"resourceType": "Patient", "gender": 1})
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(Patient)) == 0
        assert (
            s.scalar(
                select(func.count()).select_from(StoredResource).where(StoredResource.res_type == "Patient")
            )
            == 0
        )


def test_control_characters_are_400_with_the_path(his: Fhir) -> None:
    body = patient(PID_1)
    body["name"][0]["family"] = "王\x00"
    response = his.post("Patient", body)
    assert response.status_code == 400
    assert response.json["issue"][0]["expression"] == ["Patient.name[0].family"]
    body["name"][0]["family"] = "王"
    body["name"][0]["given"] = ["明", "\x1f"]  # deep in a list, the last of C0's controls
    response = his.post("Patient", body)
    assert response.status_code == 400
    assert response.json["issue"][0]["expression"] == ["Patient.name[0].given[1]"]
    body["name"][0]["given"] = ["明\x7f"]  # DEL is not a C0 control: FHIR allows it
    body["name"][0]["family"] = "王\t\r\n"  # tab, CR and LF are allowed
    assert his.post("Patient", body).status_code == 201


def test_deleting_a_patient_frees_its_identity_number(his: Fhir) -> None:
    pid = his.post("Patient", patient(PID_1)).json["id"]
    assert his.post("Patient", patient(PID_1)).status_code == 409
    assert his.delete(f"Patient/{pid}").status_code == 204
    again = his.post("Patient", patient(PID_1))
    assert again.status_code == 201
    assert again.json["id"] != pid


def test_history_count_must_be_ascii_digits(his: Fhir) -> None:
    pid = his.post("Patient", patient(PID_1)).json["id"]
    assert his.get(f"Patient/{pid}/_history?_count=²").status_code == 400


def test_search_by_absolute_reference_matches_nothing_local(his: Fhir) -> None:
    pid = his.post("Patient", patient(PID_1)).json["id"]
    enc = {"resourceType": "Encounter", "status": "in-progress",
           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
           "subject": {"reference": f"Patient/{pid}"}, "serviceProvider": {"reference": "Organization/th-01"}}
    assert his.post("Encounter", enc).status_code == 201
    assert his.get(f"Encounter?subject=Patient/{pid}").json["total"] == 1
    assert his.get(f"Encounter?subject=http://other.example/fhir/Patient/{pid}").json["total"] == 0


def test_resident_number_with_lower_case_x_is_stored_upper_case(his: Fhir) -> None:
    upper = "62042119900307038X"
    created = his.post("Patient", patient(upper.lower()))
    assert created.status_code == 201, created.json
    stored = his.get(f"Patient/{created.json['id']}").json
    assert stored["identifier"][0]["value"] == upper
    for value in (upper, upper.lower()):
        found = his.get(f"Patient?identifier={RESIDENT_ID}|{value}").json
        assert [entry["resource"]["id"] for entry in found.get("entry", [])] == [created.json["id"]], value
    condition = {"If-None-Exist": f"identifier={RESIDENT_ID}|{upper}"}
    again = his.post("Patient", patient(upper), headers=condition)
    assert again.status_code == 200
    assert again.json["id"] == created.json["id"]
    assert his.post("Patient", patient(upper)).status_code == 409


def _post_chunked(base: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST `body` with Transfer-Encoding: chunked over a real socket."""
    import http.client
    from urllib.parse import urlsplit

    connection = http.client.HTTPConnection(urlsplit(base).netloc, timeout=30)
    try:
        chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
        connection.request("POST", path, body=chunks, headers=headers, encode_chunked=True)
        response = connection.getresponse()
        return response.status, response.read()
    except (BrokenPipeError, ConnectionResetError):  # the server may answer before reading it all
        return 413, b""
    finally:
        connection.close()


def test_chunked_body_over_limit_is_413_and_under_it_is_read_whole(his: Fhir) -> None:
    import json

    from tests.support.live_server import live_server

    app = his.client.application
    body = json.dumps(patient(PID_1)).encode()
    app.config["MAX_CONTENT_LENGTH"] = len(body) + 10
    headers = {"Authorization": f"Bearer {his.token}", "Content-Type": FHIR}
    with live_server(app) as base:
        status, raw = _post_chunked(base, "/fhir/Patient", body + b" " * 11, headers)
        assert status == 413
        if raw:
            assert json.loads(raw)["resourceType"] == "OperationOutcome"
        assert his.get(f"Patient?identifier={RESIDENT_ID}|{PID_1}").json.get("total", 0) == 0
        status, raw = _post_chunked(base, "/fhir/Patient", body + b" " * 10, headers)
        assert status == 201, raw


def test_history_count_zero_has_no_entries(his: Fhir) -> None:
    pid = his.post("Patient", patient(PID_1)).json["id"]
    for path in (f"Patient/{pid}/_history?_count=0", "Patient/_history?_count=0", "AuditEvent?_count=0"):
        response = his.get(path)
        assert response.status_code == 200, path
        assert "entry" not in response.json, path
    assert len(his.get(f"Patient/{pid}/_history?_count=1").json["entry"]) == 1


def _raw_post(his: Fhir, path: str, text: str) -> Any:
    """POST JSON text exactly as written (escapes such as \\ud800 reach the server untouched)."""
    return his.client.post(f"/fhir/{path}", data=text.encode(), content_type=FHIR,
                           headers={"Authorization": f"Bearer {his.token}"})


def _stored_patients() -> int:
    from sqlalchemy import func, select

    from referral_service.domain.fhir_store import StoredResource
    from referral_service.extensions import database

    with database.session() as s:
        return int(s.scalar(select(func.count()).select_from(StoredResource)
                            .where(StoredResource.res_type == "Patient")) or 0)


@pytest.mark.parametrize(
    ("replace", "by", "where"),
    [
        ('"芳"', r'"\ud800"', "Patient.name[0].given[0]"),  # a lone surrogate: UTF-8 cannot encode it
        ('"芳"', r'"x\udfff"', "Patient.name[0].given[0]"),
        ('"芳"', r'"\u0000"', "Patient.name[0].given[0]"),  # NUL: PostgreSQL cannot store it
        ('"芳"', r'"\b"', "Patient.name[0].given[0]"),
        ('"gender"', r'"gen\ud800der"', "Patient"),  # in an element name
    ],
)
def test_lone_surrogates_and_control_escapes_are_400_naming_the_element(
    his: Fhir, replace: str, by: str, where: str
) -> None:
    text = json.dumps(patient(PID_1), ensure_ascii=False)
    response = _raw_post(his, "Patient", text.replace(replace, by, 1))
    assert response.status_code == 400, response.data
    assert response.json["resourceType"] == "OperationOutcome"
    assert response.json["issue"][0]["expression"] == [where]
    assert _stored_patients() == 0


EXT = "http://x.example/e"


@pytest.mark.parametrize(
    ("element", "value", "where"),
    [
        ("gender", None, "Patient.gender"),  # FHIR JSON has no null: leave the element out
        ("telecom", [], "Patient.telecom"),  # nor empty arrays
        ("active", "true", "Patient.active"),  # a boolean is JSON true or false
        ("active", 1, "Patient.active"),
        ("multipleBirthInteger", "2", "Patient.multipleBirthInteger"),  # an integer is a JSON number
        ("multipleBirthInteger", 2.5, "Patient.multipleBirthInteger"),
        ("birthDate", 1990, "Patient.birthDate"),  # a date is a JSON string
        ("contact", [{}], "Patient.contact[0]"),  # no empty objects
        ("extension", [{"url": EXT, "valueBoolean": "false"}], "Patient.extension[0].valueBoolean"),
    ],
)
def test_values_that_are_not_fhir_json_are_400_naming_the_element(
    his: Fhir, element: str, value: Any, where: str
) -> None:
    """fhir.resources (lax) takes "true" for a boolean and null for an absent element; the store
    would serve them back as sent, which no FHIR client can read."""
    body = patient(PID_1) | {element: value}
    response = his.post("Patient", body)
    assert response.status_code == 400, response.json
    assert response.json["resourceType"] == "OperationOutcome"
    assert [i["expression"] for i in response.json["issue"]] == [[where]]
    assert _stored_patients() == 0


def test_null_in_a_primitive_array_paired_with_its_extensions_is_fhir_json(his: Fhir) -> None:
    """A null given name whose extension says why (FHIR json.html#primitive): kept, not a 500."""
    body = patient(PID_1)
    extension = {"extension": [{"url": EXT, "valueString": "x"}]}
    body["name"] = [{"family": "王", "given": [None, "芳"], "_given": [extension, None]}]
    created = his.post("Patient", body)
    assert created.status_code == 201, created.json
    assert his.get(f"Patient/{created.json['id']}").json["name"] == body["name"]
    assert his.get("Patient?name=王芳").json["total"] == 1


def test_surrogate_pairs_tabs_and_escaped_backslashes_are_kept(his: Fhir) -> None:
    text = json.dumps(patient(PID_1), ensure_ascii=True)  # every non-ASCII character as \uXXXX
    text = text.replace(r'"\u82b3"', r'"\u82b3\ud83d\ude00\t\\u0000"', 1)
    created = _raw_post(his, "Patient", text)
    assert created.status_code == 201, created.json
    assert created.json["name"][0]["given"] == ["芳\U0001f600\t\\u0000"]
    assert his.get(f"Patient/{created.json['id']}").json["name"][0]["given"] == ["芳\U0001f600\t\\u0000"]


@pytest.mark.parametrize(
    "text",
    [
        '{"resourceType": "Patient", "gender": "male", "extension": ' + "1" * 4301 + "}",  # > int digits
        '{"resourceType": "Patient", "extension": [' + '{"extension": [' * 60 + "]}" * 60 + "]}",
        '{"resourceType": "Patient", "x": ' + '{"a": ' * 900 + "1" + "}" * 900 + "}",
        '{"resourceType": "Patient", "x": ' + "[" * 100000 + "]" * 100000 + "}",
    ],
)
def test_huge_numbers_and_deep_nesting_are_400(his: Fhir, text: str) -> None:
    response = _raw_post(his, "Patient", text)
    assert response.status_code == 400
    assert "not valid JSON" in response.json["issue"][0]["diagnostics"]
    assert _stored_patients() == 0


@pytest.mark.parametrize(
    ("contained", "message"),
    [
        ({"resourceType": "Nope"}, "unknown resource type 'Nope'"),
        ("x", "must be a JSON object"),
        ({"id": "p"}, "needs a resourceType"),
        ({"resourceType": None}, "needs a resourceType"),
    ],
)
def test_contained_resources_must_be_resources(his: Fhir, contained: Any, message: str) -> None:
    body = patient(PID_1) | {"contained": [contained]}
    for response in (his.post("Patient", body), his.post("Patient/$validate", body)):
        issue = response.json["issue"][0]
        assert issue["expression"] == ["Patient.contained[0]"], response.json
        assert message in issue["diagnostics"]
    assert his.post("Patient", body).status_code == 400
    assert _stored_patients() == 0
    assert his.post("Patient", patient(PID_1) | {"contained": [{"resourceType": "Basic", "id": "b",
                                                              "code": {"text": "x"}}]}).status_code == 201


@pytest.mark.parametrize("parameter", ['"x"', '["x"]', "[1]", "[null]", '[{"name": 5}]', '{"name": "x"}'])
def test_validate_with_malformed_parameters_is_400(his: Fhir, parameter: str) -> None:
    text = f'{{"resourceType": "Parameters", "parameter": {parameter}}}'
    response = _raw_post(his, "Patient/$validate", text)
    assert response.status_code == 400
    assert response.json["issue"][0]["expression"][0].startswith("Parameters.parameter")


def test_a_visit_before_the_patients_birth_is_422_not_500(his: Fhir) -> None:
    pid = his.post("Patient", patient(PID_1, birth="1990-03-07")).json["id"]
    encounter = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{pid}"},
        "serviceProvider": {"reference": "Organization/th-01"},
        "period": {"start": "1989-06-01T09:00:00+08:00", "end": "1989-06-01T10:00:00+08:00"},
    }
    response = his.post("Encounter", encounter)
    assert response.status_code == 422, response.json
    assert response.json["issue"][0]["expression"] == ["Encounter.period.start"]
    assert his.get(f"Encounter?subject=Patient/{pid}").json["total"] == 0


def test_empty_answers_name_no_content_type(his: Fhir) -> None:
    created = his.post("Patient", patient(PID_1), headers={"Prefer": "return=minimal"})
    assert created.status_code == 201 and created.data == b""
    assert "Content-Type" not in created.headers
    options = his.client.options("/fhir/Patient")
    assert "Content-Type" not in options.headers or options.data


@pytest.mark.parametrize(
    ("code", "status"), [("ZZZ", 422), ("I63.", 422), ("i63.9", 201), ("I639", 201), ("J18.900x001", 201)]
)
def test_condition_codes_must_look_like_icd10(his: Fhir, code: str, status: int) -> None:
    pid = his.post("Patient", patient(PID_1)).json["id"]
    condition = {
        "resourceType": "Condition",
        "subject": {"reference": f"Patient/{pid}"},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": code}]},
    }
    response = his.post("Condition", condition)
    assert response.status_code == status, response.json
    if status == 422:
        assert response.json["issue"][0]["expression"] == ["Condition.code.coding[0].code"]


def test_history_bundles_carry_total(his: Fhir) -> None:
    """Instance history always says how many versions it has (all pages together), as HAPI does; a
    type's history says it when its first page holds everything (exact without counting)."""
    pid = his.post("Patient", patient(PID_1)).json["id"]
    body = his.get(f"Patient/{pid}").json
    for phone in ("13800000001", "13800000002"):
        body = his.put(f"Patient/{pid}", body | {"telecom": [{"system": "phone", "value": phone}]}).json
    whole = his.get(f"Patient/{pid}/_history")
    assert whole.json["total"] == 3 and len(whole.json["entry"]) == 3
    paged = his.get(f"Patient/{pid}/_history?_count=1")
    assert paged.json["total"] == 3 and len(paged.json["entry"]) == 1
    second = his.client.get(next(link["url"] for link in paged.json["link"] if link["relation"] == "next"),
                            headers=his._headers())
    assert second.json["total"] == 3 and len(second.json["entry"]) == 1
    assert his.get(f"Patient/{pid}/_history?_count=0").json["total"] == 3
    since = whole.json["entry"][0]["response"]["lastModified"]
    assert his.get(f"Patient/{pid}/_history?_since={since}").json["total"] == 1
    assert his.delete(f"Patient/{pid}").status_code == 204
    assert his.get(f"Patient/{pid}/_history").json["total"] == 4  # the deletion is a version too
    keys = list(his.get(f"Patient/{pid}/_history").json)
    assert keys.index("total") < keys.index("link") < keys.index("entry")  # FHIR's element order

    assert his.get("Patient/_history").json["total"] == 4
    assert "total" not in his.get("Patient/_history?_count=2").json  # more pages: not counted


def test_history_at_lists_the_versions_current_in_the_period(his: Fhir) -> None:
    """FHIR http.html#history `_at`: the versions that were current at some point of the period
    (it was ignored: every version came back)."""
    pid = his.post("Patient", patient(PID_1)).json["id"]
    body = his.get(f"Patient/{pid}").json
    for phone in ("13800000001", "13800000002"):
        time.sleep(0.02)
        body = his.put(f"Patient/{pid}", body | {"telecom": [{"system": "phone", "value": phone}]}).json
    written = {int(e["resource"]["meta"]["versionId"]): datetime.fromisoformat(e["response"]["lastModified"])
               for e in his.get(f"Patient/{pid}/_history").json["entry"]}

    def versions_at(at: str, path: str = f"Patient/{pid}/_history") -> list[int]:
        answer = his.get(f"{path}?_at={quote(at)}")
        assert answer.status_code == 200, answer.json
        return [int(e["resource"]["meta"]["versionId"]) for e in answer.json.get("entry", [])]

    def instant(moment: datetime) -> str:
        return moment.isoformat(timespec="milliseconds")

    assert versions_at(instant(written[2])) == [2]  # version 1 ended as version 2 began
    assert versions_at(instant(written[2] - timedelta(milliseconds=5))) == [1]
    assert versions_at(instant(written[3] + timedelta(days=1))) == [3]
    assert versions_at(str(written[1].year)) == [3, 2, 1]
    assert versions_at(str(written[1].year - 1)) == []
    assert his.get(f"Patient/{pid}/_history?_at={written[1].year - 1}").json["total"] == 0
    assert his.get(f"Patient/{pid}/_history?_at={quote(instant(written[2]))}").json["total"] == 1
    assert versions_at(instant(written[2]), "Patient/_history") == [2]
    assert his.get(f"Patient/{pid}/_history?_at=yesterday").status_code == 400


def test_if_none_match_on_read_and_vread_answers_304(his: Fhir) -> None:
    """RFC 9110 13.1.2 / FHIR http.html#cread: a client's cached version is current: 304 with the
    ETag and no body (on PostgreSQL the plain read is answered before Flask: the same answer)."""
    pid = his.post("Patient", patient(PID_1)).json["id"]
    for path in (f"Patient/{pid}", f"Patient/{pid}/_history/1"):
        for header in ('W/"1"', '"1"', "*", 'W/"7", W/"1"'):
            cached = his.get(path, headers={"If-None-Match": header})
            assert cached.status_code == 304, (path, header)
            assert cached.data == b"", (path, header)
            assert cached.headers["ETag"] == 'W/"1"', (path, header)
            assert "Content-Type" not in cached.headers, (path, header)
        assert his.get(path, headers={"If-None-Match": 'W/"2"'}).status_code == 200, path
    body = his.get(f"Patient/{pid}").json
    assert his.put(f"Patient/{pid}", body | {"gender": "female"}).status_code == 200
    changed = his.get(f"Patient/{pid}", headers={"If-None-Match": 'W/"1"'})
    assert changed.status_code == 200 and changed.headers["ETag"] == 'W/"2"'
    assert changed.json["meta"]["versionId"] == "2"
    assert his.get(f"Patient/{pid}", headers={"If-None-Match": 'W/"2"'}).status_code == 304
    assert his.get(f"Patient/{pid}/_history/1", headers={"If-None-Match": 'W/"1"'}).status_code == 304
    # Errors stay errors: an unknown id is 404, a deleted one 410, whatever the client holds.
    assert his.get("Patient/not-there", headers={"If-None-Match": "*"}).status_code == 404
    assert his.delete(f"Patient/{pid}").status_code == 204
    gone = his.get(f"Patient/{pid}", headers={"If-None-Match": 'W/"2"'})
    assert gone.status_code == 410 and gone.json["resourceType"] == "OperationOutcome"


def test_if_modified_since_on_read_answers_304(his: Fhir) -> None:
    """RFC 9110 13.1.3: If-Modified-Since at or after the version's Last-Modified is 304 (it was
    ignored: 200 every time); an If-None-Match present decides alone; a date that does not parse
    is ignored, as HTTP says."""
    pid = his.post("Patient", patient(PID_1)).json["id"]
    first = his.get(f"Patient/{pid}")
    modified = first.headers["Last-Modified"]
    later = (datetime.strptime(modified, "%a, %d %b %Y %H:%M:%S GMT") + timedelta(hours=1)).strftime(
        "%a, %d %b %Y %H:%M:%S GMT")
    earlier = "Mon, 01 Jan 2024 00:00:00 GMT"
    for path in (f"Patient/{pid}", f"Patient/{pid}/_history/1"):
        for since in (modified, later):
            cached = his.get(path, headers={"If-Modified-Since": since})
            assert cached.status_code == 304, (path, since)
            assert cached.data == b"" and cached.headers["ETag"] == 'W/"1"'
        assert his.get(path, headers={"If-Modified-Since": earlier}).status_code == 200
        assert his.get(path, headers={"If-Modified-Since": "yesterday"}).status_code == 200
        both = {"If-Modified-Since": later, "If-None-Match": 'W/"9"'}
        assert his.get(path, headers=both).status_code == 200
    assert his.get(f"Patient/{pid}?_elements=gender", headers={"If-Modified-Since": later}).status_code == 304
    assert his.get("Patient/not-there", headers={"If-Modified-Since": later}).status_code == 404


@pytest.mark.parametrize(
    ("accept", "query"),
    [
        ("application/xml", ""),
        ("application/fhir+xml", ""),
        ("application/fhir+xml;q=1.0, application/xml;q=0.9", ""),
        ("application/json;q=0, application/fhir+xml", ""),
        ("text/html", ""),
        (FHIR, "_format=xml"),
        (FHIR, "_format=application/fhir%2Bxml"),
        ("application/xml", "_format=text/turtle"),
        (f"{FHIR}; fhirVersion=5.0", ""),  # a FHIR version other than R4's (it was answered in R4)
        (f"{FHIR}; fhirVersion=3.0, application/xml", ""),
    ],
)
def test_formats_other_than_json_are_406(his: Fhir, accept: str, query: str) -> None:
    """FHIR http.html#mime-type: an answer format the server does not speak is 406, as an
    OperationOutcome in JSON (not a JSON answer the client did not ask for)."""
    pid = his.post("Patient", patient(PID_1)).json["id"]
    for path in (f"Patient/{pid}", "Patient", f"Patient/{pid}/_history", "metadata"):
        url = f"{path}?{query}" if query else path
        response = his.get(url, headers={"Accept": accept})
        assert response.status_code == 406, (url, accept)
        assert response.mimetype == FHIR
        assert response.json["resourceType"] == "OperationOutcome"
        assert response.json["issue"][0]["code"] == "not-supported"
        assert "JSON" in response.json["issue"][0]["diagnostics"]
    new = patient(PID_2, gender="male", birth="1985-05-05")
    refused = his.post(f"Patient?{query}" if query else "Patient", new, headers={"Accept": accept})
    assert refused.status_code == 406  # refused before anything is stored
    assert his.get(f"Patient?identifier={RESIDENT_ID}|{PID_2}").json["total"] == 0


@pytest.mark.parametrize(
    "accept",
    [
        None, "", "*/*", "application/json", FHIR, "application/json+fhir", "application/*",
        "application/fhir+json; fhirVersion=4.0", "application/fhir+json; fhirVersion=4.0.1",
        "application/fhir+json; fhirVersion=5.0, application/json", "application/json; charset=utf-8",
        "application/fhir+xml;q=1, application/fhir+json;q=0.5",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    ],
)
def test_json_answers_whenever_the_caller_takes_json(his: Fhir, accept: str | None) -> None:
    pid = his.post("Patient", patient(PID_1)).json["id"]
    headers = {"Authorization": f"Bearer {his.token}"} | ({} if accept is None else {"Accept": accept})
    for path in (f"Patient/{pid}", "Patient", "metadata", f"Patient/{pid}?_format=json",
                 f"Patient/{pid}?_format=application/fhir%2Bjson", f"Patient/{pid}?_format=application/json"):
        response = his.client.get(f"/fhir/{path}", headers=headers)
        assert response.status_code == 200, (path, accept, response.json)
        assert response.mimetype == FHIR
    # _format wins over Accept (FHIR http.html#mime-type)
    assert his.get(f"Patient/{pid}?_format=json", headers={"Accept": "application/xml"}).status_code == 200


@pytest.mark.parametrize("condition", ["", "?", " ", "?&", "&&"])
def test_an_empty_if_none_exist_is_400_and_creates_nothing(his: Fhir, condition: str) -> None:
    """An If-None-Exist with no criteria would match every Patient (or be read as no condition):
    refused, as HAPI does, over HTTP and as a Bundle entry's ifNoneExist."""
    first = his.post("Patient", patient(PID_1))
    assert first.status_code == 201
    second = patient(PID_2, gender="male", birth="1985-05-05")
    response = his.post("Patient", second, headers={"If-None-Exist": condition})
    assert response.status_code == 400, response.json
    assert response.json["resourceType"] == "OperationOutcome"
    assert response.json["issue"][0]["expression"] == ["If-None-Exist"]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{
        "fullUrl": "urn:uuid:0c6b1c4e-8a0c-4f5e-9d3e-2a3c1b5e7f90", "resource": second,
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": condition},
    }]}
    answer = his.post("", bundle)
    assert answer.status_code == 400, answer.json
    assert his.get(f"Patient?identifier={RESIDENT_ID}|{PID_2}").json["total"] == 0


@pytest.mark.parametrize("reference", ["Organization/", "Organization", "Organization//th-01",
                                       "Organization/th-01/extra", "/Organization/th-01"])
def test_a_reference_without_an_id_is_422_naming_the_element(his: Fhir, reference: str) -> None:
    """As a reference to a resource that does not exist is (422), on create, update and $validate."""
    body = patient(PID_1) | {"managingOrganization": {"reference": reference}}
    created = his.post("Patient", body)
    assert created.status_code == 422, created.json
    issue = created.json["issue"][0]
    assert issue["expression"] == ["Patient.managingOrganization.reference"]
    assert "not a valid reference" in issue["diagnostics"]
    pid = his.post("Patient", patient(PID_1)).json["id"]
    nested = his.get(f"Patient/{pid}").json | {"generalPractitioner": [{"reference": "Organization/th-01"},
                                                                      {"reference": reference}]}
    updated = his.put(f"Patient/{pid}", nested)
    assert updated.status_code == 422, updated.json
    assert updated.json["issue"][0]["expression"] == ["Patient.generalPractitioner[1].reference"]
    checked = his.post("Patient/$validate", body).json
    assert any("not a valid reference" in i["diagnostics"] for i in checked["issue"])


def test_well_formed_references_keep_working(his: Fhir) -> None:
    body = patient(PID_1) | {"managingOrganization": {"reference": "Organization/th-01"},
                             "generalPractitioner": [{"reference": "Organization/th-01/_history/1"},
                                                     {"reference": "http://other.example/fhir/Practitioner/x"},
                                                     {"display": "王医生"}]}
    assert his.post("Patient", body).status_code == 201


def _encounter(subject: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Encounter", "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": subject, "serviceProvider": {"reference": "Organization/th-01"}}


@pytest.mark.parametrize(("subject", "element"), [
    ({"reference": "Organization/th-01"}, "Encounter.subject.reference"),  # Patient or Group only
    ({"reference": "Foo/1"}, "Encounter.subject.reference"),
    ({"reference": "patient/{pid}"}, "Encounter.subject.reference"),
    ({"reference": "Patient/{pid}", "type": "Group"}, "Encounter.subject.type"),
    ({"reference": "Organization?identifier=x|y"}, "Encounter.subject.reference"),
])
def test_a_reference_to_a_type_its_element_does_not_allow_is_400(
    his: Fhir, subject: dict[str, str], element: str
) -> None:
    """The element's definition names the types it may reference (Encounter.subject: Patient, Group);
    an Encounter whose subject was an Organization was stored (201), as was one of "Foo/1"."""
    pid = his.post("Patient", patient(PID_1)).json["id"]
    subject = {k: v.format(pid=pid) for k, v in subject.items()}
    created = his.post("Encounter", _encounter(subject))
    assert created.status_code == 400, created.json
    assert created.json["issue"][0]["expression"] == [element]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": _encounter(subject), "request": {"method": "POST", "url": "Encounter"}}]}
    assert his.post("", bundle).status_code == 400
    assert his.get("Encounter").json["total"] == 0
    checked = his.post("Encounter/$validate", _encounter(subject)).json
    assert checked["issue"][0]["expression"] == [element]
    allowed = his.post("Encounter", _encounter({"reference": f"Patient/{pid}", "type": "Patient"}))
    assert allowed.status_code == 201, allowed.json


@pytest.mark.parametrize("reference", ["urn:uuid:0c6b1c4e-8a0c-4f5e-9d3e-2a3c1b5e7f90", "urn:oid:1.2.3.4"])
def test_a_bundle_local_reference_outside_a_bundle_is_422(his: Fhir, reference: str) -> None:
    """A urn:uuid names another entry of a Bundle; outside one it was stored as sent (201), naming nothing."""
    created = his.post("Encounter", _encounter({"reference": reference}))
    assert created.status_code == 422, created.json
    assert created.json["issue"][0]["expression"] == ["Encounter.subject.reference"]
    assert his.get("Encounter").json["total"] == 0


def test_a_local_reference_needs_the_contained_resource_it_names(his: Fhir) -> None:
    """FHIR invariant ref-1: `#p1` with nothing contained of id p1 was stored (201)."""
    created = his.post("Encounter", _encounter({"reference": "#p1"}))
    assert created.status_code == 422, created.json
    assert created.json["issue"][0]["expression"] == ["Encounter.subject.reference"]
    contained = {"resourceType": "Patient", "id": "p1", "name": [{"family": "王"}]}
    body = _encounter({"reference": "#p1"}) | {"contained": [contained]}
    assert his.post("Encounter", body).status_code == 201


def test_a_conditional_reference_is_resolved_to_its_one_match(his: Fhir) -> None:
    """FHIR's conditional reference (Type?criteria), as HAPI resolves it on a write: the one match's
    Type/id is stored and indexed; no match is 422 (a reference to nothing), several 412. It was
    stored as sent, pointing at nothing, whether or not anything matched."""
    pid = his.post("Patient", patient(PID_1)).json["id"]
    by_identifier = {"reference": f"Patient?identifier={RESIDENT_ID}|{PID_1}"}
    created = his.post("Encounter", _encounter(by_identifier))
    assert created.status_code == 201, created.json
    assert created.json["subject"] == {"reference": f"Patient/{pid}"}
    assert his.get(f"Encounter?subject=Patient/{pid}").json["total"] == 1
    eid = created.json["id"]
    updated = his.put(f"Encounter/{eid}", _encounter(by_identifier) | {"id": eid, "status": "finished"})
    assert updated.status_code == 200, updated.json
    assert updated.json["subject"] == {"reference": f"Patient/{pid}"}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": _encounter(by_identifier), "request": {"method": "POST", "url": "Encounter"}}]}
    answered = his.post("", bundle)
    assert answered.status_code == 200, answered.json
    assert answered.json["entry"][0]["resource"]["subject"] == {"reference": f"Patient/{pid}"}

    nothing = his.post("Encounter", _encounter({"reference": f"Patient?identifier={RESIDENT_ID}|{PID_2}"}))
    assert nothing.status_code == 422, nothing.json
    assert nothing.json["issue"][0]["expression"] == ["Encounter.subject.reference"]
    assert his.post("Patient", patient(None, family="李")).status_code == 201
    assert his.post("Patient", patient(None, family="李")).status_code == 201
    several = his.post("Encounter", _encounter({"reference": "Patient?family=李"}))
    assert several.status_code == 412, several.json
    assert his.post("Encounter", _encounter({"reference": "Patient?colour=blue"})).status_code == 400
    assert his.get("Encounter").json["total"] == 2


@pytest.mark.parametrize("birth", ["2999-01-01", "2999", "2999-06", "tomorrow"])
def test_a_birth_date_after_today_is_422_naming_patient_birthdate(his: Fhir, birth: str) -> None:
    """The web registration form's rule, over the API: not after today in Asia/Shanghai."""
    if birth == "tomorrow":
        birth = (datetime.now(ZoneInfo("Asia/Shanghai")).date() + timedelta(days=1)).isoformat()
    response = his.post("Patient", patient(None, birth=birth))
    assert response.status_code == 422, response.json
    assert response.json["issue"][0]["expression"] == ["Patient.birthDate"]
    assert "after today" in response.json["issue"][0]["diagnostics"]
    pid = his.post("Patient", patient(None)).json["id"]
    changed = his.put(f"Patient/{pid}", his.get(f"Patient/{pid}").json | {"birthDate": birth})
    assert changed.status_code == 422, changed.json
    assert his.get(f"Patient/{pid}").json["birthDate"] == "1990-03-07"


def test_a_birth_date_of_today_is_accepted(his: Fhir) -> None:
    shanghai = datetime.now(ZoneInfo("Asia/Shanghai")).date()
    today = his.post("Patient", patient(None, birth=shanghai.isoformat()))
    assert today.status_code == 201, today.json
    assert his.post("Patient", patient(None, birth=str(shanghai.year))).status_code == 201
