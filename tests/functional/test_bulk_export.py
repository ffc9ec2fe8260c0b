"""FHIR Bulk Data $export: kick-off, polling, manifest, NDJSON files, cancel, expiry, stuck jobs, access."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from referral_service.api import exports as exports_api
from referral_service.domain.base import utcnow
from referral_service.domain.exports import BulkExportJob, ExportLog
from referral_service.extensions import database
from referral_service.fhir.store import ResourceStore
from referral_service.services import bulk_export
from tests.functional.fhir_helpers import token_for
from tests.integration.test_exports import LedgerFactory

SCOPES = (
    "system/Patient.rs system/Coverage.rs system/Claim.rs system/ClaimResponse.rs "
    "system/ExplanationOfBenefit.rs"
)
KICK_OFF = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
TYPES = [
    t
    for t in ("Patient", "Coverage", "Claim", "ClaimResponse", "ExplanationOfBenefit")
    if t in bulk_export.supported_types()
]


def save(session: Session, body: dict[str, Any], owner: str | None = "county-hosp") -> None:
    ResourceStore(session).save(body["resourceType"], body, method="PUT", owner_org_id=owner)


@pytest.fixture
def world(app: Flask, tmp_path: Path) -> dict[str, Any]:
    """Patients of the county and of the city, with coverage and one settled claim each."""
    app.config["EXPORT_DIR"] = str(tmp_path)
    ledger = LedgerFactory()
    ledger.org("insurer-org", "青山县医疗保障局", level=None, kind="insurer")
    ledger.org("county-hosp", "青山县人民医院")
    ledger.org("city-hosp", "云州市人民医院", level="city", district="云州市")
    ledger.patient("p1", "62042119900307002X")
    ledger.patient("p2", None, family="李", given="四")
    ledger.patient("p-city", "620421198505050077", district="云州市")
    with database.unit_of_work() as session:
        for pid in ("p1", "p2", "p-city"):
            save(session, {"resourceType": "Patient", "id": pid, "name": [{"family": "王", "given": ["芳"]}]})
        for cid, pid in (("cov-1", "p1"), ("cov-city", "p-city")):
            save(
                session,
                {
                    "resourceType": "Coverage",
                    "id": cid,
                    "status": "active",
                    "beneficiary": {"reference": f"Patient/{pid}"},
                    "payor": [{"reference": "Organization/insurer-org"}],
                },
            )
        for pid, suffix in (("p1", "1"), ("p-city", "city")):
            save(
                session,
                {
                    "resourceType": "Claim",
                    "id": f"claim-{suffix}",
                    "status": "active",
                    "patient": {"reference": f"Patient/{pid}"},
                },
            )
            save(
                session,
                {
                    "resourceType": "ClaimResponse",
                    "id": f"cr-{suffix}",
                    "status": "active",
                    "patient": {"reference": f"Patient/{pid}"},
                },
            )
            save(
                session,
                {
                    "resourceType": "ExplanationOfBenefit",
                    "id": f"eob-{suffix}",
                    "status": "active",
                    "patient": {"reference": f"Patient/{pid}"},
                },
            )
    return {"settings": bulk_export.BulkSettings.from_settings(app.config)}


@pytest.fixture
def token(client: FlaskClient, make_api_client: Callable[..., tuple[str, str]], world: dict[str, Any]) -> str:
    cid, secret = make_api_client("insurance-office", SCOPES, "insurer-org")
    return token_for(client, cid, secret)


@pytest.fixture
def no_worker(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Kick-offs leave their job accepted (as if the process died before the worker started)."""
    monkeypatch.setattr(exports_api, "start_bulk_worker", lambda *a: None)
    return monkeypatch.undo


def call(
    client: FlaskClient,
    method: str,
    url: str,
    token: str | None,
    headers: dict[str, str] | None = None,
    body: Any = None,
) -> TestResponse:
    """A request with the bearer token; the body is read and the response closed (files are streamed)."""
    all_headers = dict(headers or {})
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        all_headers.setdefault("Content-Type", "application/fhir+json")
    data = body if body is None or isinstance(body, bytes) else orjson.dumps(body)
    response = client.open(url, method=method, headers=all_headers, data=data)
    response.get_data()
    response.close()
    return response


def path_of(url: str) -> str:
    """The path of an absolute URL (the test client speaks paths)."""
    return "/" + url.split("://", 1)[-1].split("/", 1)[1]


def kick_off(client: FlaskClient, token: str, query: str = "", level: str = "") -> str:
    response = call(client, "GET", f"/fhir/{level}$export{query}", token, KICK_OFF)
    assert response.status_code == 202, response.json
    assert response.json["resourceType"] == "OperationOutcome"
    return path_of(response.headers["Content-Location"])


