"""The request hot paths keep their guarantees: audit rows, organisation facts, pooled connections, totals."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date
from typing import Any
from urllib.parse import parse_qsl

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import bindparam, event, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from referral_service.domain import db as db_module
from referral_service.domain import kept, resident_id
from referral_service.domain.actor import SYSTEM, Actor
from referral_service.domain.audit import pending_audit_rows
from referral_service.domain.errors import Unauthorized
from referral_service.domain.fhir_store import PatientAccess, StoredResource, StringIndex, TokenIndex
from referral_service.domain.ledger import Settlement
from referral_service.domain.registry import AuditRecord, Organization, Patient
from referral_service.extensions import database
from referral_service.fhir import jsonio, store
from referral_service.fhir.mappers.patient import POVERTY_URL
from referral_service.fhir.search import parse_search
from referral_service.fhir.store import _Binder, _clause_sql, _clause_values
from referral_service.services import actors
from referral_service.services import resources as service
from referral_service.services.resources import audit
from tests.functional.fhir_helpers import Fhir, organization, patient, token_for
from tests.support.statements import statements_sent

CLINIC = Actor(name="his", kind="client", organization_id="org-1")
PLATFORM_CLIENT = "platform-test"


@pytest.fixture
def platform(client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]) -> Fhir:
    """A FHIR client of an organisation with every scope."""
    cid, secret = make_api_client(PLATFORM_CLIENT, org_id="org-1")
    return Fhir(client, token_for(client, cid, secret))


def _audit_count() -> int:
    with database.unit_of_work() as session:
        return int(session.scalar(select(func.count()).select_from(AuditRecord)) or 0)


def test_audit_rows_are_written_when_the_transaction_commits(app: Flask) -> None:
    with database.unit_of_work() as session:
        audit(session, CLINIC, action="R", interaction="read", entity_type="Patient", entity_id="p1")
        audit(session, CLINIC, action="R", interaction="read", entity_type="Patient", entity_id="p2")
        assert len(pending_audit_rows(session)) == 2
    with database.unit_of_work() as session:
        rows = session.scalars(select(AuditRecord).order_by(AuditRecord.id)).all()
        assert [(r.entity_id, r.agent_name, r.organization_id) for r in rows] == [
            ("p1", "his", "org-1"), ("p2", "his", "org-1")]
        assert all(r.recorded is not None and r.recorded.tzinfo is not None for r in rows)


def test_audit_rows_of_rolled_back_work_are_not_written(app: Flask) -> None:
    def failing_use_case() -> None:
        with database.unit_of_work() as session:
            audit(session, CLINIC, action="C", interaction="create", entity_type="Patient", entity_id="p1")
            raise RuntimeError("the use case failed")

    with pytest.raises(RuntimeError):
        failing_use_case()
    assert _audit_count() == 0


def test_audit_rows_recorded_inside_a_rolled_back_savepoint_are_dropped(app: Flask) -> None:
    with database.unit_of_work() as session:
        audit(session, CLINIC, action="R", interaction="read", entity_id="kept")
        savepoint = session.begin_nested()
        audit(session, CLINIC, action="C", interaction="create", entity_id="previewed")
        savepoint.rollback()
        kept = session.begin_nested()
        audit(session, CLINIC, action="U", interaction="update", entity_id="released")
        kept.commit()
    with database.unit_of_work() as session:
        assert sorted(session.scalars(select(AuditRecord.entity_id))) == ["kept", "released"]


def test_organisation_facts_are_cached_and_forgotten_when_the_row_changes(
    app: Flask, make_org: Callable[..., str]
) -> None:
    make_org("org-9", facility_level="township", district="青山县")
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        statements.append(statement)

    event.listen(database.engine, "before_cursor_execute", count)
    try:
        with database.unit_of_work() as session:
            first = actors.actor_for(session, name="his", kind="client", organization_id="org-9")
            again = actors.actor_for(session, name="his", kind="client", organization_id="org-9")
        assert first == again and first.facility_level == "township"
        assert sum("organization" in s for s in statements) == 1  # the second came from the cache
        with database.unit_of_work() as session:
            row = session.get(Organization, "org-9")
            assert row is not None
            row.facility_level, row.district = "county", "白水县"
        with database.unit_of_work() as session:
            changed = actors.actor_for(session, name="his", kind="client", organization_id="org-9")
        facts = (changed.facility_level, changed.district, changed.leads_district)
        assert facts == ("county", "白水县", True)
    finally:
        event.remove(database.engine, "before_cursor_execute", count)


def test_facts_of_a_vanished_organisation_are_refused(app: Flask, make_org: Callable[..., str]) -> None:
    make_org("org-gone")
    with database.unit_of_work() as session:
        actors.actor_for(session, name="his", kind="client", organization_id="org-gone")
        session.delete(session.get(Organization, "org-gone"))
    with database.unit_of_work() as session, pytest.raises(Unauthorized):
        actors.actor_for(session, name="his", kind="client", organization_id="org-gone")


def test_an_idle_pooled_connection_that_died_is_replaced_before_use(
    backend: str, app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite has no server connection to lose")
    assert len(database.engines) == 2  # the main pool and the pool of reads
    for engine in database.engines:
        with engine.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        # The pool now holds that connection; the server drops it while it is idle.
        url = engine.url
        with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database,
                             autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        monkeypatch.setattr(db_module, "PING_AFTER_IDLE_SECONDS", 0.0)
        time.sleep(0.05)
        with engine.connect() as conn:  # no error: the dead one was pinged and discarded
            assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() != pid
        monkeypatch.setattr(db_module, "PING_AFTER_IDLE_SECONDS", 1.0)


def test_search_total_comes_from_the_page_when_it_holds_every_match(platform: Fhir) -> None:
    fhir = platform
    for given in ("一", "二", "三"):
        assert fhir.post("Patient", patient(None, family="宋", given=given)).status_code == 201
    with statements_sent() as seen:
        whole = fhir.get("Patient?family=宋")
    assert whole.json["total"] == 3 and len(whole.json["entry"]) == 3
    assert not [s for s in seen if "count(" in s.lower()]
    with statements_sent() as seen:
        first = fhir.get("Patient?family=宋&_count=2")
    assert first.json["total"] == 3 and len(first.json["entry"]) == 2
    assert [s for s in seen if "count(" in s.lower()]
    nxt = next(link["url"] for link in first.json["link"] if link["relation"] == "next")
    second = fhir.get(nxt.split("/fhir/", 1)[1])
    assert second.json["total"] == 3 and len(second.json["entry"]) == 1


def test_read_only_work_autocommits_and_still_writes_its_audit_rows(
    backend: str, app: Flask
) -> None:
    def driver_autocommits(session: Any) -> bool:
        driver = session.connection().connection.driver_connection
        return bool(driver.autocommit) if backend == "postgresql" else driver.in_transaction is False

    with database.unit_of_work(read_only=True) as session:
        autocommits = driver_autocommits(session)
        audit(session, CLINIC, action="R", interaction="read", entity_type="Patient", entity_id="p1")
    # PostgreSQL: no BEGIN/COMMIT round trips; SQLite: no write lock held for a read.
    assert autocommits
    assert _audit_count() == 1
    with database.unit_of_work() as session:  # writers are unaffected
        assert not driver_autocommits(session)


def test_only_reads_commit_asynchronously_on_postgresql(backend: str, app: Flask) -> None:
    """A read's only write is its audit row: it need not wait for the WAL flush; clinical writes do."""
    if backend != "postgresql":
        pytest.skip("synchronous_commit is a PostgreSQL setting")

    def setting(session: Any) -> str:
        return str(session.connection().exec_driver_sql("SHOW synchronous_commit").scalar_one())

    with database.unit_of_work(read_only=True) as session:
        assert setting(session) == "off"
        audit(session, CLINIC, action="R", interaction="read", entity_type="Patient", entity_id="p1")
    assert _audit_count() == 1  # committed all the same
    with database.unit_of_work() as session:
        assert setting(session) == "on"
    with database.engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW synchronous_commit").scalar_one() == "on"


