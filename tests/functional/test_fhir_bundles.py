"""transaction and batch Bundles over HTTP on both engines: urn:uuid rewriting, order, all-or-nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import orjson
import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from referral_service.domain.fhir_store import StoredResource
from referral_service.domain.registry import AuditRecord, Patient
from referral_service.domain.resident_id import generate
from referral_service.extensions import database
from tests.functional.fhir_helpers import RESIDENT_ID, Fhir, organization, patient, token_for
from tests.support.statements import statements_sent

V3 = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
UCUM = "http://unitsofmeasure.org"
PID_1 = generate("620421", date(1990, 3, 7), "female", 1)
PID_2 = generate("620421", date(1985, 5, 5), "male", 2)


@pytest.fixture
def platform(client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]) -> Fhir:
    cid, secret = make_api_client("county-platform", "system/*.cruds", "qs-health-commission")
    fhir = Fhir(client, token_for(client, cid, secret))
    assert fhir.put("Organization/th-01", organization("th-01")).status_code == 201
    assert fhir.put("Organization/ch-01", organization("ch-01", level="county")).status_code == 201
    return fhir


def urn(n: int) -> str:
    return f"urn:uuid:7d3c5a1e-0000-4000-8000-{n:012d}"


def post(full_url: str | None, resource: dict[str, Any], **request: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"], **request},
    }
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def encounter(subject: str, *, diagnoses: tuple[str, ...] = ()) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Encounter",
        "status": "in-progress",
        "class": {"system": V3, "code": "AMB"},
        "subject": {"reference": subject},
        "serviceProvider": {"reference": "Organization/ch-01"},
        "period": {"start": "2024-03-01T09:00:00+08:00"},
    }
    if diagnoses:
        body["diagnosis"] = [{"condition": {"reference": d}} for d in diagnoses]
    return body


def heart_rate(subject: str, enc: str, value: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": subject},
        "encounter": {"reference": enc},
        "effectiveDateTime": "2024-03-01T09:10:00+08:00",
        "valueQuantity": {"value": value, "unit": "/min", "system": UCUM, "code": "/min"},
    }


def condition(subject: str, enc: str, icd: str) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "code": {"coding": [{"system": ICD10, "code": icd}]},
        "subject": {"reference": subject},
        "encounter": {"reference": enc},
    }


def counts() -> dict[str, int]:
    """Rows in the resource store (by type), the patient registry and the audit log."""
    with database.session() as s:
        by_type = dict(
            s.execute(select(StoredResource.res_type, func.count()).group_by(StoredResource.res_type)).all()
        )
        return {
            **{t: int(n) for t, n in by_type.items()},
            "all": sum(int(n) for n in by_type.values()),
            "patient-rows": int(s.scalar(select(func.count()).select_from(Patient)) or 0),
            "audit": int(s.scalar(select(func.count()).select_from(AuditRecord)) or 0),
        }


def stored_json(res_type: str, res_id: str) -> dict[str, Any]:
    with database.session() as s:
        raw = s.scalar(
            select(StoredResource.content).where(
                StoredResource.res_type == res_type, StoredResource.res_id == res_id
            )
        )
    assert raw is not None
    return dict(orjson.loads(raw))


def location(entry: dict[str, Any]) -> tuple[str, str]:
    res_type, res_id, history, version = entry["response"]["location"].split("/")
    assert history == "_history"
    assert version.isdigit()
    return res_type, res_id


# ---------------------------------------------------------------------------------- transaction


def visit_bundle() -> dict[str, Any]:
    """A visit whose entries reference each other only through urn:uuid (the Patient comes last)."""
    pat, enc, cond1, cond2, obs1, obs2 = (urn(i) for i in range(1, 7))
    return bundle(
        "transaction",
        post(enc, encounter(pat, diagnoses=(cond1, cond2))),
        post(obs1, heart_rate(pat, enc, 72)),
        post(obs2, heart_rate(pat, enc, 118)),
        post(cond1, condition(pat, enc, "J18.9")),
        post(cond2, condition(pat, enc, "I10")),
        post(pat, patient(PID_1, gp="th-01")),
    )


def test_transaction_rewrites_urn_references(platform: Fhir) -> None:
    before = counts()
    response = platform.post("", visit_bundle())
    assert response.status_code == 200, response.json
    result = response.json
    assert result["resourceType"] == "Bundle"
    assert result["type"] == "transaction-response"
    assert [e["response"]["status"] for e in result["entry"]] == ["201 Created"] * 6
    locations = [location(e) for e in result["entry"]]
    assert [t for t, _ in locations] == [
        "Encounter",
        "Observation",
        "Observation",
        "Condition",
        "Condition",
        "Patient",
    ]
    assert len({i for _, i in locations}) == 6
    for e in result["entry"]:
        assert e["response"]["etag"] == 'W/"1"'
        assert e["fullUrl"].endswith("/fhir/" + e["response"]["location"].rsplit("/_history", 1)[0])
        assert e["resource"]["meta"]["versionId"] == "1"
    (_, enc_id), (_, obs1), (_, obs2), (_, cond1), (_, cond2), (_, pat_id) = locations

    enc = stored_json("Encounter", enc_id)
    assert enc["subject"] == {"reference": f"Patient/{pat_id}"}
    assert [d["condition"]["reference"] for d in enc["diagnosis"]] == [
        f"Condition/{cond1}",
        f"Condition/{cond2}",
    ]
    for obs in (obs1, obs2):
        stored = stored_json("Observation", obs)
        assert stored["subject"]["reference"] == f"Patient/{pat_id}"
        assert stored["encounter"]["reference"] == f"Encounter/{enc_id}"
    assert stored_json("Condition", cond2)["encounter"]["reference"] == f"Encounter/{enc_id}"
    with database.session() as s:
        contents = s.scalars(select(StoredResource.content)).all()
    assert not any(b"urn:uuid" in c for c in contents)

    after = counts()
    assert after["all"] - before["all"] == 6
    assert after["patient-rows"] - before["patient-rows"] == 1
    # the indexes were written with the rewritten references
    found = platform.get(f"Observation?encounter=Encounter/{enc_id}&patient={pat_id}")
    assert {e["resource"]["id"] for e in found.json["entry"]} == {obs1, obs2}
    assert platform.get(f"Encounter?diagnosis=Condition/{cond1}").json["total"] == 1
    assert platform.get(f"Patient/{pat_id}").json["identifier"][0]["value"] == PID_1


def test_transaction_processing_order(platform: Fhir) -> None:
    mrn = {"system": "urn:oid:1.2.156.1", "value": "MRN-7"}
    old = platform.post("Patient", patient(None) | {"identifier": [mrn]}).json["id"]
    keep = platform.post("Patient", patient(None, family="周", given="留")).json["id"]
    response = platform.post(
        "",
        bundle(
            "transaction",
            {"request": {"method": "GET", "url": "Patient?_sort=_id&_count=100"}},
            {
                "fullUrl": urn(2),
                "resource": patient(None, family="吴", given="放") | {"id": "put-1"},
                "request": {"method": "PUT", "url": "Patient/put-1"},
            },
            # the conditional create only creates because the DELETE below runs first
            post(
                urn(1),
                patient(None, given="新") | {"identifier": [mrn]},
                ifNoneExist="identifier=urn:oid:1.2.156.1|MRN-7",
            ),
            {"request": {"method": "GET", "url": f"Patient/{keep}"}},
            {"request": {"method": "DELETE", "url": f"Patient/{old}"}},
        ),
    )
    assert response.status_code == 200, response.json
    entries = response.json["entry"]
    assert [e["response"]["status"] for e in entries] == [
        "200 OK",
        "201 Created",
        "201 Created",
        "200 OK",
        "204 No Content",
    ]
    created = location(entries[2])[1]
    assert created != old
    # the GET ran last: it sees the POST and the PUT but not the deleted Patient
    searchset = entries[0]["resource"]
    assert searchset["type"] == "searchset"
    assert {e["resource"]["id"] for e in searchset["entry"]} == {keep, created, "put-1"}
    assert entries[3]["resource"]["id"] == keep
    assert platform.get(f"Patient/{old}").status_code == 410
    assert platform.get(f"Patient/{created}").json["name"][0]["given"] == ["新"]


BAD_ENTRIES: list[tuple[dict[str, Any], int]] = [
    # structurally invalid resource
    (
        {
            "resource": {"resourceType": "Patient", "gender": 7},
            "request": {"method": "POST", "url": "Patient"},
        },
        400,
    ),
    # body type differs from the URL
    (
        {
            "resource": heart_rate("Patient/x", "Encounter/y", 1),
            "request": {"method": "POST", "url": "Patient"},
        },
        400,
    ),
    # business rule: invalid resident identity number
    (post(None, patient("620421199003070022")), 422),
    # reference to a Patient that does not exist
    (post(None, encounter("Patient/nobody")), 422),
    # an update whose body lacks the id of its URL
    ({"resource": patient(None, family="吴"), "request": {"method": "PUT", "url": "Patient/no-id"}}, 400),
    # unknown resource type
    ({"resource": {"resourceType": "Spaceship"}, "request": {"method": "POST", "url": "Spaceship"}}, 404),
    # read of an unknown id
    ({"request": {"method": "GET", "url": "Patient/nobody"}}, 404),
    # a stale If-Match
    (
        {
            "resource": patient(None, family="钱") | {"id": "p-stale"},
            "request": {"method": "PUT", "url": "Patient/p-stale", "ifMatch": 'W/"3"'},
        },
        412,
    ),
    # a duplicate resident identity number (the first entry holds it)
    (post(None, patient(PID_2, gender="male", birth="1985-05-05", given="重")), 409),
    # an unknown search parameter in ifNoneExist
    (post(None, patient(None), ifNoneExist="colour=blue"), 400),
    # a request without a method
    ({"resource": patient(None), "request": {"url": "Patient"}}, 400),
    # a reference to a urn:uuid that is not in the Bundle
    (post(None, encounter(urn(99))), 400),
    # a search the caller may not run (unknown parameter)
    ({"request": {"method": "GET", "url": "Patient?colour=blue"}}, 400),
]


def test_failed_transaction_stores_nothing(platform: Fhir) -> None:
    old = platform.post("Patient", patient(None, family="孙", given="旧")).json["id"]
    before = counts()
    pat, enc = urn(1), urn(2)
    good = [
        post(pat, patient(PID_2, gender="male", birth="1985-05-05")),
        post(enc, encounter(pat)),
        post(urn(3), heart_rate(pat, enc, 80)),
        {"request": {"method": "DELETE", "url": f"Patient/{old}"}},
    ]
    for bad_entry, status in BAD_ENTRIES:
        entries = [*good[:2], bad_entry, *good[2:]]
        response = platform.post("", bundle("transaction", *entries))
        assert response.status_code == status, (bad_entry, response.json)
        outcome = response.json
        assert outcome["resourceType"] == "OperationOutcome"
        assert any("Bundle.entry[2]" in issue["diagnostics"] for issue in outcome["issue"]), outcome
        assert counts() == before, bad_entry
    # the same Bundle without the bad entry goes through
    assert platform.post("", bundle("transaction", *good)).status_code == 200
    assert counts()["all"] == before["all"] + 3  # the deleted Patient keeps its row (a deletion version)


def test_a_transaction_with_a_malformed_entry_is_refused_before_it_touches_the_database(
    platform: Fhir,
) -> None:
    """Every entry's structure is checked before the transaction begins: a malformed last entry is
    400 naming it, and no statement was sent for the entries before it (no conditional-create look-up
    or lock, no write; on SQLite the write lock is never taken)."""
    pat = urn(1)
    entries = [
        post(pat, patient(PID_2, gender="male", birth="1985-05-05"),
             ifNoneExist=f"identifier={RESIDENT_ID}|{PID_2}"),
        post(urn(2), encounter(pat)),
        {"resource": {"resourceType": "Observation", "status": 7}, "request": {"method": "POST",
                                                                             "url": "Observation"}},
    ]
    platform.get("Patient?_count=1")  # (the token's client state is cached by a first request)
    with statements_sent() as sent:
        response = platform.post("", bundle("transaction", *entries))
    assert response.status_code == 400, response.json
    assert any("Bundle.entry[2]" in issue["diagnostics"] for issue in response.json["issue"])
    touched = [s for s in sent if "fhir_" in s or "BEGIN" in s.upper() or "advisory" in s]
    assert touched == [], touched


def test_transaction_conditional_create_maps_to_the_existing_resource(platform: Fhir) -> None:
    """The match is looked up once (under its lock) when the Bundle has no other entry of that type."""
    existing = platform.post("Patient", patient(PID_1)).json
    pat = urn(1)
    with statements_sent() as seen:
        response = platform.post(
            "",
            bundle(
                "transaction",
                post(urn(2), encounter(pat)),
                post(pat, patient(PID_1, given="芳芳"), ifNoneExist=f"identifier={RESIDENT_ID}|{PID_1}"),
            ),
        )
    assert response.status_code == 200, response.json
    lookup = "SELECT fhir_resource.res_id FROM fhir_resource"
    lookups = [s for s in seen if " ".join(s.split()).startswith(lookup)]
    assert len(lookups) == 1, seen
    enc_entry, pat_entry = response.json["entry"]
    assert pat_entry["response"]["status"] == "200 OK"
    assert location(pat_entry) == ("Patient", existing["id"])
    assert pat_entry["resource"]["name"] == existing["name"]  # not replaced
    enc = stored_json("Encounter", location(enc_entry)[1])
    assert enc["subject"]["reference"] == f"Patient/{existing['id']}"
    assert counts()["Patient"] == 1


def test_transaction_with_two_entries_for_the_same_new_patient(platform: Fhir) -> None:
    condition_ = f"identifier={RESIDENT_ID}|{PID_1}"
    response = platform.post(
        "",
        bundle(
            "transaction",
            post(urn(1), patient(PID_1), ifNoneExist=condition_),
            post(urn(2), patient(PID_1), ifNoneExist=condition_),
            post(urn(3), encounter(urn(2))),
        ),
    )
    # both entries cannot become one new Patient: refused as a whole, nothing stored
    assert response.status_code in (400, 409, 412), response.json
    assert response.json["resourceType"] == "OperationOutcome"
    assert counts()["all"] == 2  # the two organisations


def test_transaction_put_full_url_and_registry_order(platform: Fhir) -> None:
    """References to a PUT entry's fullUrl resolve to its id; Coverage may precede its Patient."""
    coverage = {
        "resourceType": "Coverage",
        "status": "active",
        "type": {
            "coding": [
                {"system": "http://referral-service.example/fhir/CodeSystem/coverage-type", "code": "basic"}
            ]
        },
        "beneficiary": {"reference": urn(1)},
        "payor": [{"reference": "Organization/ch-01"}],
        "period": {"start": "2024-01-01", "end": "2024-12-31"},
    }
    response = platform.post(
        "",
        bundle(
            "transaction",
            post(urn(2), coverage),
            {
                "fullUrl": urn(1),
                "resource": patient(PID_1) | {"id": "p-put"},
                "request": {"method": "PUT", "url": "Patient/p-put"},
            },
        ),
    )
    assert response.status_code == 200, response.json
    cov_id = location(response.json["entry"][0])[1]
    assert stored_json("Coverage", cov_id)["beneficiary"]["reference"] == "Patient/p-put"


