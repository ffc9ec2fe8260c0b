"""Third-party FHIR client libraries against the app served over real HTTP, on both engines.

`fhirclient` (SMART on FHIR's Python client) and `fhirpy` talk to the running server exactly as an
integrating hospital system would: a bearer token from POST /oauth/token, then create, read, update,
search with paging by `next` links, and transaction Bundles. Nothing here goes through Flask's test
client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from fhirclient import client as smart_client
from fhirclient.auth import FHIRAuth
from fhirclient.models.bundle import Bundle
from fhirclient.models.capabilitystatement import CapabilityStatement
from fhirclient.models.condition import Condition
from fhirclient.models.contactpoint import ContactPoint
from fhirclient.models.encounter import Encounter
from fhirclient.models.observation import Observation
from fhirclient.models.organization import Organization
from fhirclient.models.patient import Patient
from fhirclient.server import FHIRPermissionDeniedException

from referral_service.fhir.codes import BASE, FACILITY_LEVEL_SYSTEM
from tests.interop.conftest import PLATFORM_ORG, SECRET, LiveServer, fetch_token

RESIDENT_ID = f"{BASE}/sid/resident-id"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
PAGING_SYSTEM = "http://interop.test/sid/paging"
TX_SYSTEM = "http://interop.test/sid/transaction"
DISTRICT = "青山县"

# --------------------------------------------------------------------------- resource builders


def organization_json(name: str = "青山县城关镇卫生院", level: str = "township") -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "active": True,
        "name": name,
        "type": [{"coding": [{"system": FACILITY_LEVEL_SYSTEM, "code": level}]}],
        "address": [{"district": DISTRICT, "city": "云州市", "line": ["城关镇"]}],
    }


def patient_json(
    index: int = 0, *, system: str = PAGING_SYSTEM, family: str = "测试", resident_id: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": system, "value": f"p-{index:03d}"}],
        "name": [{"family": family, "given": [f"号{index}"]}],
        "gender": "female" if index % 2 == 0 else "male",
        "birthDate": f"19{50 + index % 50:02d}-0{1 + index % 9}-1{index % 10}",
        "address": [{"district": DISTRICT, "line": ["城关镇", "王家庄村"]}],
    }
    if resident_id:
        body["identifier"].append({"system": RESIDENT_ID, "value": resident_id})
    return body


def encounter_json(patient_ref: str, org_ref: str, status: str = "in-progress") -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "status": status,
        "class": {"system": V3_ACT_CODE, "code": "AMB", "display": "ambulatory"},
        "subject": {"reference": patient_ref},
        "serviceProvider": {"reference": org_ref},
        "period": {"start": "2026-03-02T09:15:00+08:00"},
    }


def condition_json(patient_ref: str, encounter_ref: str) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "code": {"coding": [{"system": ICD10, "code": "J18.9", "display": "肺炎"}]},
        "subject": {"reference": patient_ref},
        "encounter": {"reference": encounter_ref},
    }


def heart_rate_json(patient_ref: str, encounter_ref: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": patient_ref},
        "encounter": {"reference": encounter_ref},
        "effectiveDateTime": "2026-03-02T09:20:00+08:00",
        "valueQuantity": {
            "value": 112, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    }


def without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "meta"}


# ------------------------------------------------------------------------------ library set-up


def make_smart(server: LiveServer, app_id: str, token: str) -> smart_client.FHIRClient:
    """A fhirclient FHIRClient on the FHIR base that signs every request with the bearer token."""
    smart = smart_client.FHIRClient(settings={"app_id": app_id, "api_base": server.fhir_base})
    smart.server.auth = FHIRAuth.create("oauth2", state={"app_id": app_id, "access_token": token})
    assert smart.ready
    return smart


@pytest.fixture
def smart(live_server: LiveServer, platform_token: str) -> Iterator[smart_client.FHIRClient]:
    """fhirclient acting as the county platform."""
    library = make_smart(live_server, "county-platform", platform_token)
    yield library
    library.server.session.close()


@pytest.fixture
def fhirpy_client(live_server: LiveServer, platform_token: str) -> Any:
    """fhirpy's synchronous client acting as the county platform (fhirpy is in the `test` extras)."""
    fhirpy = pytest.importorskip("fhirpy")
    return fhirpy.SyncFHIRClient(live_server.fhir_base, authorization=f"Bearer {platform_token}")


