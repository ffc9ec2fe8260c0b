"""App factory, /health (including a database outage and recovery), /metrics, FHIR error shape."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.engine import make_url

from referral_service import create_app
from referral_service.config import ConfigError
from tests.support.tcp_proxy import TcpProxy


def test_factory_builds_independent_apps(app: Flask) -> None:
    assert app.config["ENV"] == "testing"
    assert "fhir" in app.blueprints and "oauth" in app.blueprints
    assert app.extensions["metrics"].registry is not None


def test_factory_refuses_production_without_secret() -> None:
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        create_app({"ENV": "production", "SECRET_KEY": "", "DATABASE_URL": "sqlite://"})


def test_health_reports_the_database(client: FlaskClient, backend: str) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "database": "ok", "backend": backend}
    assert response.headers["X-Request-ID"]


def test_request_id_is_echoed(client: FlaskClient) -> None:
    response = client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"


def test_metrics_count_requests_by_endpoint_and_status(client: FlaskClient) -> None:
    client.get("/health")
    client.get("/fhir/Nope")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'http_requests_total{endpoint="/health",method="GET",status="200"}' in text
    assert 'status="404"' in text
    assert "http_request_duration_seconds_bucket" in text
    assert "db_pool_connections" in text


def test_unknown_fhir_route_is_an_operation_outcome(client: FlaskClient) -> None:
    response = client.get("/fhir/this/does/not/exist")
    assert response.status_code == 404
    assert response.mimetype == "application/fhir+json"
    body = response.json
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "not-found"
    assert body["id"] == response.headers["X-Request-ID"]


def test_metadata_needs_no_token(client: FlaskClient) -> None:
    response = client.get("/fhir/metadata")
    assert response.status_code == 200
    assert response.json["resourceType"] == "CapabilityStatement"
    assert response.json["fhirVersion"] == "4.0.1"


def test_health_on_sqlite_outage_and_recovery(tmp_path: Path) -> None:
    folder = tmp_path / "gone"
    app = create_app({"ENV": "testing", "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}"})
    client = app.test_client()
    down = client.get("/health")
    assert down.status_code == 503
    assert down.json["database"] == "unreachable"
    folder.mkdir()
    assert client.get("/health").status_code == 200


def test_health_on_postgres_outage_and_recovery(database_urls: dict[str, str]) -> None:
    if "postgresql" not in database_urls:
        pytest.skip("PostgreSQL does not answer")
    url = make_url(database_urls["postgresql"])
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxy.start()
    app = create_app({"ENV": "testing", "DATABASE_URL": url.set(port=proxy.port).render_as_string(False)})
    client = app.test_client()
    try:
        assert client.get("/health").status_code == 200
        proxy.stop()
        down = client.get("/health")
        assert down.status_code == 503
        assert "database" in down.json["message"]
        proxy.start()
        assert client.get("/health").status_code == 200  # recovered without a restart
    finally:
        proxy.stop()


def test_capability_statement_lists_what_is_registered(client: FlaskClient) -> None:
    from referral_service.fhir.resources import RESOURCES

    cs = client.get("/fhir/metadata").json
    rest = cs["rest"][0]
    types = {r["type"]: r for r in rest["resource"]}
    assert set(RESOURCES) <= set(types)
    patient = types["Patient"]
    assert {"read", "vread", "create", "update", "patch", "delete", "search-type"} <= {
        i["code"] for i in patient["interaction"]
    }
    # Conditional update (PUT Type?criteria) and delete (single mode, as HAPI's default); JSON Patch.
    assert (patient["conditionalCreate"], patient["conditionalUpdate"]) == (True, True)
    assert patient["conditionalDelete"] == "single"
    assert cs["patchFormat"] == ["application/json-patch+json"]
    claim = types["Claim"]  # reversed, never deleted
    assert "delete" not in {i["code"] for i in claim["interaction"]}
    assert (claim["conditionalUpdate"], claim["conditionalDelete"]) == (True, "not-supported")
    response = types["ClaimResponse"]  # written by the settlement only
    assert not {"update", "patch", "delete"} & {i["code"] for i in response["interaction"]}
    assert (response["conditionalUpdate"], response["conditionalDelete"]) == (False, "not-supported")
    assert {"identifier", "name", "birthdate"} <= {p["name"] for p in patient["searchParam"]}
    assert "Encounter:subject" in patient["searchRevInclude"]
    # Served from the audit log: read and search only (vread and history answered 404).
    assert {i["code"] for i in types["AuditEvent"]["interaction"]} == {"read", "search-type"}
    token_url = rest["security"]["extension"][0]["extension"][0]["valueUri"]
    assert token_url.endswith("/oauth/token")
    assert {"transaction", "batch"} == {i["code"] for i in rest["interaction"]}


def test_a_write_that_waits_too_long_for_sqlite_answers_503(tmp_path: Path) -> None:
    """Another program holding SQLite's write lock past the busy timeout: a transient 503, not a 500."""
    import sqlite3

    from referral_service.domain.registry import AuditRecord
    from referral_service.extensions import database
    from referral_service.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'busy.sqlite3'}"
    app = create_app({"ENV": "testing", "DATABASE_URL": url})

    @app.get("/busy-write")
    def busy_write() -> str:
        with database.unit_of_work() as session:
            session.add(AuditRecord(action="C", interaction="test", agent_kind="system"))
        return "written"

    upgrade(database.engine)
    database.configure(url, busy_timeout=0.2)
    holder = sqlite3.connect(tmp_path / "busy.sqlite3", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # e.g. the sqlite3 shell, outside the app's own lock
        busy = app.test_client().get("/busy-write")
        assert busy.status_code == 503
        assert "busy" in busy.get_data(as_text=True)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert app.test_client().get("/busy-write").data == b"written"
    database.dispose()