@pytest.mark.parametrize(
    "query_text",
    [
        "Patient?identifier=http://x|1&identifier=|2,3&identifier=http://y|&gender:not=male",
        "Patient?name=Wang,li&family:exact=王&name:contains=10%_/x",
        "Patient?birthdate=ge1990-01-01&birthdate=lt2000,eq1995-03&_lastUpdated=gt2026-01-01",
        "Patient?organization=Organization/qs-th-01,qs-th-02&_id=a,b,c",
        "Patient?identifier:missing=true&family:missing=false",
        "Encounter?subject=Patient/p1&date=ap2026-11-30&class=AMB&status=finished,in-progress",
    ],
)
def test_search_values_are_bound_in_the_order_the_statement_names_them(query_text: str) -> None:
    resource_type, _, args = query_text.partition("?")
    query = parse_search(resource_type, parse_qsl(args), 50, 1000)
    for clause in query.clauses:
        bind = _Binder()
        _clause_sql(resource_type, clause, bind)
        assert bind.values == _clause_values(clause), clause


def test_a_search_statement_is_reused_with_new_values(platform: Fhir) -> None:
    fhir = platform
    for family in ("宋", "唐", "元"):
        assert fhir.post("Patient", patient(None, family=family, given="一")).status_code == 201
    store._SEARCH_STATEMENTS.clear()
    found = {f: fhir.get(f"Patient?family={f}&_count=5").json for f in ("宋", "唐", "元", "明")}
    assert {f: b["total"] for f, b in found.items()} == {"宋": 1, "唐": 1, "元": 1, "明": 0}
    assert [e["resource"]["name"][0]["family"] for e in found["唐"]["entry"]] == ["唐"]
    assert len([k for k in store._SEARCH_STATEMENTS if k[0] == "page"]) == 1  # one shape, one statement