def test_empty_transaction(platform: Fhir) -> None:
    response = platform.post("", {"resourceType": "Bundle", "type": "transaction"})
    assert response.status_code == 200
    assert response.json["type"] == "transaction-response"
    assert response.json.get("entry", []) == []


def test_transaction_scopes_are_checked_per_entry(
    client: FlaskClient, make_api_client: Callable[..., tuple[str, str]], platform: Fhir
) -> None:
    cid, secret = make_api_client("patients-only", "system/Patient.cruds", "th-01")
    limited = Fhir(client, token_for(client, cid, secret))
    response = limited.post(
        "",
        bundle("transaction", post(urn(1), patient(PID_1)), post(None, encounter(urn(1)))),
    )
    assert response.status_code == 403
    assert "Bundle.entry[1]" in response.json["issue"][0]["diagnostics"]
    assert counts().get("Patient", 0) == 0
    searcher = limited.post(
        "", bundle("batch", {"request": {"method": "GET", "url": "Encounter?status=finished"}})
    )
    assert searcher.json["entry"][0]["response"]["status"].startswith("403")


# ---------------------------------------------------------------------------------------- batch


def test_batch_entries_are_independent(platform: Fhir) -> None:
    existing = platform.post("Patient", patient(PID_2, gender="male", birth="1985-05-05")).json["id"]
    response = platform.post(
        "",
        bundle(
            "batch",
            post(None, patient(PID_1)),
            post(None, patient("620421199003070022")),  # invalid number: 422
            {"request": {"method": "GET", "url": f"Patient/{existing}"}},
            {"request": {"method": "GET", "url": "Patient/nobody"}},  # 404
            post(None, patient(None, family="郑")),
            {
                "resource": {"resourceType": "Patient", "gender": 7},
                "request": {"method": "POST", "url": "Patient"},
            },
            post(None, patient(PID_2, gender="male", birth="1985-05-05")),  # duplicate: 409
            {"request": {"method": "DELETE", "url": f"Patient/{existing}"}},
            {"request": {"url": "Patient"}},  # no method: 400
            post(None, encounter(urn(7))),  # urn references mean nothing in a batch: 400
        ),
    )
    assert response.status_code == 200, response.json
    assert response.json["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in response.json["entry"]]
    assert statuses[0] == "201 Created"
    assert statuses[1].startswith("422")
    assert statuses[2] == "200 OK"
    assert statuses[3].startswith("404")
    assert statuses[4] == "201 Created"
    assert statuses[5].startswith("400")
    assert statuses[6].startswith("409")
    assert statuses[7] == "204 No Content"
    assert statuses[8].startswith("400")
    assert statuses[9].startswith("400")
    for i in (1, 3, 5, 6, 8, 9):
        assert response.json["entry"][i]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    # the failures rolled back nothing else
    created = [location(response.json["entry"][i])[1] for i in (0, 4)]
    for pid in created:
        assert platform.get(f"Patient/{pid}").status_code == 200
    assert counts()["Patient"] == 3


BAD_BUNDLES: list[dict[str, Any]] = [
    {"resourceType": "Bundle", "type": "collection", "entry": []},
    {"resourceType": "Bundle", "type": "searchset"},
    {"resourceType": "Bundle"},
    {"resourceType": "Patient", "gender": "female"},
    {"resourceType": "Bundle", "type": "transaction", "entry": {"not": "a list"}},
    {"resourceType": "Bundle", "type": "transaction", "entry": ["text"]},
    {"resourceType": "Bundle", "type": "transaction", "entry": [{"request": "GET Patient"}]},
    {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "PATCH", "url": "Patient/1"}}],
    },
]


