"""The access policy over HTTP on both engines: who sees which patients and records (DESIGN section 8)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest
from flask.testing import FlaskClient

from referral_service.domain.resident_id import generate
from tests.functional.fhir_helpers import RESIDENT_ID, Fhir, organization, patient, token_for

V3 = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
COVERAGE_TYPE = "http://referral-service.example/fhir/CodeSystem/coverage-type"


def _pid(year: int, gender: str, n: int) -> str:
    return generate("620421", date(year, 1, 1), gender, n)


def _person(
    year: int, n: int, family: str, *, gp: str | None = None, district: str = "青山县"
) -> dict[str, Any]:
    body = patient(_pid(year, "female", n), family=family, birth=f"{year}-01-01", gp=gp)
    body["address"] = [{"district": district}]
    return body


def _encounter(subject: str, provider: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "status": "in-progress",
        "class": {"system": V3, "code": "AMB"},
        "subject": {"reference": f"Patient/{subject}"},
        "serviceProvider": {"reference": f"Organization/{provider}"},
    }


def _coverage(subject: str) -> dict[str, Any]:
    return {
        "resourceType": "Coverage",
        "status": "active",
        "type": {"coding": [{"system": COVERAGE_TYPE, "code": "basic"}]},
        "beneficiary": {"reference": f"Patient/{subject}"},
        "payor": [{"reference": "Organization/ins-01"}],
        "period": {"start": "2024-01-01", "end": "2024-12-31"},
    }


def _created(response: Any) -> str:
    assert response.status_code == 201, response.json
    return str(response.json["id"])


@dataclass
class County:
    """Clients of the demo-like county and the records each one made."""

    platform: Fhir
    township: Fhir  # th-01
    township2: Fhir  # th-02, another township of the same county
    county: Fhir  # ch-01, the county people's hospital (leads the district)
    insurer: Fhir  # ins-01, the county medical insurance bureau
    of_th2: str  # created by township2, generalPractitioner th-02
    gp_th1: str  # created by the platform, generalPractitioner th-01
    own: str  # created by township, no generalPractitioner
    unlinked: str  # created by the platform, in the county, no generalPractitioner
    city: str  # created by the platform, living in the city (another district)
    enc_th2: str  # township2's Encounter of of_th2
    cov_th2: str  # Coverage of of_th2
    cov_city: str  # Coverage of city


@pytest.fixture
def county(client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]) -> County:
    def fhir(client_id: str, org: str, scopes: str = "system/*.cruds") -> Fhir:
        cid, secret = make_api_client(client_id, scopes, org)
        return Fhir(client, token_for(client, cid, secret))

    platform = fhir("county-platform", "qs-health-commission")
    for org in (
        organization("th-01"),
        organization("th-02", name="第二卫生院"),
        organization("ch-01", level="county", name="县人民医院"),
        organization("city-h", level="city", district="云州市", name="市医院"),
        organization("ins-01", level=None, kind="insurer", name="县医保局"),
    ):
        org_id = {
            "测试卫生院": "th-01",
            "第二卫生院": "th-02",
            "县人民医院": "ch-01",
            "市医院": "city-h",
        }.get(org["name"], "ins-01")
        assert platform.put(f"Organization/{org_id}", org | {"id": org_id}).status_code == 201
    township, township2 = fhir("township-his", "th-01"), fhir("township2-his", "th-02")
    county_h, insurer = fhir("county-his", "ch-01"), fhir("insurance-office", "ins-01")

    of_th2 = _created(township2.post("Patient", _person(1970, 1, "赵", gp="th-02")))
    gp_th1 = _created(platform.post("Patient", _person(1971, 2, "钱", gp="th-01")))
    own = _created(township.post("Patient", _person(1972, 3, "孙")))
    unlinked = _created(platform.post("Patient", _person(1973, 4, "李")))
    city = _created(platform.post("Patient", _person(1974, 5, "周", district="云州市")))
    enc_th2 = _created(township2.post("Encounter", _encounter(of_th2, "th-02")))
    cov_th2 = _created(platform.post("Coverage", _coverage(of_th2)))
    cov_city = _created(platform.post("Coverage", _coverage(city)))
    return County(
        platform,
        township,
        township2,
        county_h,
        insurer,
        of_th2,
        gp_th1,
        own,
        unlinked,
        city,
        enc_th2,
        cov_th2,
        cov_city,
    )


def ids(response: Any) -> set[str]:
    assert response.status_code == 200, response.json
    return {e["resource"]["id"] for e in response.json.get("entry", []) if e["search"]["mode"] == "match"}


def included(response: Any) -> set[str]:
    assert response.status_code == 200, response.json
    return {e["resource"]["id"] for e in response.json.get("entry", []) if e["search"]["mode"] == "include"}


def assert_unknown(response: Any, fhir: Fhir, path: str) -> None:
    """404 with exactly the body a nonexistent id gets (the id and request id aside)."""
    assert response.status_code == 404, response.json
    hidden_id = path.rstrip("/").split("/")[1]
    nowhere = fhir.get(path.replace(hidden_id, "no-such-id-000"))
    assert nowhere.status_code == 404

    def shape(body: dict[str, Any], the_id: str) -> Any:
        return [
            {**issue, "diagnostics": issue.get("diagnostics", "").replace(the_id, "<id>")}
            for issue in body["issue"]
        ]

    assert response.json["resourceType"] == nowhere.json["resourceType"] == "OperationOutcome"
    assert shape(response.json, hidden_id) == shape(nowhere.json, "no-such-id-000")
    assert set(response.json) == set(nowhere.json)
    assert response.headers.get("Content-Type") == nowhere.headers.get("Content-Type")


# ------------------------------------------------------------------------------------- township


def test_township_sees_only_its_own_records(county: County) -> None:
    t = county.township
    hidden = county.of_th2
    assert_unknown(t.get(f"Patient/{hidden}"), t, f"Patient/{hidden}")
    assert_unknown(t.get(f"Patient/{hidden}/_history/1"), t, f"Patient/{hidden}/_history/1")
    assert_unknown(t.get(f"Patient/{hidden}/_history"), t, f"Patient/{hidden}/_history")
    assert_unknown(t.get(f"Encounter/{county.enc_th2}"), t, f"Encounter/{county.enc_th2}")
    number = county.township2.get(f"Patient/{hidden}").json["identifier"][0]["value"]
    for query in (
        "Patient",
        f"Patient?_id={hidden}",
        f"Patient?identifier={RESIDENT_ID}|{number}",
        "Patient?family=赵",
        "Patient?general-practitioner=th-02",
        "Patient?_sort=-_lastUpdated&_count=1000",
        f"Patient?_id={hidden}&_revinclude=Encounter:subject",
    ):
        assert hidden not in ids(t.get(query)), query
    assert ids(t.get(f"Encounter?subject={hidden}")) == set()
    assert ids(t.get("Encounter")) == set()
    assert t.get(f"Patient?_id={hidden}&_summary=count").json["total"] == 0
    assert hidden not in {e["resource"]["id"] for e in t.get("Patient/_history").json.get("entry", [])}
    # writes to it are answered as for an unknown id too
    body = county.township2.get(f"Patient/{hidden}").json
    assert t.put(f"Patient/{hidden}", body).status_code == 404
    assert t.delete(f"Patient/{hidden}").status_code == 404
    assert county.township2.get(f"Patient/{hidden}").json["meta"]["versionId"] == "1"

    # it sees its catchment (generalPractitioner) and what it created
    t = county.township
    assert t.get(f"Patient/{county.gp_th1}").status_code == 200  # generalPractitioner is th-01
    assert t.get(f"Patient/{county.own}").status_code == 200  # created by township-his
    assert ids(t.get("Patient")) == {county.gp_th1, county.own}
    assert t.get("Patient?_summary=count").json["total"] == 2
    # the other township sees its own, not these
    assert ids(county.township2.get("Patient")) == {county.of_th2}

    # it sees a patient once it treated them: the patient presents their identity (a conditional
    # create by number returns the record), then the visit is written. Without that, a visit to a
    # record it may not see is refused as for a patient who does not exist.
    t = county.township
    target = county.unlinked
    assert_unknown(t.get(f"Patient/{target}"), t, f"Patient/{target}")
    assert t.post("Encounter", _encounter(target, "th-01")).status_code == 422
    presented = t.post("Patient", _person(1973, 4, "李"),
                       headers={"If-None-Exist": f"identifier={RESIDENT_ID}|{_pid(1973, 'female', 4)}"})
    assert presented.status_code == 200 and presented.json["id"] == target
    enc = _created(t.post("Encounter", _encounter(target, "th-01")))
    assert t.get(f"Patient/{target}").status_code == 200
    assert target in ids(t.get("Patient"))
    assert ids(t.get(f"Encounter?patient={target}")) == {enc}
    with_patient = t.get(f"Encounter?_id={enc}&_include=Encounter:subject")
    assert included(with_patient) == {target}
    # another township's visit to the same patient is part of the record the clinic now sees
    assert county.township2.post("Patient", _person(1973, 4, "李"), headers={
        "If-None-Exist": f"identifier={RESIDENT_ID}|{_pid(1973, 'female', 4)}"}).status_code == 200
    other = _created(county.township2.post("Encounter", _encounter(target, "th-02")))
    assert ids(t.get(f"Encounter?patient={target}")) == {enc, other}
    # ...but not the other township's own patients
    assert_unknown(t.get(f"Patient/{county.of_th2}"), t, f"Patient/{county.of_th2}")


def test_hidden_records_stay_hidden(county: County) -> None:
    # a deleted patient the client never saw is unknown (404), not gone (410)
    t2 = county.township2
    gone = _created(t2.post("Patient", _person(1980, 7, "吴", gp="th-02")))
    assert t2.delete(f"Patient/{gone}").status_code == 204
    assert t2.get(f"Patient/{gone}").status_code == 410
    assert_unknown(county.township.get(f"Patient/{gone}"), county.township, f"Patient/{gone}")

    # ...and cannot be overwritten (update-as-create) by it
    gone = _created(t2.post("Patient", _person(1981, 8, "郑", gp="th-02")))
    body = t2.get(f"Patient/{gone}").json
    assert t2.delete(f"Patient/{gone}").status_code == 204
    revived = county.township.put(
        f"Patient/{gone}", body | {"generalPractitioner": [{"reference": "Organization/th-01"}]}
    )
    assert revived.status_code == 404
    assert county.township.get(f"Patient/{gone}").status_code == 404

    # a conditional create never hands out a record the client may not read
    visit = _encounter(county.of_th2, "th-02") | {
        "identifier": [{"system": "urn:oid:1.2.156.9", "value": "V-1"}]
    }
    assert county.township2.post("Encounter", visit).status_code == 201
    again = county.township.post(
        "Encounter", visit, headers={"If-None-Exist": "identifier=urn:oid:1.2.156.9|V-1"}
    )
    assert again.status_code == 409
    assert again.json["resourceType"] == "OperationOutcome"
    assert county.of_th2 not in again.get_data(as_text=True)
    # a Patient who presents with their identity number is found (and is in the clinic's records now)
    number = county.township2.get(f"Patient/{county.of_th2}").json["identifier"][0]["value"]
    presented = county.township.post(
        "Patient", _person(1970, 1, "赵"), headers={"If-None-Exist": f"identifier={RESIDENT_ID}|{number}"}
    )
    assert presented.status_code == 200
    assert presented.json["id"] == county.of_th2
    assert county.township.get(f"Patient/{county.of_th2}").status_code == 200


def test_hospital_insurer_and_platform_views(county: County) -> None:
    c = county.county
    in_county = {county.of_th2, county.gp_th1, county.own, county.unlinked}
    assert ids(c.get("Patient")) == in_county
    for pid in in_county:
        assert c.get(f"Patient/{pid}").status_code == 200
    assert_unknown(c.get(f"Patient/{county.city}"), c, f"Patient/{county.city}")
    assert ids(c.get("Encounter")) == {county.enc_th2}  # records of its district's patients
    assert ids(c.get("Coverage")) == {county.cov_th2}

    # the insurance bureau sees the Coverage of its county, not Encounters
    i = county.insurer
    assert ids(i.get("Coverage")) == {county.cov_th2}
    assert i.get(f"Coverage/{county.cov_th2}").status_code == 200
    assert_unknown(i.get(f"Coverage/{county.cov_city}"), i, f"Coverage/{county.cov_city}")
    assert ids(i.get(f"Coverage?beneficiary={county.city}")) == set()
    assert ids(i.get("Encounter")) == set()
    assert_unknown(i.get(f"Encounter/{county.enc_th2}"), i, f"Encounter/{county.enc_th2}")
    # the insured people of its county are visible with their coverage
    cov = i.get(f"Coverage?_id={county.cov_th2}&_include=Coverage:beneficiary")
    assert included(cov) == {county.of_th2}
    assert county.city not in ids(i.get("Patient"))
    # an encounter's patient does not pull the encounter in
    assert included(i.get(f"Patient?_id={county.of_th2}&_revinclude=Encounter:subject")) == set()

    # the platform sees everything
    p = county.platform
    everyone = {county.of_th2, county.gp_th1, county.own, county.unlinked, county.city}
    assert ids(p.get("Patient")) == everyone
    for pid in everyone:
        assert p.get(f"Patient/{pid}").status_code == 200
    assert ids(p.get("Encounter")) == {county.enc_th2}
    assert ids(p.get("Coverage")) == {county.cov_th2, county.cov_city}
    assert ids(p.get("Organization")) >= {"th-01", "th-02", "ch-01", "city-h", "ins-01"}

    # the directory (Organization) is visible to every client
    for fhir in (county.township, county.insurer, county.county):
        assert fhir.get("Organization/th-02").status_code == 200
        assert ids(fhir.get("Organization?name=第二")) == {"th-02"}

    # audit events are not for clinics
    response = county.township.get("AuditEvent")
    assert response.status_code in (200, 403)
    if response.status_code == 200:
        assert ids(response) == set()


# -------------------------------------------------------------------------------------- scopes


def test_scope_outside_the_token_is_403(
    client: FlaskClient, make_api_client: Callable[..., tuple[str, str]], county: County
) -> None:
    cid, secret = make_api_client("reader", "system/Patient.rs system/Encounter.r", "th-01")
    reader = Fhir(client, token_for(client, cid, secret))
    assert reader.get(f"Patient/{county.gp_th1}").status_code == 200
    for response in (
        reader.get("Coverage"),
        reader.get(f"Coverage/{county.cov_th2}"),
        reader.get("Encounter?status=in-progress"),  # read but not search
        reader.post("Patient", patient(None)),
        reader.put(f"Patient/{county.gp_th1}", reader.get(f"Patient/{county.gp_th1}").json),
        reader.delete(f"Patient/{county.gp_th1}"),
    ):
        assert response.status_code == 403, response.json
        assert response.json["resourceType"] == "OperationOutcome"
        assert response.json["issue"][0]["code"] == "forbidden"
    # a token asked for fewer scopes gets only those
    narrow = Fhir(client, token_for(client, cid, secret, scope="system/Patient.r"))
    assert narrow.get(f"Patient/{county.gp_th1}").status_code == 200
    assert narrow.get("Patient").status_code == 403
    # a batch entry outside the scopes answers 403 for that entry only
    batch = reader.post(
        "",
        {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {"request": {"method": "GET", "url": f"Patient/{county.gp_th1}"}},
                {"request": {"method": "GET", "url": "Coverage"}},
                {
                    "request": {
                        "method": "GET",
                        "url": f"Patient?_revinclude=Encounter:subject&_id={county.gp_th1}",
                    }
                },
            ],
        },
    )
    assert [e["response"]["status"][:3] for e in batch.json["entry"]] == ["200", "403", "403"]


def test_includes_outside_the_token_scopes_are_refused(
    client: FlaskClient, make_api_client: Callable[..., tuple[str, str]], county: County
) -> None:
    cid, secret = make_api_client("patient-reader", "system/Patient.rs", "th-01")
    reader = Fhir(client, token_for(client, cid, secret))
    _created(county.township.post("Encounter", _encounter(county.gp_th1, "th-01")))
    response = reader.get(f"Patient?_id={county.gp_th1}&_revinclude=Encounter:subject")
    assert response.status_code == 403 or included(response) == set()


# ------------------------------------------------------------------------------------- writes


def _observation(subject: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": f"Patient/{subject}"}}


def _refusal(response: Any, hidden: str) -> list[Any]:
    """The 422's issues with the patient's id blanked (to compare with a reference to nothing)."""
    assert response.status_code == 422, response.json
    return [{**i, "diagnostics": i["diagnostics"].replace(hidden, "<id>")} for i in response.json["issue"]]


def test_writing_about_a_patient_out_of_sight_is_refused_as_if_it_did_not_exist(county: County) -> None:
    """A write must not open a record to its writer: a reference to a patient the client may not see
    is answered exactly as one to no patient (422), nothing is written, and the patient stays hidden."""
    t, hidden = county.township, county.of_th2
    nowhere = "no-such-patient-1"
    cases = [
        (_observation(hidden), _observation(nowhere), "Observation"),
        (_coverage(hidden), _coverage(nowhere), "Coverage"),
        (_encounter(hidden, "th-01"), _encounter(nowhere, "th-01"), "Encounter"),
    ]
    for body, twin, rtype in cases:
        refused, missing = t.post(rtype, body), t.post(rtype, twin)
        assert _refusal(refused, hidden) == _refusal(missing, nowhere), rtype
    put = t.put("Observation/obs-hidden-1", _observation(hidden) | {"id": "obs-hidden-1"})
    assert _refusal(put, hidden) == _refusal(
        t.put("Observation/obs-hidden-2", _observation(nowhere) | {"id": "obs-hidden-2"}), nowhere)
    bundle = t.post("", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": _observation(hidden), "request": {"method": "POST", "url": "Observation"}}]})
    assert bundle.status_code == 422, bundle.json
    assert_unknown(t.get(f"Patient/{hidden}"), t, f"Patient/{hidden}")
    assert ids(t.get(f"Coverage?beneficiary=Patient/{hidden}")) == set()
    assert ids(county.platform.get(f"Observation?subject=Patient/{hidden}")) == set()


def test_a_patient_who_presents_their_identity_can_then_be_treated(county: County) -> None:
    """The way in for a walk-in from another township: a conditional create by identity number
    returns the existing record (the patient presented), and writes about them then succeed."""
    t, hidden = county.township, county.of_th2
    assert t.post("Observation", _observation(hidden)).status_code == 422
    number = _pid(1970, "female", 1)
    found = t.post("Patient", _person(1970, 1, "赵", gp="th-02"),
                   headers={"If-None-Exist": f"identifier={RESIDENT_ID}|{number}"})
    assert found.status_code == 200 and found.json["id"] == hidden
    assert t.post("Observation", _observation(hidden)).status_code == 201
    assert t.get(f"Patient/{hidden}").status_code == 200


def test_the_county_hospital_writes_about_its_district_and_the_platform_about_anyone(county: County) -> None:
    assert county.county.post("Observation", _observation(county.of_th2)).status_code == 201
    assert county.platform.post("Observation", _observation(county.city)).status_code == 201
    assert county.county.post("Observation", _observation(county.city)).status_code == 422