def test_an_update_replaces_every_index_row_and_keeps_the_history(platform: Fhir) -> None:
    """On PostgreSQL one statement writes the version and its indexes; the outcome is the generic one's."""
    fhir = platform
    number = resident_id.generate("620421", date(1990, 3, 7), "female", 2)
    created = fhir.post("Patient", patient(number, family="宋", given="一"))
    assert created.status_code == 201, created.json
    pid = created.json["id"]
    changed = patient(number, family="唐", given="二", birth="1990-03-07")
    changed["id"] = pid
    assert fhir.put(f"Patient/{pid}", changed).status_code == 200
    assert fhir.get("Patient?family=宋").json["total"] == 0
    assert [e["resource"]["id"] for e in fhir.get("Patient?family=唐").json["entry"]] == [pid]
    assert fhir.get(f"Patient?identifier={number}").json["total"] == 1  # not twice
    assert fhir.get("Patient?birthdate=1990-03-07").json["total"] == 1
    history = fhir.get(f"Patient/{pid}/_history").json
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    with database.unit_of_work() as session:
        pk = session.scalar(select(StoredResource.pk).where(StoredResource.res_id == pid))
        tokens = session.scalars(select(TokenIndex.code).where(TokenIndex.resource_pk == pk)).all()
        strings = session.scalars(select(StringIndex.exact).where(StringIndex.param == "family",
                                                                  StringIndex.resource_pk == pk)).all()
    assert tokens.count(number) == 1
    assert strings == ["唐"]


