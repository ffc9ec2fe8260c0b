"""Referential integrity on DELETE, as HAPI enforces it by default: a resource that live resources
still refer to is 409 and stays, alone, conditional, in a batch and in a transaction (which checks
once all its entries ran, so that it may delete a patient together with her records)."""

from __future__ import annotations

import re
from typing import Any

from tests.functional.fhir_helpers import RESIDENT_ID, Fhir, created_id, patient, township_visit, vital

PID = "620421199003070021"
OTHER_PID = "620421198505050077"


def _conflict(response: Any) -> str:
    """The diagnostics of a 409 OperationOutcome."""
    assert response.status_code == 409, response.json
    assert response.json["resourceType"] == "OperationOutcome"
    issue = response.json["issue"][0]
    assert issue["code"] == "conflict"
    return str(issue["diagnostics"])


def _transaction(fhir: Fhir, *requests: dict[str, Any], kind: str = "transaction") -> Any:
    return fhir.post("", {"resourceType": "Bundle", "type": kind, "entry": list(requests)})


def _patient_with_a_visit_and_another(his: Fhir) -> tuple[str, str, str]:
    """A patient with one visit, and a second patient with none: (patient, visit, second patient)."""
    pid = created_id(his, "Patient", patient(PID))
    return pid, created_id(his, "Encounter", township_visit(pid)), created_id(
        his, "Patient", patient(OTHER_PID, gender="male", birth="1985-05-05"))


def test_a_referenced_resource_is_not_deleted_until_nothing_refers_to_it(his: Fhir) -> None:
    pid = created_id(his, "Patient", patient(PID))
    first, second = (created_id(his, "Encounter", township_visit(pid)) for _ in range(2))
    diagnostics = _conflict(his.delete(f"Patient/{pid}"))
    assert f"Patient/{pid} cannot be deleted" in diagnostics
    assert f"Encounter/{first} (" in diagnostics and f"Encounter/{second} (" in diagnostics
    assert his.get(f"Patient/{pid}").status_code == 200
    assert his.get(f"Patient/{pid}/_history").json["total"] == 1  # no deletion version was kept
    gone = his.delete(f"Encounter/{first}")
    assert gone.status_code == 204, gone.json["issue"][0]["diagnostics"]
    assert f"Encounter/{first}" not in _conflict(his.delete(f"Patient/{pid}"))  # a deleted one no more
    # A referrer that now points elsewhere no longer holds it.
    other = created_id(his, "Patient", patient(OTHER_PID, gender="male", birth="1985-05-05"))
    assert his.put(f"Encounter/{second}", township_visit(other) | {"id": second}).status_code == 200
    assert his.delete(f"Patient/{pid}").status_code == 204
    assert his.get(f"Patient/{pid}").status_code == 410


def test_referrers_out_of_sight_are_counted_not_named(platform: Fhir, his: Fhir, other_his: Fhir) -> None:
    """th-01's visit is referred to by an Observation of another township's patient, whom th-01 does
    not see: the 409 counts it without naming it; the platform, which sees it, gets its id."""
    pid = created_id(his, "Patient", patient(PID))
    enc = created_id(his, "Encounter", township_visit(pid))
    man = patient(OTHER_PID, gender="male", birth="1985-05-05", gp="th-02")
    theirs = created_id(other_his, "Patient", man)
    pulse = vital("8867-4", 80, "/min", f"Encounter/{enc}", f"Patient/{theirs}")
    obs = created_id(platform, "Observation", pulse)
    assert his.get(f"Observation/{obs}").status_code == 404
    diagnostics = _conflict(his.delete(f"Encounter/{enc}"))
    assert obs not in diagnostics and "(resources out of this client's sight)" in diagnostics
    # A visible referrer beside the hidden one is named; how many are hidden is not said.
    mine = created_id(his, "Observation", vital("8867-4", 72, "/min", f"Encounter/{enc}", f"Patient/{pid}"))
    diagnostics = _conflict(his.delete(f"Encounter/{enc}"))
    assert f"(Observation/{mine} (encounter) and resources out of this client's sight)" in diagnostics
    assert obs not in diagnostics and not re.search(r"\b\d+ (more|resources?)\b", diagnostics)
    assert f"Observation/{obs} (encounter)" in _conflict(platform.delete(f"Encounter/{enc}"))


