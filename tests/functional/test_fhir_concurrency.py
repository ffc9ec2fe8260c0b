"""Concurrent requests against a real HTTP server on PostgreSQL: they never fail because of each other."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.serving import make_server

from referral_service.domain.fhir_store import StoredResource
from referral_service.domain.registry import Patient
from referral_service.domain.resident_id import generate
from referral_service.extensions import database
from tests.functional.fhir_helpers import FHIR, JSON_PATCH, RESIDENT_ID, organization, patient, token_for

V3 = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PID_1 = generate("620421", date(1990, 3, 7), "female", 1)
PID_2 = generate("620421", date(1985, 6, 1), "male", 2)
TIMEOUT = 60


@pytest.fixture
def postgres_only(backend: str) -> None:
    """Skip on SQLite (before any app is built): it serialises every writer."""
    if backend != "postgresql":
        pytest.skip("SQLite serialises every writer: the concurrency guarantees are PostgreSQL's")


@pytest.fixture
def base_url(postgres_only: None, app: Flask) -> Iterator[str]:
    """The app served by a threaded werkzeug server on a free port (PostgreSQL only)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/fhir"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


class Http:
    """A FHIR client over real HTTP (one requests.Session per thread)."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}", "Accept": FHIR, "Content-Type": FHIR}
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        session: requests.Session = self._local.session
        return session

    def request(self, method: str, path: str, body: Any = None, **headers: str) -> requests.Response:
        return self.session.request(
            method,
            f"{self.base}/{path}",
            json=body,
            headers={**self.headers, **headers},
            timeout=TIMEOUT,
        )


@pytest.fixture
def tokens(client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]) -> dict[str, str]:
    """Bearer tokens of the platform and of a township clinic (th-01)."""
    cid, secret = make_api_client("county-platform", "system/*.cruds", "qs-health-commission")
    platform_token = token_for(client, cid, secret)
    headers = {"Authorization": f"Bearer {platform_token}"}
    for org in (organization("th-01"), organization("ch-01", level="county")):
        org_id = "th-01" if org["type"][0]["coding"][0]["code"] == "township" else "ch-01"
        response = client.put(f"/fhir/Organization/{org_id}", json=org | {"id": org_id}, headers=headers)
        assert response.status_code == 201, response.json
    cid, secret = make_api_client("township-his", "system/*.cruds", "th-01")
    return {"platform": platform_token, "township": token_for(client, cid, secret)}


def run_parallel(n: int, work: Callable[[int], requests.Response]) -> list[requests.Response]:
    """Run work(0..n-1) on n threads released at the same moment."""
    barrier = threading.Barrier(n)

    def task(i: int) -> requests.Response:
        barrier.wait(timeout=TIMEOUT)
        return work(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(task, range(n)))


def count(res_type: str) -> int:
    with database.session() as s:
        return int(
            s.scalar(
                select(func.count())
                .select_from(StoredResource)
                .where(StoredResource.res_type == res_type, StoredResource.deleted.is_(False))
            )
            or 0
        )


def statuses(responses: list[requests.Response]) -> list[int]:
    return sorted(r.status_code for r in responses)


def encounter(subject: str, n: int) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "status": "in-progress",
        "class": {"system": V3, "code": "AMB"},
        "subject": {"reference": f"Patient/{subject}"},
        "serviceProvider": {"reference": "Organization/th-01"},
        "identifier": [{"system": "urn:oid:1.2.156.9", "value": f"visit-{n}"}],
    }


def test_same_conditional_create_makes_exactly_one(base_url: str, tokens: dict[str, str]) -> None:
    http = Http(base_url, tokens["township"])
    condition = f"identifier={RESIDENT_ID}|{PID_1}"
    responses = run_parallel(
        20, lambda i: http.request("POST", "Patient", patient(PID_1), **{"If-None-Exist": condition})
    )
    assert statuses(responses) == [200] * 19 + [201], [r.text for r in responses if r.status_code >= 300]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    winner = next(r for r in responses if r.status_code == 201)
    assert all(r.json() == winner.json() for r in responses)
    assert count("Patient") == 1
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(Patient)) == 1


def test_same_conditional_create_in_transactions(base_url: str, tokens: dict[str, str]) -> None:
    http = Http(base_url, tokens["platform"])

    def bundle(i: int) -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": "urn:uuid:5b0f3c1e-0000-4000-8000-000000000001",
                    "resource": patient(PID_1),
                    "request": {
                        "method": "POST",
                        "url": "Patient",
                        "ifNoneExist": f"identifier={RESIDENT_ID}|{PID_1}",
                    },
                },
                {
                    "resource": encounter("will-be-rewritten", i)
                    | {"subject": {"reference": "urn:uuid:5b0f3c1e-0000-4000-8000-000000000001"}},
                    "request": {"method": "POST", "url": "Encounter"},
                },
            ],
        }

    _one_patient_for_ten_visits(run_parallel(10, lambda i: http.request("POST", "", bundle(i))))


def test_same_conditional_update_makes_exactly_one(base_url: str, tokens: dict[str, str]) -> None:
    """PUT Patient?identifier=... of a patient not yet stored, 20 times at once: the criteria's lock
    makes the first a create and the others updates of it, never a second patient."""
    http = Http(base_url, tokens["township"])
    criteria = f"Patient?identifier={RESIDENT_ID}|{PID_1}"

    def update(i: int) -> requests.Response:
        body = patient(PID_1) | {"telecom": [{"system": "phone", "value": f"1380000{i:04d}"}]}
        return http.request("PUT", criteria, body)

    responses = run_parallel(20, update)
    assert statuses(responses) == [200] * 19 + [201], [r.text for r in responses if r.status_code >= 300]
    assert len({r.json()["id"] for r in responses}) == 1
    assert sorted(int(r.json()["meta"]["versionId"]) for r in responses) == list(range(1, 21))
    assert count("Patient") == 1
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(Patient)) == 1


def test_conditional_creates_and_updates_of_the_same_criteria_make_one(
    base_url: str, tokens: dict[str, str]
) -> None:
    """A conditional create and a conditional update of the same criteria, written in another order,
    take the same lock: one Encounter, whatever the interleaving."""
    http = Http(base_url, tokens["township"])
    pid = http.request("POST", "Patient", patient(PID_1)).json()["id"]
    visit = "identifier=urn:oid:1.2.156.9|visit-1"
    of_patient = f"subject=Patient/{pid}"

    def work(i: int) -> requests.Response:
        if i % 2:
            return http.request("POST", "Encounter", encounter(pid, 1),
                                **{"If-None-Exist": f"{visit}&{of_patient}"})
        return http.request("PUT", f"Encounter?{of_patient}&{visit}", encounter(pid, 1))

    responses = run_parallel(20, work)
    assert all(r.status_code in (200, 201) for r in responses), [r.text for r in responses]
    assert [r.status_code for r in responses].count(201) == 1
    assert count("Encounter") == 1


def test_same_conditional_update_in_transactions(base_url: str, tokens: dict[str, str]) -> None:
    http = Http(base_url, tokens["platform"])
    person = "urn:uuid:5b0f3c1e-0000-4000-8000-000000000002"

    def bundle(i: int) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": person, "resource": patient(PID_1),
             "request": {"method": "PUT", "url": f"Patient?identifier={RESIDENT_ID}|{PID_1}"}},
            {"resource": encounter("x", i) | {"subject": {"reference": person}},
             "request": {"method": "POST", "url": "Encounter"}},
        ]}

    _one_patient_for_ten_visits(run_parallel(10, lambda i: http.request("POST", "", bundle(i))))


def test_transactions_taking_conditions_in_opposite_orders_never_fail(
    base_url: str, tokens: dict[str, str]
) -> None:
    """A conditional DELETE locks its criteria before the conditional PUTs do; taken entry by entry,
    one transaction's `DELETE ?a, PUT ?b` and another's `DELETE ?b, PUT ?a` could each hold the lock
    the other waits for (a deadlock, a 5xx). All of a transaction's condition locks are taken first,
    in one order."""
    http = Http(base_url, tokens["township"])

    def bundle(i: int) -> dict[str, Any]:
        first, second = ("甲", "乙") if i % 2 else ("乙", "甲")
        return {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "DELETE", "url": f"Patient?family={first}"}},
            {"resource": patient(None, family=second),
             "request": {"method": "PUT", "url": f"Patient?family={second}"}},
        ]}

    responses = run_parallel(20, lambda i: http.request("POST", "", bundle(i)))
    assert statuses(responses) == [200] * 20, [r.text for r in responses if r.status_code != 200]
    assert count("Patient") <= 2


def test_concurrent_patches_lose_no_update(base_url: str, tokens: dict[str, str]) -> None:
    """Each PATCH is applied to the version current when it runs (the row stays locked from the read
    to the write): 20 concurrent additions to one list leave 20 items."""
    http = Http(base_url, tokens["township"])
    body = patient(PID_1) | {"telecom": [{"system": "phone", "value": "0"}]}
    pid = http.request("POST", "Patient", body).json()["id"]

    def add(i: int) -> requests.Response:
        operation = {"op": "add", "path": "/telecom/-", "value": {"system": "phone", "value": str(i + 1)}}
        return http.request("PATCH", f"Patient/{pid}", [operation], **{"Content-Type": JSON_PATCH})

    responses = run_parallel(20, add)
    assert statuses(responses) == [200] * 20, [r.text for r in responses if r.status_code != 200]
    current = http.request("GET", f"Patient/{pid}").json()
    assert current["meta"]["versionId"] == "21"
    assert sorted(int(t["value"]) for t in current["telecom"]) == list(range(21))


def test_if_match_lets_exactly_one_writer_win(base_url: str, tokens: dict[str, str]) -> None:
    http = Http(base_url, tokens["township"])
    created = http.request("POST", "Patient", patient(PID_1)).json()
    pid = created["id"]

    def update(i: int) -> requests.Response:
        body = created | {"telecom": [{"system": "phone", "value": f"1380000{i:04d}"}]}
        return http.request("PUT", f"Patient/{pid}", body, **{"If-Match": 'W/"1"'})

    responses = run_parallel(10, update)
    assert statuses(responses) == [200] + [412] * 9
    assert all(r.json()["resourceType"] == "OperationOutcome" for r in responses if r.status_code == 412)
    current = http.request("GET", f"Patient/{pid}")
    assert current.json()["meta"]["versionId"] == "2"
    winner = next(r for r in responses if r.status_code == 200)
    assert current.json()["telecom"] == winner.json()["telecom"]
    # the next round on the new version again has exactly one winner
    again = run_parallel(5, lambda i: http.request("PUT", f"Patient/{pid}", created, **{"If-Match": 'W/"2"'}))
    assert statuses(again) == [200] + [412] * 4


def test_different_creates_all_succeed(base_url: str, tokens: dict[str, str]) -> None:
    http = Http(base_url, tokens["township"])

    def create(i: int) -> requests.Response:
        gender = "female" if i % 2 else "male"
        number = generate("620421", date(1980 + i, 1, 1 + i), gender, i)
        return http.request(
            "POST", "Patient", patient(number, gender=gender, birth=f"{1980 + i}-01-{1 + i:02d}")
        )

    responses = run_parallel(20, create)
    assert statuses(responses) == [201] * 20, [r.text for r in responses if r.status_code != 201]
    assert len({r.json()["id"] for r in responses}) == 20
    assert count("Patient") == 20


def test_same_resident_id_without_condition_is_one_201_and_409s(
    base_url: str, tokens: dict[str, str]
) -> None:
    http = Http(base_url, tokens["township"])
    responses = run_parallel(10, lambda i: http.request("POST", "Patient", patient(PID_1)))
    assert statuses(responses) == [201] + [409] * 9, [r.text for r in responses if r.status_code >= 500]
    assert count("Patient") == 1


def test_same_update_as_create_makes_one_resource(base_url: str, tokens: dict[str, str]) -> None:
    http = Http(base_url, tokens["township"])
    body = patient(None, family="林") | {"id": "p-shared"}
    responses = run_parallel(10, lambda i: http.request("PUT", "Patient/p-shared", body))
    assert statuses(responses) == [200] * 9 + [201], [r.text for r in responses if r.status_code >= 300]
    assert http.request("GET", "Patient/p-shared").json()["meta"]["versionId"] == "10"


def test_mixed_reads_and_writes_never_fail(base_url: str, tokens: dict[str, str]) -> None:
    clinic = Http(base_url, tokens["township"])
    platform = Http(base_url, tokens["platform"])
    pid = clinic.request("POST", "Patient", patient(PID_1, gp="th-01")).json()["id"]
    # a patient the clinic does not see yet: presenting at the clinic (a conditional create by identity
    # number) grants access, several times concurrently
    other_body = patient(PID_2, family="外", birth="1985-06-01", gender="male")
    other = platform.request("POST", "Patient", other_body).json()["id"]
    present = {"If-None-Exist": f"identifier={RESIDENT_ID}|{PID_2}"}

    def work(i: int) -> requests.Response:
        kind = i % 5
        if kind == 0:
            return clinic.request("POST", "Patient", other_body, **present)
        if kind == 1:
            return clinic.request("GET", f"Patient/{pid}")
        if kind == 2:
            return clinic.request("GET", "Patient?_count=5&_sort=-_lastUpdated")
        if kind == 3:
            current = clinic.request("GET", f"Patient/{pid}").json()
            return clinic.request("PUT", f"Patient/{pid}", current | {"active": True})
        return clinic.request("POST", "Encounter", encounter(pid, i))

    responses = run_parallel(20, work)
    assert all(r.status_code < 300 for r in responses), [(r.status_code, r.text) for r in responses]
    assert count("Encounter") == 4
    assert clinic.request("GET", f"Patient/{other}").status_code == 200  # presented now
    assert clinic.request("POST", "Encounter", encounter(other, 99)).status_code == 201
    history = clinic.request("GET", f"Patient/{pid}/_history").json()
    assert history["entry"][0]["resource"]["meta"]["versionId"] == "5"


def _one_patient_for_ten_visits(responses: list[Any]) -> None:
    """Ten transactions, each a conditional write of one patient and a visit of theirs, ran at once:
    all succeed, one created the patient and nine found it, and ten visits point at that one."""
    assert statuses(responses) == [200] * 10, [r.text for r in responses if r.status_code != 200]
    patient_statuses = sorted(r.json()["entry"][0]["response"]["status"] for r in responses)
    assert patient_statuses == ["200 OK"] * 9 + ["201 Created"]
    assert count("Patient") == 1
    assert count("Encounter") == 10