def test_patient_registry_row_follows_every_write_of_the_resource(backend: str, platform: Fhir) -> None:
    """The registry row and its poverty registrations follow each write of the Patient. On
    PostgreSQL they are written by the resource's own write statement, after the identity check."""
    fhir = platform
    number = resident_id.generate("620421", date(1985, 5, 1), "male", 7)
    body = patient(number, family="宋", given="一", gender="male", birth="1985-05-01")
    body["extension"] = [{"url": POVERTY_URL, "valuePeriod": {"start": "2020-01-01", "end": "2022-12-31"}}]
    with statements_sent() as sent:
        pid = fhir.post("Patient", body).json["id"]
    # A new registry row has no registrations to replace: none are deleted.
    assert not [s for s in sent if "DELETE FROM poverty_registration" in s], sent
    if backend == "postgresql":
        writes = [s for s in sent if not s.lstrip().upper().startswith("SELECT")]
        assert len(writes) == 1, writes
        for part in ("INSERT INTO fhir_resource", "INSERT INTO patient ", "INSERT INTO poverty_registration"):
            assert part in writes[0], part
    body.update(id=pid, extension=[{"url": POVERTY_URL, "valuePeriod": {"start": "2024-01-01"}}],
                name=[{"family": "唐", "given": ["二"]}])
    with database.unit_of_work() as session:
        loaded = session.get(Patient, pid)  # in the identity map when the write changes the row
        assert loaded is not None and loaded.family_name == "宋"
        actor = actors.actor_for(session, name=PLATFORM_CLIENT, kind="client", organization_id="org-1")
        service.update(session, actor, "Patient", pid, body)
        assert (loaded.family_name, loaded.given_name) == ("唐", "二")
        assert [(r.start, r.end) for r in loaded.poverty_registrations] == [(date(2024, 1, 1), None)]
        assert loaded.created_by_org_id == "org-1" and loaded.resident_id == number
    # A write refused for a reference to nothing leaves no registry row either.
    other = resident_id.generate("620421", date(1986, 6, 1), "female", 8)
    broken = patient(other, family="宋", given="三", gender="female", birth="1986-06-01")
    broken["generalPractitioner"] = [{"reference": "Organization/nowhere"}]
    broken["extension"] = [{"url": POVERTY_URL, "valuePeriod": {"start": "2020-01-01"}}]
    assert fhir.post("Patient", broken).status_code == 422
    with database.unit_of_work() as session:
        assert session.scalars(select(Patient).where(Patient.resident_id == other)).first() is None


def test_sqlite_reads_do_not_wait_for_a_writer(backend: str, app: Flask) -> None:
    if backend != "sqlite":
        pytest.skip("SQLite's single write lock")
    with database.unit_of_work() as writer:
        writer.connection()  # BEGIN IMMEDIATE: this transaction holds the write lock
        started = time.monotonic()
        with database.unit_of_work(read_only=True) as reader:
            assert reader.connection().exec_driver_sql("SELECT count(*) FROM fhir_resource").scalar() == 0
        assert time.monotonic() - started < 2  # a locked read would wait for busy_timeout (30 s)


def test_reference_checks_look_rows_up_by_key_on_both_engines(backend: str, app: Flask) -> None:
    """A reference check runs for every write: its statements must never scan the resource table."""
    from referral_service.services.resources import _existing

    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        sent.append((statement, parameters))

    with database.unit_of_work() as session:
        event.listen(database.engine, "before_cursor_execute", capture)
        try:
            assert _existing(session, {("Patient", "p1"), ("Organization", "o1")}) == set()
        finally:
            event.remove(database.engine, "before_cursor_execute", capture)
        connection = session.connection()
        if backend == "postgresql":
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")  # empty table: can an index serve?
        explain = "EXPLAIN QUERY PLAN " if backend == "sqlite" else "EXPLAIN "
        for statement, parameters in sent:
            rows = connection.exec_driver_sql(explain + statement, parameters)
            plan = " ".join(str(row[-1]) for row in rows)
            assert "SCAN fhir_resource" not in plan and "Seq Scan" not in plan, plan
    assert sent


def _audit_rows() -> list[tuple[str, str | None, str | None, str | None]]:
    with database.unit_of_work() as session:
        rows = session.execute(
            select(AuditRecord.interaction, AuditRecord.entity_id, AuditRecord.patient_id, AuditRecord.query)
            .where(AuditRecord.interaction.in_(("read", "search")))
            .order_by(AuditRecord.id)
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def test_a_read_records_its_audit_row_with_the_read_itself(
    backend: str, platform: Fhir, client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]
) -> None:
    """PostgreSQL: the read statement writes the row (one statement); SQLite: it is queued. The row
    names the patient read and exists only for a successful read (404 and 410 record nothing)."""
    fhir = platform
    county = Fhir(client, token_for(client, *make_api_client("county-platform", "system/*.cruds",
                                                             "qs-health-commission")))
    pid = fhir.post("Patient", patient(None, family="宋", given="一")).json["id"]
    gone = fhir.post("Patient", patient(None, family="唐", given="二")).json["id"]
    assert fhir.delete(f"Patient/{gone}").status_code == 204
    assert county.put("Organization/org-t", organization("org-t")).status_code == 201
    encounter = fhir.post("Encounter", {
        "resourceType": "Encounter", "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{pid}"}, "serviceProvider": {"reference": "Organization/org-t"},
    })
    assert encounter.status_code == 201, encounter.json
    eid = encounter.json["id"]
    with statements_sent() as seen:
        assert fhir.get(f"Patient/{pid}").status_code == 200
    reads = [s for s in seen if "fhir_resource" in s]
    assert len(reads) == 1
    assert ("audit_record" in reads[0]) == (backend == "postgresql")
    assert fhir.get(f"Encounter/{eid}").status_code == 200
    assert fhir.get("Patient/no-such-patient").status_code == 404
    assert fhir.get(f"Patient/{gone}").status_code == 410
    assert _audit_rows() == [("read", pid, pid, None), ("read", eid, pid, None)]