def test_bad_bundles_are_400(platform: Fhir) -> None:
    for body in BAD_BUNDLES:
        response = platform.post("", body)
        assert response.status_code == 400, (body, response.json)
        assert response.json["resourceType"] == "OperationOutcome"


def test_non_json_and_non_object_bodies(platform: Fhir) -> None:
    for data in (b"[]", b"{oops", b'"Bundle"'):
        response = platform.client.post(
            "/fhir", data=data, content_type="application/fhir+json", headers=platform._headers()
        )
        assert response.status_code == 400
        assert response.json["resourceType"] == "OperationOutcome"


def _raw(platform: Fhir, text: str) -> Any:
    """POST a Bundle as written: JSON escapes such as \\ud800 reach the server untouched."""
    return platform.client.post("/fhir", data=text.encode(), content_type="application/fhir+json",
                                headers=platform._headers())


@pytest.mark.parametrize("kind", ["transaction", "batch"])
@pytest.mark.parametrize("element", ["url", "method", "ifMatch", "ifNoneExist"])
@pytest.mark.parametrize("escape", [r"\ud800", r"\udc00", r"\u0000", r"\u001b"])
def test_lone_surrogates_and_controls_in_entry_requests_are_400(
    platform: Fhir, kind: str, element: str, escape: str
) -> None:
    entry = post(urn(1), patient(PID_1))
    entry["request"][element] = {"url": "Patient", "method": "POST"}.get(element, "") + "@"
    text = orjson.dumps(bundle(kind, entry)).decode().replace("@", escape)
    response = _raw(platform, text)
    assert response.status_code == 400, response.data
    assert response.json["resourceType"] == "OperationOutcome"
    assert response.json["issue"][0]["expression"] == [f"Bundle.entry[0].request.{element}"]
    assert counts().get("Patient", 0) == 0


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_a_url_that_does_not_parse_is_400(platform: Fhir, kind: str) -> None:
    response = platform.post("", bundle(kind, post(None, patient(PID_1)),
                                         {"request": {"method": "GET", "url": "http://[::1"}}))
    if kind == "transaction":
        assert response.status_code == 400
        assert "Bundle.entry[1]" in response.json["issue"][0]["diagnostics"]
        assert counts().get("Patient", 0) == 0
    else:
        assert [e["response"]["status"][:3] for e in response.json["entry"]] == ["201", "400"]


