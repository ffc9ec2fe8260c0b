"""Every read, search and write of patient data leaves an AuditEvent, readable by the platform only."""

from __future__ import annotations

from collections.abc import Callable

from flask.testing import FlaskClient

from tests.functional.fhir_helpers import Fhir, organization, patient, token_for


def test_patient_reads_and_writes_are_audited(
    client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]
) -> None:
    cid, secret = make_api_client("county-platform", "system/*.cruds", "qs-health-commission")
    platform = Fhir(client, token_for(client, cid, secret))
    assert platform.put("Organization/th-01", organization("th-01")).status_code == 201
    hid, hsecret = make_api_client("township-his", "system/*.cruds", "th-01")
    his = Fhir(client, token_for(client, hid, hsecret))
    pid = his.post("Patient", patient("620421199003070021")).json["id"]
    his.get(f"Patient/{pid}")
    his.get("Patient?family=王")

    events = platform.get("AuditEvent?agent-name=township-his").json["entry"]
    actions = [(e["resource"]["action"], e["resource"]["subtype"][0]["code"]) for e in events]
    assert actions == [("E", "search-type"), ("R", "read"), ("C", "create")]
    read_event = events[1]["resource"]
    assert read_event["entity"][0]["what"]["reference"] == f"Patient/{pid}"
    assert read_event["agent"][0]["name"] == "township-his"
    one = platform.get(f"AuditEvent/{read_event['id']}")
    assert one.status_code == 200
    assert one.json["id"] == read_event["id"]

    by_patient = platform.get(f"AuditEvent?patient={pid}").json["entry"]
    assert {e["resource"]["action"] for e in by_patient} >= {"R", "C"}

    # Hospital systems cannot read the audit log: single reads are unknown, searches empty.
    assert his.get(f"AuditEvent/{read_event['id']}").status_code == 404
    assert his.get("AuditEvent").json.get("entry", []) == []

    # Oldest first on request, with the number of matches; paging follows the order asked for.
    oldest = platform.get("AuditEvent?agent-name=township-his&_sort=date&_total=accurate&_count=2").json
    assert oldest["total"] == 3
    assert [e["resource"]["action"] for e in oldest["entry"]] == ["C", "R"]
    nxt = next(link["url"] for link in oldest["link"] if link["relation"] == "next")
    rest = platform.client.get(nxt.split("localhost", 1)[-1], headers=platform._headers()).json
    assert [e["resource"]["action"] for e in rest["entry"]] == ["E"]
    assert "total" not in platform.get("AuditEvent?agent-name=township-his").json
    assert platform.get("AuditEvent?_sort=agent-name").status_code == 400
    assert platform.get("AuditEvent?_total=lots").status_code == 400


def test_the_capability_statement_lists_what_the_audit_log_search_answers(
    client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]
) -> None:
    """It listed entity, outcome, type, subtype, _lastUpdated, _include, _revinclude (also from every
    other type: AuditEvent:patient, AuditEvent:entity), vread and history: each was 400 or 404."""
    cid, secret = make_api_client("county-platform", "system/*.cruds", "qs-health-commission")
    platform = Fhir(client, token_for(client, cid, secret))
    pid = platform.post("Patient", patient("620421199003070021")).json["id"]
    platform.get(f"Patient/{pid}")
    resources = {r["type"]: r for r in client.get("/fhir/metadata").json["rest"][0]["resource"]}
    audit = resources["AuditEvent"]
    values = {"date": "ge2000-01-01", "_lastUpdated": "ge2000-01-01", "agent-name": "county-platform",
              "patient": f"Patient/{pid}", "entity-type": "Patient", "action": "R", "_id": "1"}
    for param in audit["searchParam"]:
        answer = platform.get(f"AuditEvent?{param['name']}={values[param['name']]}")
        assert answer.status_code == 200, (param, answer.json)
    assert platform.get("AuditEvent?_lastUpdated=ge2000-01-01").json["entry"]
    assert [i["code"] for i in audit["interaction"]] == ["read", "search-type"]
    assert audit["searchInclude"] == [] and audit["searchRevInclude"] == []
    assert not [r for r in resources["Patient"]["searchRevInclude"] if r.startswith("AuditEvent:")]
    assert platform.get(f"Patient?_id={pid}&_revinclude=AuditEvent:patient").status_code == 400
    counted = platform.get(f"AuditEvent?patient={pid}&_summary=count").json
    assert counted["total"] == 2 and "entry" not in counted