def test_a_search_records_its_audit_row_once_whatever_it_runs(backend: str, platform: Fhir) -> None:
    fhir = platform
    for given in ("一", "二", "三"):
        assert fhir.post("Patient", patient(None, family="宋", given=given)).status_code == 201
    queries = ["Patient?family=宋", "Patient?family=宋&_count=2", "Patient?family=宋&_summary=count",
               "Patient?family=宋&_count=0&_total=none", "Patient?family=元"]
    for query in queries:
        with statements_sent() as seen:
            answer = fhir.get(query)
        assert answer.status_code == 200, answer.json
        audit_statements = [s for s in seen if "audit_record" in s]
        assert len(audit_statements) == 1, (query, seen)
        if backend == "postgresql" and "_total=none" not in query:
            assert "fhir_resource" in audit_statements[0]  # it rode along with the search
    totals = [fhir.get(q).json.get("total") for q in ("Patient?family=宋&_count=2", "Patient?family=元")]
    assert totals == [3, 0]
    logged = [(interaction, query) for interaction, _, _, query in _audit_rows()]
    assert [i for i, _ in logged] == ["search"] * 7
    assert [parse_qsl(q or "") for _, q in logged[:5]] == [parse_qsl(q.split("?", 1)[1]) for q in queries]


def test_read_only_work_commits_only_what_it_leaves_to_write(
    app: Flask, make_org: Callable[..., str]
) -> None:
    make_org("org-ro")
    commits: list[object] = []

    def on_commit(session: Any) -> None:
        commits.append(session)

    event.listen(Session, "after_commit", on_commit)
    try:
        with database.unit_of_work(read_only=True) as session:
            assert session.get(Organization, "org-ro") is not None
        assert commits == []  # nothing to write: no commit round
        with database.unit_of_work(read_only=True) as session:
            audit(session, CLINIC, action="R", interaction="read", entity_type="Patient", entity_id="p9")
        assert len(commits) == 1 and _audit_count() == 1
        with database.unit_of_work(read_only=True) as session:
            row = session.get(Organization, "org-ro")
            assert row is not None
            row.name = "改名卫生院"  # a change made here is not lost
    finally:
        event.remove(Session, "after_commit", on_commit)
    with database.unit_of_work() as session:
        assert session.get(Organization, "org-ro").name == "改名卫生院"  # type: ignore[union-attr]


