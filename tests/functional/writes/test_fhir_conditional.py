"""Conditional update (PUT Type?criteria) and conditional delete (DELETE Type?criteria) over HTTP on
both engines, alone and in transaction and batch Bundles (FHIR http.html#cond-update, #cdelete)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.functional.fhir_helpers import RESIDENT_ID, Fhir, organization, patient, token_for

PID_1 = "620421199003070021"
PID_2 = "620421198505050077"
BY_PID_1 = f"Patient?identifier={RESIDENT_ID}|{PID_1}"
BY_PID_2 = f"Patient?identifier={RESIDENT_ID}|{PID_2}"
PHONE = [{"system": "phone", "value": "13800000000"}]
VISIT = "urn:oid:1.2.156.9"




def second_person(**fields: Any) -> dict[str, Any]:
    return patient(PID_2, gender="male", birth="1985-05-05", **fields)


def total(fhir: Fhir, query: str = "Patient") -> int:
    response = fhir.get(query)
    assert response.status_code == 200, response.json
    return int(response.json["total"])


def encounter(pid: str, visit: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{pid}"},
        "serviceProvider": {"reference": "Organization/th-01"},
        "identifier": [{"system": VISIT, "value": visit}],
    }


# ------------------------------------------------------------------------------ conditional update


def test_no_match_creates_and_one_match_is_updated(his: Fhir) -> None:
    created = his.put(BY_PID_1, patient(PID_1))
    assert created.status_code == 201, created.json
    pid = created.json["id"]
    assert created.headers["ETag"] == 'W/"1"'
    assert created.headers["Location"].endswith(f"/fhir/Patient/{pid}/_history/1")
    updated = his.put(BY_PID_1, patient(PID_1) | {"telecom": PHONE})
    assert updated.status_code == 200, updated.json
    assert (updated.json["id"], updated.json["meta"]["versionId"]) == (pid, "2")
    assert updated.headers["Location"].endswith(f"/fhir/Patient/{pid}/_history/2")
    assert his.get(f"Patient/{pid}").json["telecom"] == PHONE
    # The body may carry the id of the match; another id is 400 and changes nothing.
    same = his.put(BY_PID_1, patient(PID_1) | {"id": pid, "gender": "female"})
    assert same.status_code == 200 and same.json["meta"]["versionId"] == "3"
    other = his.put(BY_PID_1, patient(PID_1) | {"id": "someone-else"})
    assert other.status_code == 400, other.json
    assert other.json["issue"][0]["expression"] == ["Patient.id"]
    assert his.get("Patient/someone-else").status_code == 404
    assert total(his) == 1
    history = his.get(f"Patient/{pid}/_history").json
    assert [e["request"]["method"] for e in history["entry"]] == ["PUT", "PUT", "POST"]


def test_no_match_with_an_id_in_the_body_creates_with_that_id(his: Fhir) -> None:
    created = his.put(BY_PID_2, second_person() | {"id": "p-620421"})
    assert created.status_code == 201, created.json
    assert created.json["id"] == "p-620421"
    assert created.headers["Location"].endswith("/Patient/p-620421/_history/1")
    assert his.put(BY_PID_2, second_person() | {"id": "p-620421"}).status_code == 200
    bad = his.put(f"Patient?identifier={RESIDENT_ID}|{PID_1}", patient(PID_1) | {"id": "not an id"})
    assert bad.status_code == 400, bad.json
    assert total(his) == 1


def test_several_matches_are_412_and_change_nothing(his: Fhir) -> None:
    for _ in range(2):
        assert his.post("Patient", patient(None, family="李")).status_code == 201
    response = his.put("Patient?family=李", patient(None, family="李") | {"telecom": PHONE})
    assert response.status_code == 412, response.json
    assert response.json["resourceType"] == "OperationOutcome"
    assert total(his) == 2
    assert total(his, "Patient?telecom=13800000000") == 0


@pytest.mark.parametrize("criteria", ["", "?", "?&", "?_format=json", "?_pretty=true", "?_count=1",
                                      "?_summary=true"])
def test_criteria_that_name_no_search_parameter_are_400(his: Fhir, criteria: str) -> None:
    """As an empty If-None-Exist is: as a search they would match every Patient."""
    assert his.post("Patient", patient(PID_1)).status_code == 201
    response = his.put(f"Patient{criteria}", second_person())
    assert response.status_code == 400, response.json
    assert response.json["resourceType"] == "OperationOutcome"
    deleted = his.delete(f"Patient{criteria}")
    assert deleted.status_code == 400, deleted.json
    assert total(his) == 1


def test_unknown_parameters_and_types_are_refused(his: Fhir) -> None:
    assert his.put("Patient?colour=blue", second_person()).status_code == 400
    assert his.delete("Patient?colour=blue").status_code == 400
    assert his.put("Spaceship?name=x", {"resourceType": "Spaceship"}).status_code == 404
    assert his.delete("Spaceship?name=x").status_code == 404
    assert total(his) == 0


def test_if_match_prefer_and_validation_apply_as_for_a_put(his: Fhir) -> None:
    assert his.put(BY_PID_1, patient(PID_1)).status_code == 201
    stale = his.put(BY_PID_1, patient(PID_1) | {"telecom": PHONE}, headers={"If-Match": 'W/"7"'})
    assert stale.status_code == 412, stale.json
    current = his.put(BY_PID_1, patient(PID_1) | {"telecom": PHONE},
                      headers={"If-Match": 'W/"1"', "Prefer": "return=minimal"})
    assert current.status_code == 200
    assert current.data == b"" and current.headers["ETag"] == 'W/"2"'
    # If-Match on nothing matched: no current version, so 412 (and nothing is created).
    assert his.put(BY_PID_2, second_person(), headers={"If-Match": "*"}).status_code == 412
    invalid = his.put(BY_PID_2, second_person() | {"gender": "femail"})
    assert invalid.status_code == 422, invalid.json
    structure = his.put(BY_PID_2, second_person() | {"gender": 7})
    assert structure.status_code == 400, structure.json
    wrong_type = his.put(BY_PID_2, encounter("x", "v-1"))
    assert wrong_type.status_code == 400, wrong_type.json
    dangling = his.put(BY_PID_2, second_person(gp="nowhere"))
    assert dangling.status_code == 422, dangling.json
    assert total(his) == 1


def test_a_match_out_of_sight_is_409_and_stays_as_it_was(his: Fhir, other_his: Fhir) -> None:
    """Never a second resource beside one the writer may not see (as a conditional create), and
    never a change to it."""
    theirs = other_his.post("Patient", second_person(gp="th-02"))
    assert theirs.status_code == 201, theirs.json
    response = his.put(BY_PID_2, second_person() | {"telecom": PHONE})
    assert response.status_code == 409, response.json
    assert "telecom" not in other_his.get(f"Patient/{theirs.json['id']}").json
    assert total(his) == 0 and total(other_his) == 1


def test_scopes_of_a_conditional_update_and_delete(
    client: FlaskClient, make_api_client: Callable[..., tuple[str, str]], his: Fhir
) -> None:
    cid, secret = make_api_client("reader", "system/Patient.crs", "th-01")
    reader = Fhir(client, token_for(client, cid, secret))
    assert reader.put(BY_PID_1, patient(PID_1)).status_code == 403
    assert his.post("Patient", patient(PID_1)).status_code == 201
    assert reader.delete(BY_PID_1).status_code == 403
    assert total(his) == 1
    in_a_bundle = reader.post("", _transaction(
        {"resource": patient(PID_1), "request": {"method": "PUT", "url": BY_PID_1}}))
    assert in_a_bundle.status_code == 403, in_a_bundle.json
    assert "Bundle.entry[0]" in in_a_bundle.json["issue"][0]["diagnostics"]
    organisation = his.put("Organization?_id=th-01", organization("th-01"))
    assert organisation.status_code == 403  # the platform writes organisations
    assert his.delete("Claim?identifier=x|y").status_code == 403  # claims are reversed, not deleted


def test_conditional_writes_are_audited(platform: Fhir, his: Fhir) -> None:
    pid = his.put(BY_PID_1, patient(PID_1)).json["id"]
    assert his.put(BY_PID_1, patient(PID_1) | {"telecom": PHONE}).status_code == 200
    assert his.delete(BY_PID_2).status_code == 204  # nothing matched, nothing deleted: no row
    assert his.delete(BY_PID_1).status_code == 204
    events = platform.get("AuditEvent?agent-name=township-his").json["entry"]
    actions = [(e["resource"]["action"], e["resource"]["subtype"][0]["code"]) for e in events]
    assert actions == [("D", "delete"), ("U", "update"), ("C", "update")]  # (created as a PUT creates)
    assert {e["resource"]["entity"][0]["what"]["reference"] for e in events} == {f"Patient/{pid}"}


# ------------------------------------------------------------------------------ conditional delete


def test_conditional_delete_in_single_mode(his: Fhir) -> None:
    assert his.delete(BY_PID_1).status_code == 204  # no match: nothing deleted
    pid = his.post("Patient", patient(PID_1)).json["id"]
    deleted = his.delete(BY_PID_1)
    assert deleted.status_code == 204
    assert deleted.data == b"" and "Content-Type" not in deleted.headers
    assert his.get(f"Patient/{pid}").status_code == 410
    assert his.delete(BY_PID_1).status_code == 204  # the deleted one matches no more
    for _ in range(2):
        assert his.post("Patient", patient(None, family="李")).status_code == 201
    several = his.delete("Patient?family=李")
    assert several.status_code == 412, several.json
    assert total(his, "Patient?family=李") == 2


def test_conditional_delete_sees_what_a_search_sees(his: Fhir, other_his: Fhir) -> None:
    """A match out of the client's sight is as absent as it is to its search: nothing is deleted."""
    theirs = other_his.post("Patient", second_person(gp="th-02")).json["id"]
    assert his.delete(BY_PID_2).status_code == 204
    assert other_his.get(f"Patient/{theirs}").status_code == 200
    assert other_his.delete(BY_PID_2).status_code == 204
    assert other_his.get(f"Patient/{theirs}").status_code == 410