def test_a_conditional_delete_of_a_referenced_resource_is_refused(his: Fhir) -> None:
    pid = created_id(his, "Patient", patient(PID))
    enc = created_id(his, "Encounter", township_visit(pid))
    assert f"Encounter/{enc}" in _conflict(his.delete(f"Patient?identifier={RESIDENT_ID}|{PID}"))
    assert his.get(f"Patient/{pid}").status_code == 200


def test_a_transaction_deletes_a_patient_with_her_records_in_either_order(his: Fhir) -> None:
    for patient_first in (True, False):
        pid = created_id(his, "Patient", patient(PID))
        enc = created_id(his, "Encounter", township_visit(pid))
        deletes = [{"request": {"method": "DELETE", "url": f"Patient/{pid}"}},
                   {"request": {"method": "DELETE", "url": f"Encounter/{enc}"}}]
        response = _transaction(his, *(deletes if patient_first else deletes[::-1]))
        assert response.status_code == 200, response.json
        assert [e["response"]["status"] for e in response.json["entry"]] == ["204 No Content"] * 2
        assert his.get(f"Patient/{pid}").status_code == 410
        assert his.get(f"Encounter/{enc}").status_code == 410


def test_a_transaction_may_move_the_references_then_delete(his: Fhir) -> None:
    """The check runs once every entry ran: a PUT later in the processing order frees the patient."""
    pid, enc, other = _patient_with_a_visit_and_another(his)
    response = _transaction(
        his,
        {"request": {"method": "DELETE", "url": f"Patient/{pid}"}},
        {"resource": township_visit(other) | {"id": enc},
         "request": {"method": "PUT", "url": f"Encounter/{enc}"}},
    )
    assert response.status_code == 200, response.json
    assert his.get(f"Patient/{pid}").status_code == 410
    assert his.get(f"Encounter/{enc}").json["subject"]["reference"] == f"Patient/{other}"


def test_a_transaction_leaving_a_reference_to_what_it_deleted_changes_nothing(his: Fhir) -> None:
    pid, enc, spare = _patient_with_a_visit_and_another(his)
    response = _transaction(
        his,
        {"request": {"method": "DELETE", "url": f"Patient/{spare}"}},
        {"request": {"method": "DELETE", "url": f"Patient/{pid}"}},
    )
    diagnostics = _conflict(response)
    assert "Bundle.entry[1]" in diagnostics and f"Encounter/{enc}" in diagnostics
    for kept in (pid, spare):  # all or nothing: the unreferenced one is not deleted either
        assert his.get(f"Patient/{kept}").status_code == 200
    assert his.get(f"Encounter/{enc}").status_code == 200


def test_a_batch_refuses_only_the_referenced_entry(his: Fhir) -> None:
    pid, enc, spare = _patient_with_a_visit_and_another(his)
    response = _transaction(
        his,
        {"request": {"method": "DELETE", "url": f"Patient/{pid}"}},
        {"request": {"method": "DELETE", "url": f"Patient/{spare}"}},
        kind="batch",
    )
    assert response.status_code == 200, response.json
    refused, done = response.json["entry"]
    assert refused["response"]["status"].startswith("409")
    assert f"Encounter/{enc}" in refused["response"]["outcome"]["issue"][0]["diagnostics"]
    assert done["response"]["status"] == "204 No Content"
    assert his.get(f"Patient/{pid}").status_code == 200
    assert his.get(f"Patient/{spare}").status_code == 410


def test_many_referrers_are_named_a_few_and_counted(his: Fhir) -> None:
    pid = created_id(his, "Patient", patient(PID))
    open_visit = township_visit(pid) | {"status": "in-progress"}  # (no rules decision refers to it)
    visits = [created_id(his, "Encounter", open_visit) for _ in range(5)]
    diagnostics = _conflict(his.delete(f"Patient/{pid}"))
    assert [v for v in visits if f"Encounter/{v} (" in diagnostics] == visits[:3], diagnostics
    assert "and 2 more)" in diagnostics and "sight" not in diagnostics