def test_a_write_carries_its_audit_row_and_access_link_in_one_statement(
    backend: str, platform: Fhir, client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]
) -> None:
    """PostgreSQL: a create of an Encounter is one statement, which checks its references and writes
    the resource, the audit row and the writer's access link to the patient; an update is that
    statement after the look-ups of the current version. On both engines the rows are the same, and a
    write with a reference to nothing is refused (422) and leaves none of them."""
    fhir = platform
    county = Fhir(client, token_for(client, *make_api_client("county-platform", "system/*.cruds",
                                                             "qs-health-commission")))
    assert county.put("Organization/org-t", organization("org-t")).status_code == 201
    pid = county.post("Patient", patient(None, family="宋", given="一")).json["id"]
    encounter = {
        "resourceType": "Encounter", "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{pid}"}, "serviceProvider": {"reference": "Organization/org-t"},
    }
    assert fhir.post("Encounter", encounter).status_code == 201  # (the client's facts are cached now)
    with statements_sent() as seen:
        created = fhir.post("Encounter", encounter)
    assert created.status_code == 201, created.json
    eid = created.json["id"]
    writes = [s for s in seen if not s.lstrip().upper().startswith("SELECT")]
    if backend == "postgresql":
        assert len(seen) == 1 and writes == seen, seen
        for part in ("missing AS", "fhir_resource", "audit_record", "patient_access"):
            assert part in writes[0], part
    with statements_sent() as seen:
        changed = {**encounter, "id": eid, "period": {"start": "2026-11-30T08:00:00+08:00"}}
        assert fhir.put(f"Encounter/{eid}", changed).status_code == 200
    writes = [s for s in seen if not s.lstrip().upper().startswith("SELECT")]
    if backend == "postgresql":
        assert [" ".join(w.split()[:3]) for w in writes] == ["WITH want AS"], writes
        # (before it: the current version, locked, and the check that the writer may see it)
        assert len(seen) == 3 and "audit_record" in writes[0], seen
    broken = {**encounter, "subject": {"reference": "Patient/nobody"}}
    refused = fhir.post("Encounter", broken)
    assert refused.status_code == 422 and "Patient/nobody" in refused.json["issue"][0]["diagnostics"]
    assert fhir.put(f"Encounter/{eid}", {**broken, "id": eid}).status_code == 422
    kept = fhir.get(f"Encounter?subject=Patient/{pid}&_id={eid}").json  # its index rows are intact
    assert [e["resource"]["meta"]["versionId"] for e in kept["entry"]] == ["2"]
    with database.unit_of_work() as session:
        rows = session.execute(
            select(AuditRecord.interaction, AuditRecord.action, AuditRecord.patient_id)
            .where(AuditRecord.entity_id == eid).order_by(AuditRecord.id)
        ).all()
        assert [tuple(r) for r in rows] == [("create", "C", pid), ("update", "U", pid)]
        links = session.execute(select(PatientAccess.org_id, PatientAccess.reason).where(
            PatientAccess.patient_id == pid)).all()
    assert ("org-1", "treated") in links


def test_kept_statements_run_as_compiled_text_with_their_column_types(
    backend: str, platform: Fhir
) -> None:
    """A read or search statement is compiled once and sent as text to the driver (psycopg or
    sqlite3), yet its rows are the ones SQLAlchemy would give (times UTC-aware through UTCDateTime,
    values bound the same)."""
    fhir = platform
    pid = fhir.post("Patient", patient(None, family="宋", given="一")).json["id"]
    reader = Actor(name="his", kind="client", organization_id="org-1")
    query = parse_search("Patient", [("family", "宋")], 10, 1000)
    stmt, params = store._search_statement("page", query, reader)
    with database.unit_of_work(read_only=True) as session:
        connection = session.connection()
        fast = kept.kept_rows(connection, stmt, params)
        usual = connection.execute(stmt, params).all()
        again = kept.kept_rows(connection, stmt, params)
    assert [tuple(r) for r in fast] == [tuple(r) for r in usual] == [tuple(r) for r in again]
    assert [r.res_id for r in fast] == [pid]
    assert fast[0].last_updated.utcoffset() is not None and fast[0].last_updated.tzinfo is UTC
    entry = kept._PLAIN[(id(stmt), backend)]
    placeholder = "%(v0)s" if backend == "postgresql" else ":v0"
    assert entry[0] is stmt and entry[1] is not None and placeholder in entry[1].sql
    answer = fhir.get(f"Patient/{pid}")
    assert answer.status_code == 200 and answer.headers["Last-Modified"].endswith("GMT")
    # A money column's conversion depends on the type the server reports: that statement runs as
    # usual (and still answers exact decimals).
    money = select(Settlement.total, Settlement.id).where(Settlement.id == bindparam("sid"))
    with database.unit_of_work(read_only=True) as session:
        assert list(kept.kept_rows(session.connection(), money, {"sid": "none"})) == []
    assert kept._PLAIN[(id(money), backend)][1] is None