def wait(client: FlaskClient, token: str, status_url: str, limit: float = 30) -> TestResponse:
    deadline = time.monotonic() + limit
    while True:
        response = call(client, "GET", status_url, token)
        if response.status_code != 202:
            return response
        assert response.headers["X-Progress"]
        assert time.monotonic() < deadline, "the export did not finish"
        time.sleep(0.05)


def ndjson(client: FlaskClient, token: str, url: str) -> list[dict[str, Any]]:
    response = call(client, "GET", path_of(url), token)
    assert response.status_code == 200, response.data
    assert response.mimetype == "application/fhir+ndjson"
    lines = response.data.split(b"\n")
    assert lines[-1] == b""  # every line ends with a newline
    return [orjson.loads(line) for line in lines[:-1]]


def job_id_of(status_url: str) -> str:
    return status_url.rsplit("/", 1)[1]


def test_full_cycle_with_every_line_parsed(client: FlaskClient, token: str) -> None:
    status_url = kick_off(client, token)
    done = wait(client, token, status_url)
    assert done.status_code == 200, done.json
    assert done.headers["Expires"]
    manifest = done.json
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"].endswith("/fhir/$export")
    assert manifest["transactionTime"].endswith("Z")
    assert manifest["error"] == []
    expected = {
        "Patient": {"p1", "p2"},
        "Coverage": {"cov-1"},
        "Claim": {"claim-1"},
        "ClaimResponse": {"cr-1"},
        "ExplanationOfBenefit": {"eob-1"},
    }
    assert [o["type"] for o in manifest["output"]] == TYPES
    for output in manifest["output"]:
        resources = ndjson(client, token, output["url"])
        assert output["count"] == len(resources)
        assert {r["resourceType"] for r in resources} == {output["type"]}
        # the access policy holds: nothing of the city's patients
        assert {r["id"] for r in resources} == expected[output["type"]]
        raw = call(client, "GET", path_of(output["url"]), token).data
        name = output["url"].rsplit("/", 1)[1]
        assert hashlib.sha256(raw).hexdigest() == manifest["extension"]["sha256"][name]
    with database.unit_of_work() as session:
        log = session.scalars(select(ExportLog).where(ExportLog.kind == "bulk")).one()
        assert log.actor_name == "insurance-office" and log.row_count == sum(
            len(v) for v in expected.values()
        )


def test_type_since_and_patient_level(client: FlaskClient, token: str) -> None:
    done = wait(
        client,
        token,
        kick_off(client, token, "?_type=Patient,Coverage&_outputFormat=application/fhir%2Bndjson"),
    )
    assert [o["type"] for o in done.json["output"]] == ["Patient", "Coverage"]
    later = (utcnow() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    done = wait(client, token, kick_off(client, token, f"?_since={later}"))
    assert done.status_code == 200 and done.json["output"] == []
    done = wait(client, token, kick_off(client, token, "?_type=Patient", level="Patient/"))
    assert done.json["output"][0]["count"] == 2
    assert "/fhir/Patient/$export" in done.json["request"]


def parameters(*pairs: tuple[str, str], kind: str = "valueString") -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [{"name": n, kind: v} for n, v in pairs]}