# ------------------------------------------------------------------------------------------ Bundles


def _transaction(*entries: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def test_a_transaction_with_a_conditional_update_referenced_by_other_entries(his: Fhir) -> None:
    """A HIS's visit: the patient as a conditional update (created the first time, updated after),
    the Encounter pointing at the patient's fullUrl."""
    person = "urn:uuid:5e7f9a0c-6b1c-4e8a-8c4f-9d3e2a3c1b5e"

    def visit(n: int) -> dict[str, Any]:
        body = encounter("x", f"v-{n}") | {"subject": {"reference": person}}
        return _transaction(
            {"fullUrl": person, "request": {"method": "PUT", "url": BY_PID_1},
             "resource": patient(PID_1) | {"telecom": [{"system": "phone", "value": str(n)}]}},
            {"resource": body, "request": {"method": "POST", "url": "Encounter"}},
        )

    first = his.post("", visit(1))
    assert first.status_code == 200, first.json
    assert first.json["entry"][0]["response"]["status"] == "201 Created"
    pid = first.json["entry"][0]["resource"]["id"]
    assert first.json["entry"][1]["resource"]["subject"] == {"reference": f"Patient/{pid}"}
    second = his.post("", visit(2))
    assert second.status_code == 200, second.json
    assert second.json["entry"][0]["response"]["status"] == "200 OK"
    assert second.json["entry"][0]["response"]["location"] == f"Patient/{pid}/_history/2"
    assert second.json["entry"][1]["resource"]["subject"] == {"reference": f"Patient/{pid}"}
    assert total(his) == 1
    assert total(his, f"Encounter?subject=Patient/{pid}") == 2
    # Full URLs work as well as relative ones.
    third = his.post("", _transaction({"resource": patient(PID_1), "request": {
        "method": "PUT", "url": f"http://localhost/fhir/{BY_PID_1}"}}))
    assert third.status_code == 200, third.json
    assert third.json["entry"][0]["response"]["location"] == f"Patient/{pid}/_history/3"


def test_transaction_conditional_entries_fail_the_transaction_as_their_requests_would(his: Fhir) -> None:
    pid = his.post("Patient", patient(PID_1)).json["id"]
    for _ in range(2):
        assert his.post("Patient", patient(None, family="李")).status_code == 201
    several = his.post("", _transaction(
        {"resource": second_person(), "request": {"method": "POST", "url": "Patient"}},
        {"resource": patient(None, family="李"), "request": {"method": "PUT", "url": "Patient?family=李"}},
    ))
    assert several.status_code == 412, several.json
    assert "Bundle.entry[1]" in several.json["issue"][0]["diagnostics"]
    other_id = his.post("", _transaction(
        {"resource": patient(PID_1) | {"id": "x-1"}, "request": {"method": "PUT", "url": BY_PID_1}}))
    assert other_id.status_code == 400, other_id.json
    empty = his.post("", _transaction({"resource": second_person(), "request": {"method": "PUT",
                                                                                "url": "Patient?"}}))
    assert empty.status_code == 400, empty.json
    # Two entries acting on one resource (the conditional one resolved to it): refused, as FHIR asks.
    twice = his.post("", _transaction(
        {"resource": patient(PID_1) | {"id": pid}, "request": {"method": "PUT", "url": f"Patient/{pid}"}},
        {"resource": patient(PID_1), "request": {"method": "PUT", "url": BY_PID_1}},
    ))
    assert twice.status_code == 400, twice.json
    deleted_and_put = his.post("", _transaction(
        {"request": {"method": "DELETE", "url": BY_PID_1}},
        {"resource": patient(PID_1) | {"id": pid}, "request": {"method": "PUT", "url": f"Patient/{pid}"}},
    ))
    assert deleted_and_put.status_code == 400, deleted_and_put.json
    assert his.get(f"Patient/{pid}").json["meta"]["versionId"] == "1"
    assert total(his) == 3


def test_a_conditional_update_matching_what_another_entry_creates_is_400(his: Fhir) -> None:
    """Its criteria were resolved before the transaction's writes; when another entry then creates a
    match, the outcome would depend on the order of the entries (FHIR http.html#trules)."""
    pid = his.post("Patient", patient(PID_1)).json["id"]
    visit = f"Encounter?identifier={VISIT}|v-1"
    answer = his.post("", _transaction(
        {"resource": encounter(pid, "v-1"), "request": {"method": "POST", "url": "Encounter"}},
        {"resource": encounter(pid, "v-1") | {"status": "finished"},
         "request": {"method": "PUT", "url": visit}},
    ))
    assert answer.status_code == 400, answer.json
    assert total(his, "Encounter") == 0
    created = his.post("", _transaction(
        {"resource": encounter(pid, "v-1"), "request": {"method": "PUT", "url": visit}},
        {"resource": encounter(pid, "v-2"), "request": {"method": "POST", "url": "Encounter"}},
    ))
    assert created.status_code == 200, created.json
    assert [e["response"]["status"] for e in created.json["entry"]] == ["201 Created", "201 Created"]
    assert total(his, "Encounter") == 2


def test_a_transaction_with_a_conditional_delete(his: Fhir) -> None:
    pid = his.post("Patient", patient(PID_1)).json["id"]
    answer = his.post("", _transaction(
        {"request": {"method": "DELETE", "url": BY_PID_1}},
        {"request": {"method": "DELETE", "url": BY_PID_2}},
        {"resource": second_person(), "request": {"method": "POST", "url": "Patient"}},
    ))
    assert answer.status_code == 200, answer.json
    assert [e["response"]["status"] for e in answer.json["entry"]] == ["204 No Content", "204 No Content",
                                                                       "201 Created"]
    assert his.get(f"Patient/{pid}").status_code == 410
    assert total(his) == 1


def test_a_batch_with_conditional_entries(his: Fhir, other_his: Fhir) -> None:
    theirs = other_his.post("Patient", second_person(gp="th-02")).json["id"]
    for _ in range(2):
        assert his.post("Patient", patient(None, family="李")).status_code == 201
    answer = his.post("", _transaction(
        {"resource": patient(PID_1), "request": {"method": "PUT", "url": BY_PID_1}},
        {"resource": second_person(), "request": {"method": "PUT", "url": BY_PID_2}},
        {"request": {"method": "DELETE", "url": "Patient?family=李"}},
        {"resource": patient(PID_1) | {"telecom": PHONE}, "request": {"method": "PUT", "url": BY_PID_1}},
        {"request": {"method": "DELETE", "url": BY_PID_2}},
        {"resource": patient(None), "request": {"method": "PUT", "url": "Patient?"}},
        kind="batch",
    ))
    assert answer.status_code == 200, answer.json
    statuses = [e["response"]["status"] for e in answer.json["entry"]]
    assert statuses == ["201 Created", "409", "412", "200 OK", "204 No Content", "400"]
    pid = answer.json["entry"][0]["resource"]["id"]
    assert his.get(f"Patient/{pid}").json["telecom"] == PHONE
    assert other_his.get(f"Patient/{theirs}").status_code == 200
    assert total(his) == 3