def test_several_versions_written_together_read_back_as_if_written_one_by_one(
    backend: str, platform: Fhir
) -> None:
    """`ResourceStore.write` of an update and a create: on PostgreSQL one statement (with the audit
    row and the access link); on both engines the same current rows, history, indexes and audit row,
    and nothing at all when the transaction rolls back."""
    fhir = platform
    pid = fhir.post("Patient", patient(None, family="宋", given="一")).json["id"]
    observation = {
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    }
    writer = Actor(name="his", kind="client", organization_id="org-2")

    renamed = {**fhir.get(f"Patient/{pid}").json, "name": [{"family": "唐", "given": ["一"]}]}

    def versions(rs: store.ResourceStore) -> list[Any]:
        current = rs.current("Patient", pid)
        return [
            rs.prepare("Patient", renamed, method="PUT", owner_org_id="org-1", existing=current),
            rs.prepare("Observation", observation, method="POST", owner_org_id="org-2"),
        ]

    def write_then_fail() -> None:
        with database.unit_of_work() as session:
            rs = store.ResourceStore(session)
            rs.write(versions(rs), grant=(pid, "org-2", "treated"))
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        write_then_fail()
    assert fhir.get(f"Patient/{pid}").json["meta"]["versionId"] == "1"
    empty = fhir.get(f"Observation?subject=Patient/{pid}").json
    assert empty.get("total") == 0, empty

    with database.unit_of_work() as session:
        rs = store.ResourceStore(session)
        pending = versions(rs)
        with statements_sent() as seen:
            written = rs.write(pending, grant=(pid, "org-2", "treated"), audit=service.audit_row(
                writer, action="C", interaction="operation", entity_id="x", patient_id=pid))
        if backend == "postgresql":
            assert len(seen) == 1, seen
            assert all(t in seen[0] for t in ("fhir_resource", "audit_record", "patient_access"))
    assert [(w.res_type, w.version_id) for w in written] == [("Patient", 2), ("Observation", 1)]
    assert fhir.get(f"Patient/{pid}").json["name"][0]["family"] == "唐"
    assert fhir.get("Patient?family=宋").json["total"] == 0
    assert fhir.get("Patient?family=唐").json["total"] == 1
    history = fhir.get(f"Patient/{pid}/_history").json
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    found = fhir.get(f"Observation?subject=Patient/{pid}&code=8867-4").json
    assert [e["resource"]["id"] for e in found["entry"]] == [written[1].res_id]
    with database.unit_of_work() as session:
        assert session.get(PatientAccess, (pid, "org-2")) is not None
        assert session.scalars(select(AuditRecord.agent_name).where(AuditRecord.entity_id == "x")).all() == [
            "his"]


def test_kept_statements_use_the_driver_cursor_and_still_report_a_lost_connection(
    backend: str, platform: Fhir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: with no statement listener attached, a kept statement runs on the driver's cursor
    (SQLAlchemy's execution is not called). A connection lost under it is still reported as
    SQLAlchemy's error, marked invalidated, and the pool hands out a fresh one next."""
    if backend != "postgresql":
        pytest.skip("the driver path is PostgreSQL's")
    pid = platform.post("Patient", patient(None, family="宋", given="一")).json["id"]
    query = parse_search("Patient", [("family", "宋")], 10, 1000)
    stmt, params = store._search_statement("page", query, Actor(name="his", kind="client",
                                                                 organization_id="org-1"))

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("went through SQLAlchemy's execution")

    with database.unit_of_work(read_only=True) as session:
        connection = session.connection()
        backend_pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        with monkeypatch.context() as patched:
            patched.setattr(type(connection), "exec_driver_sql", refuse)
            assert [r.res_id for r in kept.kept_rows(connection, stmt, params)] == [pid]
        url = connection.engine.url
        with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database,
                             autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend_pid,))
        time.sleep(0.05)
        with pytest.raises(DBAPIError) as lost:
            kept.kept_rows(connection, stmt, params)
        assert lost.value.connection_invalidated
    with database.unit_of_work(read_only=True) as session:
        connection = session.connection()
        assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() != backend_pid
        assert [r.res_id for r in kept.kept_rows(connection, stmt, params)] == [pid]