def test_kick_off_by_post_with_parameters(client: FlaskClient, token: str) -> None:
    """Bulk Data's POST kick-off: the parameters come as a Parameters resource."""
    body = parameters(("_type", "Patient"), ("_type", "Coverage"), ("_outputFormat", "ndjson"))
    response = call(client, "POST", "/fhir/$export", token, KICK_OFF, body)
    assert response.status_code == 202, response.json
    done = wait(client, token, path_of(response.headers["Content-Location"]))
    assert [o["type"] for o in done.json["output"]] == ["Patient", "Coverage"]
    later = (utcnow() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    since = call(client, "POST", "/fhir/Patient/$export", token, KICK_OFF,
                 parameters(("_since", later), kind="valueInstant"))
    assert since.status_code == 202, since.json
    assert wait(client, token, path_of(since.headers["Content-Location"])).json["output"] == []
    refused = {
        "a Patient body": {"resourceType": "Patient"},
        "an unknown parameter": parameters(("_typeFilter", "Patient?active=true")),
        "a parameter without a value": {"resourceType": "Parameters", "parameter": [{"name": "_type"}]},
        "an unsupported type": parameters(("_type", "Observation")),
        "two _since": parameters(("_since", later), ("_since", later)),
        "not JSON": b"{",
    }
    for what, sent in refused.items():
        answer = call(client, "POST", "/fhir/$export", token, KICK_OFF, sent)
        assert answer.status_code == 400, what
        assert answer.json["resourceType"] == "OperationOutcome", what
    plain = KICK_OFF | {"Content-Type": "text/plain"}
    form = call(client, "POST", "/fhir/$export", token, plain, b"_type=Patient")
    assert form.status_code == 415 and form.json["resourceType"] == "OperationOutcome"


def test_kick_off_errors(
    client: FlaskClient, token: str, make_api_client: Callable[..., tuple[str, str]]
) -> None:
    assert call(client, "GET", "/fhir/$export", token).status_code == 400  # no Prefer: respond-async
    for query in (
        "?_type=Observation",
        "?_outputFormat=text/csv",
        "?_typeFilter=Patient%3Factive%3Dtrue",
        "?_since=yesterday",
    ):
        response = call(client, "GET", f"/fhir/$export{query}", token, KICK_OFF)
        assert response.status_code == 400, query
        assert response.json["resourceType"] == "OperationOutcome"
    anonymous = call(client, "GET", "/fhir/$export", None, KICK_OFF)
    assert anonymous.status_code == 401 and anonymous.json["resourceType"] == "OperationOutcome"
    cid, secret = make_api_client("narrow", "system/Patient.rs system/Organization.rs", "insurer-org")
    narrow = token_for(client, cid, secret)
    assert call(client, "GET", "/fhir/$export?_type=Claim", narrow, KICK_OFF).status_code == 403
    cid, secret = make_api_client("directory", "system/Organization.rs", "insurer-org")
    assert call(client, "GET", "/fhir/$export", token_for(client, cid, secret), KICK_OFF).status_code == 403


def test_only_the_requesting_client_sees_the_job_and_its_files(
    client: FlaskClient, token: str, make_api_client: Callable[..., tuple[str, str]]
) -> None:
    status_url = kick_off(client, token, "?_type=Patient")
    done = wait(client, token, status_url)
    file_path = path_of(done.json["output"][0]["url"])
    cid, secret = make_api_client("county-his", SCOPES, "county-hosp")
    other = token_for(client, cid, secret)
    assert call(client, "GET", status_url, other).status_code == 404
    assert call(client, "GET", file_path, other).status_code == 404
    assert call(client, "DELETE", status_url, other).status_code == 404
    assert call(client, "GET", file_path, None).status_code == 401
    assert call(client, "GET", status_url, None).status_code == 401
    assert call(client, "GET", file_path.replace("Patient.ndjson", "Claim.ndjson"), token).status_code == 404
    assert call(client, "GET", file_path, token).status_code == 200


def test_cancel_before_and_while_running(
    client: FlaskClient, token: str, world: dict[str, Any], no_worker: Callable[[], None]
) -> None:
    settings = world["settings"]
    status_url = kick_off(client, token)
    queued = call(client, "GET", status_url, token)
    assert queued.status_code == 202 and queued.headers["X-Progress"] == "queued"
    cancelled = call(client, "DELETE", status_url, token)
    assert cancelled.status_code == 202
    assert cancelled.data == b"" and "Content-Type" not in cancelled.headers
    assert call(client, "GET", status_url, token).status_code == 404
    assert bulk_export.run_job(database.unit_of_work, job_id_of(status_url), settings) == "not-claimed"

    # cancelled between two pages: the worker's next heartbeat fails and it removes its files
    job_id = job_id_of(kick_off(client, token, "?_type=Patient"))
    opened = 0

    def opener() -> AbstractContextManager[Session]:
        nonlocal opened
        opened += 1
        if opened == 5:  # claim, read job, heartbeat, first page, then this heartbeat
            with database.unit_of_work() as session:
                bulk_export.cancel(session, "insurance-office", job_id, settings)
        return database.unit_of_work()

    small = bulk_export.BulkSettings(settings.directory, page_size=1)
    assert bulk_export.run_job(opener, job_id, small) == "stopped"
    assert not (settings.directory / job_id).exists()
    assert call(client, "GET", f"/fhir/$export-status/{job_id}", token).status_code == 404


def test_files_expire(
    client: FlaskClient, token: str, world: dict[str, Any], no_worker: Callable[[], None]
) -> None:
    settings = world["settings"]
    status_url = kick_off(client, token, "?_type=Patient")
    job_id = job_id_of(status_url)
    assert bulk_export.run_job(database.unit_of_work, job_id, settings) == "completed"
    done = call(client, "GET", status_url, token)
    assert done.status_code == 200
    file_path = path_of(done.json["output"][0]["url"])
    assert (settings.directory / job_id / "Patient.ndjson").is_file()
    with database.unit_of_work() as session:
        job = session.get(BulkExportJob, job_id)
        assert job is not None and job.expires_at is not None
        assert job.expires_at - job.finished_at == timedelta(hours=24)  # BULK_EXPORT_TTL_HOURS default
        session.execute(
            update(BulkExportJob)
            .where(BulkExportJob.id == job_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert call(client, "GET", file_path, token).status_code == 410
    assert call(client, "GET", status_url, token).status_code == 410
    assert not (settings.directory / job_id).exists()
    with database.unit_of_work() as session:
        assert session.get(BulkExportJob, job_id).status == "expired"  # type: ignore[union-attr]


def test_stuck_job_is_failed_with_a_message(
    client: FlaskClient, token: str, world: dict[str, Any], no_worker: Callable[[], None]
) -> None:
    status_url = kick_off(client, token)
    job_id = job_id_of(status_url)
    assert bulk_export.claim(database.unit_of_work, job_id, "a-process-that-died")
    running = call(client, "GET", status_url, token)
    assert running.status_code == 202 and running.headers["X-Progress"] == "started"
    with database.unit_of_work() as session:
        session.execute(
            update(BulkExportJob)
            .where(BulkExportJob.id == job_id)
            .values(heartbeat_at=utcnow() - timedelta(minutes=11))
        )
    failed = call(client, "GET", status_url, token)
    assert failed.status_code == 500
    assert failed.json["resourceType"] == "OperationOutcome"
    assert "no progress" in failed.json["issue"][0]["diagnostics"]
    with database.unit_of_work() as session:
        job = session.get(BulkExportJob, job_id)
        assert job is not None and job.status == "failed"
    # the dead worker, were it to wake up, may not finish the job
    assert (
        bulk_export.export_claimed(database.unit_of_work, job_id, "a-process-that-died", world["settings"])
        == "not-claimed"
    )


def test_a_job_left_unclaimed_by_a_restart_resumes(
    client: FlaskClient, token: str, no_worker: Callable[[], None]
) -> None:
    status_url = kick_off(client, token, "?_type=Patient")
    assert call(client, "GET", status_url, token).status_code == 202  # young: still waiting for its worker
    with database.unit_of_work() as session:
        session.execute(
            update(BulkExportJob)
            .where(BulkExportJob.id == job_id_of(status_url))
            .values(created_at=utcnow() - timedelta(minutes=5))
        )
    no_worker()  # the restarted process has its worker starter again
    done = wait(client, token, status_url)
    assert done.status_code == 200 and done.json["output"][0]["count"] == 2


def test_sweep_fails_stuck_jobs_and_removes_expired_files(
    app: Flask, client: FlaskClient, token: str, world: dict[str, Any], no_worker: Callable[[], None]
) -> None:
    settings = world["settings"]
    stuck = job_id_of(kick_off(client, token))
    bulk_export.claim(database.unit_of_work, stuck, "gone")
    old = job_id_of(kick_off(client, token, "?_type=Patient"))
    bulk_export.run_job(database.unit_of_work, old, settings)
    with database.unit_of_work() as session:
        session.execute(
            update(BulkExportJob)
            .where(BulkExportJob.id == stuck)
            .values(heartbeat_at=utcnow() - timedelta(hours=1))
        )
        session.execute(
            update(BulkExportJob)
            .where(BulkExportJob.id == old)
            .values(expires_at=utcnow() - timedelta(hours=1))
        )
    result = app.test_cli_runner().invoke(args=["export", "bulk-sweep"])
    assert result.exit_code == 0, result.output
    assert "1 stuck job(s) failed, 1 expired job(s) removed" in result.output
    assert not (settings.directory / old).exists()


def test_capability_statement_lists_export(client: FlaskClient, world: dict[str, Any]) -> None:
    statement = client.get("/fhir/metadata").json
    names = {op["name"] for op in statement["rest"][0]["operation"]}
    assert "export" in names
    patient = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    exports = [op for op in patient["operation"] if op["name"] == "export"]
    assert [op["definition"] for op in exports] == [
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"
    ]
    for resource in statement["rest"][0]["resource"]:  # an operation is listed once per type
        names = [op["name"] for op in resource.get("operation", [])]
        assert len(names) == len(set(names)), resource["type"]


@pytest.fixture(autouse=True)
def _no_threads_left(app: Flask) -> Iterator[None]:
    """Worker threads finish before the app fixture empties the tables."""
    yield
    deadline = time.monotonic() + 10
    while any(t.name.startswith("bulk-export-") for t in threading.enumerate()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