def search_pages(smart: smart_client.FHIRClient, struct: dict[str, str]) -> list[Bundle]:
    """Every page of a search, following `next` links with fhirclient's paging API."""
    return list(Patient.where(struct=struct).perform_iter(smart.server))


# ----------------------------------------------------------------------------------- fhirclient


def test_capability_statement_parses_and_library_obtains_its_own_token(
    live_server: LiveServer, platform_credentials: tuple[str, str]
) -> None:
    """The library reads /metadata (no token) into its R4 model, discovers the token endpoint from the
    SMART oauth-uris extension and runs the client-credentials grant itself (HTTP Basic)."""
    client_id, secret = platform_credentials
    smart = smart_client.FHIRClient(settings={
        "app_id": client_id, "app_secret": secret, "api_base": live_server.fhir_base, "scope": "system/*.rs"})
    smart.wants_patient = False  # a system client: no launch/patient scope
    capability = smart.server.capabilityStatement
    assert isinstance(capability, CapabilityStatement)
    assert capability.fhirVersion == "4.0.1"
    served = {r.type for r in capability.rest[0].resource}
    assert {"Patient", "Organization", "Encounter", "Condition", "Observation"} <= served

    auth = smart.server.auth
    assert auth.auth_type == "oauth2"
    assert auth._token_uri == f"{live_server.url}/oauth/token"  # discovered, not configured
    assert not smart.ready
    granted = auth.authorize(smart.server)
    assert granted["scope"] == "system/*.rs"
    assert granted["organization"] == f"Organization/{PLATFORM_ORG}"
    assert smart.ready
    first_page = next(Patient.where(struct={"_count": "1"}).perform_iter(smart.server))  # the token works
    assert first_page.type == "searchset"
    with pytest.raises(FHIRPermissionDeniedException) as refused:  # read/search only: no create
        Organization(organization_json()).create(smart.server)
    assert refused.value.response.json()["resourceType"] == "OperationOutcome"
    smart.server.session.close()


def test_create_read_update_organization_patient_encounter(
    live_server: LiveServer, smart: smart_client.FHIRClient, make_api_client: Callable[..., tuple[str, str]]
) -> None:
    # The platform registers a township health centre.
    org_body = organization_json()
    created = Organization(org_body).create(smart.server)
    org_id = created["id"]
    assert created["meta"]["versionId"] == "1"
    org = Organization.read(org_id, smart.server)
    assert without_meta(org.as_json()) == {**org_body, "id": org_id}
    assert org.address[0].district == DISTRICT

    # The centre's HIS, with its own credentials, records a patient and a visit.
    client_id, secret = make_api_client("township-his", "system/*.cruds", org_id, secret=SECRET)
    his = make_smart(live_server, client_id, fetch_token(live_server, client_id, secret))
    patient_body = patient_json(7, resident_id="620421199003070021") | {
        "gender": "female", "birthDate": "1990-03-07", "generalPractitioner": [
            {"reference": f"Organization/{org_id}"}]}
    patient_id = Patient(patient_body).create(his.server)["id"]
    patient = Patient.read(patient_id, his.server)
    assert without_meta(patient.as_json()) == {**patient_body, "id": patient_id}
    assert patient.birthDate.isostring == "1990-03-07"

    encounter_body = encounter_json(f"Patient/{patient_id}", f"Organization/{org_id}")
    encounter_id = Encounter(encounter_body).create(his.server)["id"]
    encounter = Encounter.read(encounter_id, his.server)
    assert without_meta(encounter.as_json()) == {**encounter_body, "id": encounter_id}
    assert encounter.subject.resolved(Patient).id == patient_id
    assert encounter.serviceProvider.resolved(Organization).name == org_body["name"]
    found = list(Encounter.where(struct={"patient": patient_id}).perform_resources_iter(his.server))
    assert [e.id for e in found] == [encounter_id]

    # An update through the library's model: version 2, the change is there, version 1 is unchanged.
    patient.telecom = [ContactPoint({"system": "phone", "value": "13800000000", "use": "mobile"})]
    updated = patient.update()
    assert updated["meta"]["versionId"] == "2"
    assert Patient.read(patient_id, his.server).telecom[0].value == "13800000000"
    first = Patient.read_from(f"Patient/{patient_id}/_history/1", his.server)
    assert first.telecom is None
    his.server.session.close()