def test_fixed_statements_of_reads_writes_and_reference_checks_skip_sqlalchemy_execution(
    backend: str, platform: Fhir, client: FlaskClient, make_api_client: Callable[..., tuple[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A create (its reference check and its writes: on PostgreSQL one statement, on SQLite the
    resource, its history row and its index rows), a read and a search go to the driver's cursor;
    SQLAlchemy's execution of SQL text is never called."""
    county = Fhir(client, token_for(client, *make_api_client("county-platform", "system/*.cruds",
                                                             "qs-health-commission")))
    assert county.put("Organization/org-t", organization("org-t")).status_code == 201
    pid = county.post("Patient", patient(None, family="宋", given="一")).json["id"]
    assert platform.get(f"Patient/{pid}").status_code == 200  # (both pools have connected)
    from sqlalchemy.engine import Connection

    run_text = Connection.exec_driver_sql

    def refuse(connection: Connection, statement: str, *args: Any, **kwargs: Any) -> Any:
        if statement == "BEGIN IMMEDIATE":  # (SQLite in memory: how a write transaction begins)
            return run_text(connection, statement, *args, **kwargs)
        raise AssertionError(f"went through SQLAlchemy's execution: {statement}")

    through_core: list[str] = []
    run_core = Connection.execute

    def record(connection: Connection, statement: Any, *args: Any, **kwargs: Any) -> Any:
        through_core.append(str(statement).split("(")[0].strip())
        return run_core(connection, statement, *args, **kwargs)

    monkeypatch.setattr(Connection, "exec_driver_sql", refuse)
    monkeypatch.setattr(Connection, "execute", record)
    encounter = {
        "resourceType": "Encounter", "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{pid}"}, "serviceProvider": {"reference": "Organization/org-t"},
    }
    created = platform.post("Encounter", encounter)
    assert created.status_code == 201, created.json
    assert platform.get(f"Encounter/{created.json['id']}").json["subject"]["reference"] == f"Patient/{pid}"
    found = platform.get(f"Encounter?subject=Patient/{pid}").json
    assert [e["resource"]["id"] for e in found["entry"]] == [created.json["id"]]
    assert not [s for s in through_core if "fhir_" in s], through_core


def test_the_token_s_client_check_reads_without_taking_the_writer_lock(
    backend: str, app: Flask, make_api_client: Callable[..., tuple[str, str]]
) -> None:
    """Whether a token's client is still active is read statement by statement: on SQLite it does
    not open a write transaction (BEGIN IMMEDIATE), which would make every writer queue behind it."""
    cid, _ = make_api_client("lock-free-client", "system/*.rs", "org-1")
    actors._clients.clear()
    seen: list[str] = []

    def on_execute(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(database.engine, "before_cursor_execute", on_execute)
    try:
        actors.check_client_active(database.engine, cid)
    finally:
        event.remove(database.engine, "before_cursor_execute", on_execute)
    assert [s.split()[0] for s in seen] == ["SELECT"], seen
    assert "api_client" in seen[0]


def test_an_update_told_the_resource_is_absent_still_finds_one_created_meanwhile(
    backend: str, app: Flask
) -> None:
    """`seen_absent` (the referral workflow's writes) skips the first look-up, not the one under the
    update-as-create lock: when the resource exists after all (another writer created it since), the
    write is its next version, not a second resource or an error; when it is absent, it is created
    with one look-up fewer."""
    org = {"resourceType": "Organization", "id": "org-absent", "name": "甲卫生院", "active": True}
    with database.unit_of_work() as session:
        with statements_sent() as seen:
            first = service.update(session, SYSTEM, "Organization", "org-absent", org, validate=False,
                                   hooks=False, seen_absent=True)
        lookups = [s for s in seen if s.lstrip().startswith("SELECT fhir_resource.pk")]
    assert (first.created, first.stored.version_id) == (True, 1)
    assert len(lookups) == 1  # (without the hint: one before the lock and one after)
    with database.unit_of_work() as session:
        second = service.update(session, SYSTEM, "Organization", "org-absent", {**org, "name": "乙卫生院"},
                                validate=False, hooks=False, seen_absent=True)
    assert (second.created, second.stored.version_id) == (False, 2)
    with database.unit_of_work() as session:
        rows = session.scalars(select(StoredResource).where(StoredResource.res_id == "org-absent")).all()
        assert [(r.version_id, jsonio.loads(r.content)["name"]) for r in rows] == [(2, "乙卫生院")]
