"""Settlement export downloads: the insurer web role and the insurance bureau's client only; logged."""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from referral_service.domain.exports import ExportLog
from referral_service.exports.settlements import KEYS
from referral_service.extensions import database
from referral_service.services.accounts import create_user
from tests.functional.fhir_helpers import token_for
from tests.integration.test_exports import LedgerFactory, local

QUERY = "/exports/settlements?fund=basic-insurance&from=2026-03-01&to=2026-03-31"


@pytest.fixture
def settled(app: Flask, tmp_path: Path) -> dict[str, str]:
    """A March settlement and the export folder in a temporary place."""
    app.config["EXPORT_DIR"] = str(tmp_path)
    ledger = LedgerFactory()
    ledger.org("insurer-org", "青山县医疗保障局", level=None, kind="insurer")
    ledger.org("county-hosp", "青山县人民医院")
    ledger.patient("p1", "62042119900307002X", family="=王")
    sid = ledger.settlement("county-hosp", "p1", local("2026-03-02T10:00:00"), basic="1234.56")
    return {"settlement": sid}


def bearer(
    client: FlaskClient,
    make_api_client: Callable[..., tuple[str, str]],
    client_id: str,
    org: str,
    scopes: str = "system/ExplanationOfBenefit.rs system/Patient.rs",
) -> dict[str, str]:
    cid, secret = make_api_client(client_id, scopes, org)
    return {"Authorization": f"Bearer {token_for(client, cid, secret)}"}


def get(client: FlaskClient, url: str, headers: dict[str, str] | None = None) -> TestResponse:
    """GET, read the body, close the response (files are streamed from disk)."""
    response = client.get(url, headers=headers or {})
    response.get_data()
    response.close()
    return response


def rows_of(body: bytes) -> list[list[str]]:
    assert body.startswith(b"\xef\xbb\xbf")
    return list(csv.reader(io.StringIO(body[3:].decode("utf-8"), newline="")))


def test_insurance_client_downloads_a_masked_csv_and_its_manifest(
    client: FlaskClient, settled: dict[str, str], make_api_client: Callable[..., tuple[str, str]]
) -> None:
    headers = bearer(client, make_api_client, "insurance-office", "insurer-org")
    response = get(client, QUERY, headers=headers)
    assert response.status_code == 200, response.data
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"  # the charset once
    assert "attachment" in response.headers["Content-Disposition"]
    body = response.data
    assert hashlib.sha256(body).hexdigest() == response.headers["X-Content-SHA256"]
    rows = rows_of(body)
    row = dict(zip(KEYS, rows[1], strict=True))
    assert (row["resident_id"], row["patient_name"], row["amount"]) == (
        "620421********002X",
        "'=王芳",
        "1234.56",
    )
    manifest_url = response.headers["Link"].split(";")[0].strip("<>")
    manifest = get(client, manifest_url, headers=headers)
    assert manifest.status_code == 200
    assert manifest.json["files"][0]["sha256"] == response.headers["X-Content-SHA256"]
    assert manifest.json["totals"] == {"basic-insurance": "1234.56"}
    again = get(
        client,
        f"/exports/{response.headers['X-Export-Id']}/{manifest.json['files'][0]['name']}",
        headers=headers,
    )
    assert again.status_code == 200 and again.data == body
    listing = get(client, "/exports", headers=headers)
    assert listing.status_code == 200 and listing.json["exports"][0]["id"] == response.headers["X-Export-Id"]
    with database.unit_of_work() as session:
        kinds = session.scalars(select(ExportLog.kind).order_by(ExportLog.created_at)).all()
    assert kinds == ["settlements", "download", "download"]


def test_full_identity_numbers_and_xlsx_for_the_insurer(
    client: FlaskClient, settled: dict[str, str], make_api_client: Callable[..., tuple[str, str]]
) -> None:
    headers = bearer(client, make_api_client, "insurance-office", "insurer-org")
    full = get(client, QUERY + "&identity=full", headers=headers)
    assert full.status_code == 200
    assert rows_of(full.data)[1][KEYS.index("resident_id")] == "62042119900307002X"
    xlsx = get(client, QUERY + "&format=xlsx", headers=headers)
    assert xlsx.status_code == 200 and xlsx.data[:2] == b"PK"
    bad = get(
        client, "/exports/settlements?fund=basic-insurance&from=2026-03-31&to=2026-03-01", headers=headers
    )
    assert bad.status_code == 400
    missing = get(client, "/exports/settlements?fund=basic-insurance", headers=headers)
    assert missing.status_code == 400
    for period in ("from=0001-01-01&to=2026-03-31", "from=2026-03-01&to=9999-12-31",
                   "from=9999-12-31&to=9999-12-31", "from=1899-12-31&to=2026-03-31"):  # not an OverflowError
        out_of_range = get(client, f"/exports/settlements?fund=basic-insurance&{period}", headers=headers)
        assert out_of_range.status_code == 400, period
        assert "outside 1900-01-01 to 2199-12-31" in out_of_range.get_json()["message"]
    widest = get(client, "/exports/settlements?from=1900-01-01&to=2199-12-31", headers=headers)
    assert widest.status_code == 200
    unknown = get(client, QUERY + "&hospital=nope", headers=headers)
    assert unknown.status_code == 400 and "unknown hospital" in unknown.get_json()["message"]
    assert get(client, QUERY + "&hospital=county-hosp", headers=headers).status_code == 200


def test_others_may_not_download(
    client: FlaskClient, settled: dict[str, str], make_api_client: Callable[..., tuple[str, str]]
) -> None:
    anonymous = get(client, QUERY)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    hospital = bearer(client, make_api_client, "county-his", "county-hosp")
    assert get(client, QUERY, headers=hospital).status_code == 403
    narrow = bearer(client, make_api_client, "insurance-narrow", "insurer-org", scopes="system/Patient.rs")
    assert get(client, QUERY, headers=narrow).status_code == 403
    assert get(client, QUERY, headers={"Authorization": "Bearer forged"}).status_code == 401
    insurer = bearer(client, make_api_client, "insurance-office", "insurer-org")
    assert get(client, "/exports/nope/x.csv", headers=insurer).status_code == 404


def test_web_session_of_the_insurer_role(app: Flask, client: FlaskClient, settled: dict[str, str]) -> None:
    with database.unit_of_work() as session:
        create_user(
            session,
            username="insurer",
            password="demo-password",
            role="insurer",
            organization_id="insurer-org",
        )
        create_user(
            session,
            username="hospital",
            password="demo-password",
            role="hospital",
            organization_id="county-hosp",
        )
    login = client.post("/login", data={"username": "hospital", "password": "demo-password"})
    assert login.status_code in (302, 303), login.data
    assert get(client, QUERY).status_code == 403
    get(client, "/logout")
    client.post("/logout")
    other = app.test_client()
    login = other.post("/login", data={"username": "insurer", "password": "demo-password"})
    assert login.status_code in (302, 303), login.data
    response = get(other, QUERY)
    assert response.status_code == 200, response.data
    with database.unit_of_work() as session:
        log = session.scalars(select(ExportLog)).one()
        assert (log.actor_name, log.actor_kind, log.role) == ("insurer", "user", "insurer")