def test_search_paging_follows_next_links(live_server: LiveServer, smart: smart_client.FHIRClient) -> None:
    created = {Patient(patient_json(i)).create(smart.server)["id"] for i in range(30)}
    assert len(created) == 30
    Patient(patient_json(99, system="http://interop.test/sid/other")).create(smart.server)  # not a match

    for count, sizes in ((10, [10, 10, 10]), (7, [7, 7, 7, 7, 2])):
        pages = search_pages(smart, {"identifier": f"{PAGING_SYSTEM}|", "_count": str(count)})
        assert [len(page.entry or []) for page in pages] == sizes
        assert all(page.type == "searchset" and page.total == 30 for page in pages)
        ids = [entry.resource.id for page in pages for entry in page.entry]
        assert len(ids) == len(set(ids)) == 30
        assert set(ids) == created
        for page in pages[:-1]:
            links = {link.relation: link.url for link in page.link}
            assert links["next"].startswith(f"{live_server.fhir_base}/Patient?")
        assert "next" not in {link.relation for link in pages[-1].link}

    by_name = Patient.where(struct={"family": "测试", "_count": "10"})
    everyone = list(by_name.perform_resources_iter(smart.server))
    assert len(everyone) == 31
    assert all(isinstance(p, Patient) for p in everyone)


def test_transaction_bundle(smart: smart_client.FHIRClient) -> None:
    org = "urn:uuid:0b7a1e52-7d7e-4c38-9a34-0b1f3b0e1a01"
    pat = "urn:uuid:5f0c7a11-2a9c-4a0b-8f38-1b6e0fd8c3a2"
    enc = "urn:uuid:9d2e4b3c-6f7a-4e1d-b2c5-3a8f9e0d1c4b"
    entries = [
        (org, "Organization", organization_json("青山县人民医院", "county")),
        (pat, "Patient", patient_json(1, system=TX_SYSTEM) | {"generalPractitioner": [{"reference": org}]}),
        (enc, "Encounter", encounter_json(pat, org) | {"class": {
            "system": V3_ACT_CODE, "code": "IMP", "display": "inpatient encounter"}}),
        ("urn:uuid:c0ad1e2f-3b4c-4d5e-8f60-718293a4b5c6", "Condition", condition_json(pat, enc)),
        ("urn:uuid:0b5e7c6d-1a2b-4c3d-9e8f-7a6b5c4d3e2f", "Observation", heart_rate_json(pat, enc)),
    ]
    transaction = Bundle({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": full_url, "resource": body, "request": {"method": "POST", "url": rtype}}
            for full_url, rtype, body in entries
        ],
    })
    response = Bundle(transaction.create(smart.server))

    assert response.type == "transaction-response"
    assert len(response.entry) == len(entries)
    assigned: dict[str, str] = {}
    for (full_url, rtype, _), entry in zip(entries, response.entry, strict=True):
        assert entry.response.status.startswith("201")
        location_type, location_id, history, version = entry.response.location.split("/")
        assert (location_type, history, version) == (rtype, "_history", "1")
        assigned[full_url] = f"{rtype}/{location_id}"

    encounter = Encounter.read(assigned[enc].split("/")[1], smart.server)
    assert encounter.subject.reference == assigned[pat]
    assert encounter.serviceProvider.reference == assigned[org]
    condition = Condition.read(assigned[entries[3][0]].split("/")[1], smart.server)
    assert condition.encounter.reference == assigned[enc]
    assert condition.subject.resolved(Patient).generalPractitioner[0].reference == assigned[org]
    observation = Observation.read(assigned[entries[4][0]].split("/")[1], smart.server)
    assert observation.valueQuantity.value == 112
    assert observation.encounter.resolved(Encounter).id == encounter.id


def test_failed_transaction_answers_4xx_and_stores_nothing(smart: smart_client.FHIRClient) -> None:
    pat = "urn:uuid:7c9e6679-7425-40de-944b-e07fc1f90ae7"
    transaction = Bundle({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": pat, "resource": patient_json(2, system=TX_SYSTEM),
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": encounter_json(pat, "Organization/no-such-organization"),
             "request": {"method": "POST", "url": "Encounter"}},
        ],
    })
    with pytest.raises(requests.HTTPError) as failed:
        transaction.create(smart.server)
    answer = failed.value.response
    assert answer is not None and answer.status_code == 422
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "no-such-organization" in outcome["issue"][0]["diagnostics"]
    pages = search_pages(smart, {"identifier": f"{TX_SYSTEM}|"})
    assert [page.total for page in pages] == [0]
    assert pages[0].entry is None


# --------------------------------------------------------------------------------------- fhirpy