def test_a_bundle_with_a_huge_number_is_400(platform: Fhir) -> None:
    text = orjson.dumps(bundle("transaction", post(None, patient(PID_1)))).decode()
    response = _raw(platform, text.replace('"transaction"', '"transaction","n":' + "7" * 5000))
    assert response.status_code == 400
    assert counts().get("Patient", 0) == 0


def test_batch_reads_versions_and_refuses_other_paths(platform: Fhir) -> None:
    pid = platform.post("Patient", patient(PID_1)).json["id"]
    changed = platform.get(f"Patient/{pid}").json | {"gender": "female", "active": False}
    assert platform.put(f"Patient/{pid}", changed).status_code == 200
    response = platform.post(
        "",
        bundle(
            "batch",
            {"request": {"method": "GET", "url": f"Patient/{pid}/_history/1"}},
            {"request": {"method": "GET", "url": f"Patient/{pid}/_history/2"}},
            {"request": {"method": "GET", "url": f"Patient/{pid}/_history/9"}},
            {"request": {"method": "GET", "url": f"Patient/{pid}/_history/x"}},
            {"request": {"method": "GET", "url": f"Patient/{pid}/_history"}},
            {"resource": changed, "request": {"method": "PUT", "url": f"Patient/{pid}/a/b"}},
        ),
    )
    assert response.status_code == 200, response.json
    entries = response.json["entry"]
    assert [e["response"]["status"][:3] for e in entries] == ["200", "200", "404", "404", "400", "400"]
    assert entries[0]["resource"]["meta"]["versionId"] == "1" and "active" not in entries[0]["resource"]
    assert entries[1]["resource"]["meta"]["versionId"] == "2" and entries[1]["resource"]["active"] is False
    assert platform.get(f"Patient/{pid}").json["meta"]["versionId"] == "2"  # the odd PUT wrote nothing