def test_fhirpy_create_read_search_paging_and_transaction(fhirpy_client: Any) -> None:
    org = fhirpy_client.resource("Organization", **organization_json("青山县中医院", "county"))
    org.save()
    assert org.id and org["meta"]["versionId"] == "1"
    read = fhirpy_client.reference("Organization", org.id).to_resource()
    assert read["name"] == "青山县中医院"
    assert read["address"][0]["district"] == DISTRICT

    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}",
             "resource": patient_json(i) | {"managingOrganization": {"reference": f"Organization/{org.id}"}},
             "request": {"method": "POST", "url": "Patient"}}
            for i in range(30)
        ],
    }
    response = fhirpy_client.execute("", method="post", data=bundle)
    assert response["type"] == "transaction-response"
    assert all(e["response"]["status"].startswith("201") for e in response["entry"])
    created = {e["response"]["location"].split("/")[1] for e in response["entry"]}

    search = fhirpy_client.resources("Patient").search(organization=f"Organization/{org.id}").limit(10)
    first_page = search.fetch()
    assert len(first_page) == 10
    every = search.fetch_all()  # follows the next links
    assert len(every) == 30
    assert {p.id for p in every} == created

    patient = fhirpy_client.reference("Patient", first_page[0].id).to_resource()
    patient["telecom"] = [{"system": "phone", "value": "13900000000"}]
    patient.save()
    assert patient["meta"]["versionId"] == "2"
    again = fhirpy_client.reference("Patient", patient.id).to_resource()
    assert again["telecom"][0]["value"] == "13900000000"


def test_fhirpy_query_builder_searches(fhirpy_client: Any) -> None:
    """What fhirpy's query builder sends, as HAPI answers it: chained and reverse-chained parameters
    (`subject:Patient.identifier`, `_has:Encounter:subject:status`), several `_sort` keys, `_elements`
    (fhirpy adds `id,resourceType`), `_include:iterate` and `_revinclude`."""
    gp = fhirpy_client.resource("Organization", **organization_json("青山县城南卫生院"))
    gp.save()
    people = []
    for i, family in enumerate(("赵", "钱", "赵")):
        person = fhirpy_client.resource(
            "Patient", **patient_json(900 + i, family=family)
            | {"generalPractitioner": [{"reference": f"Organization/{gp.id}"}]})
        person.save()
        people.append(person)
    visit = fhirpy_client.resource("Encounter", **{
        "resourceType": "Encounter", "status": "finished", "class": {"system": V3_ACT_CODE, "code": "AMB"},
        "subject": {"reference": f"Patient/{people[1].id}"},
        "serviceProvider": {"reference": f"Organization/{gp.id}"},
        "period": {"start": "2026-11-02T09:00:00+08:00", "end": "2026-11-02T09:30:00+08:00"},
    })
    visit.save()
    identifier = f"{PAGING_SYSTEM}|p-901"

    chained = fhirpy_client.resources("Encounter").search(subject__Patient__identifier=identifier).fetch_all()
    assert [e.id for e in chained] == [visit.id]

    has = fhirpy_client.resources("Patient").has("Encounter", "subject", status="finished").search(
        general_practitioner=f"Organization/{gp.id}").fetch_all()
    assert [p.id for p in has] == [people[1].id]

    ordered = (fhirpy_client.resources("Patient").search(general_practitioner=f"Organization/{gp.id}")
               .sort("family", "-birthdate").fetch_all())
    zhao = sorted((people[0], people[2]), key=lambda p: str(p["birthDate"]), reverse=True)
    # by code point 赵 (U+8D75) comes before 钱 (U+94B1); the two 赵 youngest first
    assert [p.id for p in ordered] == [*(p.id for p in zhao), people[1].id]

    slim = (fhirpy_client.resources("Patient").search(general_practitioner=f"Organization/{gp.id}")
            .elements("gender").fetch_all())
    assert all(set(p.serialize()) <= {"resourceType", "id", "meta", "gender"} for p in slim)
    assert all(any(t["code"] == "SUBSETTED" for t in p["meta"]["tag"]) for p in slim)

    raw = (fhirpy_client.resources("Encounter").search(_id=visit.id).include("Encounter", "subject")
           .include("Patient", "general-practitioner", iterate=True).fetch_raw())
    included = {(e["resource"]["resourceType"], e["resource"]["id"])
                for e in raw["entry"] if e["search"]["mode"] == "include"}
    assert included == {("Patient", people[1].id), ("Organization", gp.id)}