def test_transaction_acting_twice_on_one_resource_is_400(platform: Fhir) -> None:
    pid = platform.post("Patient", patient(PID_1)).json["id"]
    body = platform.get(f"Patient/{pid}").json
    before = counts()
    response = platform.post(
        "",
        bundle(
            "transaction",
            {"resource": body, "request": {"method": "PUT", "url": f"Patient/{pid}"}},
            {"request": {"method": "DELETE", "url": f"Patient/{pid}"}},
        ),
    )
    assert response.status_code == 400, response.json
    assert "Bundle.entry[1]" in response.json["issue"][0]["diagnostics"]
    twins = post(urn(1), patient(None, family="甲")), post(urn(1), patient(None, family="乙"))
    same_url = platform.post("", bundle("transaction", *twins))
    assert same_url.status_code == 400, same_url.json
    assert counts() == before


def test_prefer_return_minimal_answers_writes_without_their_resources(platform: Fhir) -> None:
    """As a single create does (201, no body): the entries of writes carry status, location and ETag
    only; a read entry keeps its resource. The resources were returned whatever Prefer said."""
    pid = platform.post("Patient", patient(PID_1)).json["id"]
    for kind in ("transaction", "batch"):
        bundle = {"resourceType": "Bundle", "type": kind, "entry": [
            {"resource": patient(None), "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": f"Patient/{pid}"}},
            {"request": "not a request"},
        ][: 3 if kind == "batch" else 2]}
        answer = platform.post("", bundle, headers={"Prefer": "return=minimal"})
        assert answer.status_code == 200, answer.json
        written, read = answer.json["entry"][:2]
        assert "resource" not in written and written["response"]["status"].startswith("201")
        assert written["response"]["location"].startswith("Patient/") and written["response"]["etag"]
        assert read["resource"]["id"] == pid
        assert "resource" in platform.post("", bundle).json["entry"][0]
