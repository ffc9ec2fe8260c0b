"""Patient/{id}/$everything: a patient's whole record as the client may see it, paged, narrowed by
`_type` and `_since`, with the organisations it refers to, and audited (both engines)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from referral_service.domain.registry import AuditRecord
from referral_service.extensions import database
from tests.functional.fhir_helpers import Fhir, created_id, patient, token_for, township_visit, vital

PID = "620421199003070021"
OTHER_PID = "620421198505050077"


def _record(his: Fhir) -> tuple[str, set[str]]:
    """A patient with two visits and a pulse; another patient with a visit. The first's record."""
    pid = created_id(his, "Patient", patient(PID))
    enc = [created_id(his, "Encounter", township_visit(pid, "in-progress")) for _ in range(2)]
    obs = created_id(his, "Observation", vital("8867-4", 80, "/min", f"Encounter/{enc[0]}", f"Patient/{pid}"))
    other = created_id(his, "Patient", patient(OTHER_PID, gender="male", birth="1985-05-05"))
    created_id(his, "Encounter", township_visit(other, "in-progress"))
    return pid, {f"Patient/{pid}", f"Encounter/{enc[0]}", f"Encounter/{enc[1]}", f"Observation/{obs}"}


def _entries(bundle: dict[str, Any], mode: str) -> list[str]:
    return [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])
            if e["search"]["mode"] == mode]


def _follow(fhir: Fhir, first: str) -> list[dict[str, Any]]:
    """Every page, from the one at the (absolute) URL `first` through the next links."""
    pages = []
    url: str | None = first
    while url:
        parts = urlsplit(url)
        response = fhir.client.get(f"{parts.path}?{parts.query}", headers=fhir._headers())
        assert response.status_code == 200, response.json
        pages.append(response.json)
        url = next((lk["url"] for lk in response.json["link"] if lk["relation"] == "next"), None)
    return pages


def test_the_record_of_one_patient_with_what_it_refers_to(his: Fhir) -> None:
    pid, record = _record(his)
    response = his.get(f"Patient/{pid}/$everything")
    assert response.status_code == 200, response.json
    bundle = response.json
    assert bundle["type"] == "searchset"
    matches = _entries(bundle, "match")
    assert matches[0] == f"Patient/{pid}"  # stored first
    assert len(matches) == len(set(matches)) == bundle["total"]
    assert set(matches) == record  # nothing of the other patient
    assert _entries(bundle, "include") == ["Organization/th-01"]  # the visits' provider, once


def test_pages_follow_storage_order_and_miss_nothing_added_meanwhile(his: Fhir) -> None:
    pid, record = _record(his)
    first = his.get(f"Patient/{pid}/$everything?_count=2").json
    assert "total" not in first and len(_entries(first, "match")) == 2
    late = created_id(his, "Encounter", township_visit(pid, "in-progress"))  # added between pages: last
    pages = [first, *_follow(his, next(lk["url"] for lk in first["link"] if lk["relation"] == "next"))]
    seen = [ref for page in pages for ref in _entries(page, "match")]
    assert seen == [*seen[:-1], f"Encounter/{late}"]
    assert sorted(seen) == sorted([*record, f"Encounter/{late}"])
    assert all(len(_entries(page, "match")) <= 2 for page in pages)
    assert _entries(pages[-1], "match")  # never an empty last page beyond the first


def test_type_and_since_narrow_the_record(his: Fhir) -> None:
    pid, record = _record(his)
    visits = his.get(f"Patient/{pid}/$everything?_type=Encounter,Observation").json
    assert set(_entries(visits, "match")) == {r for r in record if not r.startswith("Patient/")}
    stamp = his.get(f"Patient/{pid}").json["meta"]["lastUpdated"]
    since = his.get(f"Patient/{pid}/$everything", query_string={"_since": stamp}).json
    assert f"Patient/{pid}" in _entries(since, "match")  # at or after it
    future = his.get(f"Patient/{pid}/$everything?_since=2999-01-01").json
    assert future["total"] == 0 and "entry" not in future


@pytest.mark.parametrize(
    ("query", "named"),
    [("_type=Organization", "_type"), ("_type=Encounter,,", "_type"), ("start=2026-01-01", "start"),
     ("end=2026-01-01", "end"), ("shoe-size=9", "shoe-size"), ("_count=x", "_count"),
     ("_cursor=bogus", "_cursor"), ("_since=yesterday", "_since")],
)
def test_what_it_does_not_take_is_400(his: Fhir, query: str, named: str) -> None:
    pid = created_id(his, "Patient", patient(PID))
    response = his.get(f"Patient/{pid}/$everything?{query}")
    assert response.status_code == 400, response.json
    assert response.json["resourceType"] == "OperationOutcome"
    assert named in str(response.json["issue"][0])


def test_odd_count_and_since_values(his: Fhir) -> None:
    """`_count` of 5,000 digits was a 500 (int() takes at most 4,300), here and in history; `_count=0`
    answered total 0 for a record of 4; an offset of `_since` whose '+' was not URL-encoded (a space)
    was 400 where `_at` and search dates take it; `_count` and `_since` are named as an expression."""
    pid, record = _record(his)
    for path in (f"Patient/{pid}/$everything", f"Patient/{pid}/_history", "Encounter/_history"):
        huge = his.get(f"{path}?_count={'9' * 5000}")
        assert huge.status_code == 200, (path, huge.json)
    whole = his.get(f"Patient/{pid}/$everything?_count={'9' * 5000}").json
    assert len(_entries(whole, "match")) == len(record)
    none = his.get(f"Patient/{pid}/$everything?_count=0").json
    assert "entry" not in none and none.get("total") in (None, len(record))
    spaced = his.get(f"Patient/{pid}/$everything?_since=2000-01-01T00:00:00+08:00")
    assert spaced.status_code == 200, spaced.json
    assert set(_entries(spaced.json, "match")) == record
    for query, named in (("_count=-1", "_count"), ("_since=yesterday", "_since")):
        for path in (f"Patient/{pid}/$everything", f"Patient/{pid}/_history"):
            bad = his.get(f"{path}?{query}")
            assert bad.status_code == 400 and bad.json["issue"][0]["expression"] == [named], bad.json


def test_only_what_the_client_may_see_and_read(
    client: FlaskClient, make_api_client: Callable[..., tuple[str, str]], his: Fhir, platform: Fhir,
    other_his: Fhir,
) -> None:
    pid, record = _record(his)
    hidden = other_his.get(f"Patient/{pid}/$everything")
    assert hidden.status_code == 404  # as a read of her: out of sight is unknown
    assert his.get("Patient/nobody/$everything").status_code == 404
    cid, secret = make_api_client("registry-only", "system/Patient.rs", "th-01")
    patients_only = Fhir(client, token_for(client, cid, secret))
    assert _entries(patients_only.get(f"Patient/{pid}/$everything").json, "match") == [f"Patient/{pid}"]
    cid, secret = make_api_client("visits-only", "system/Encounter.rs", "th-01")
    assert Fhir(client, token_for(client, cid, secret)).get(f"Patient/{pid}/$everything").status_code == 403
    alone = created_id(his, "Patient", patient(None, family="李"))
    assert his.delete(f"Patient/{alone}").status_code == 204
    assert his.get(f"Patient/{alone}/$everything").status_code == 410
    assert set(_entries(platform.get(f"Patient/{pid}/$everything").json, "match")) == record


def test_it_is_audited_and_listed(his: Fhir) -> None:
    pid, _ = _record(his)
    assert his.get(f"Patient/{pid}/$everything").status_code == 200
    with database.session() as s:
        rows = s.scalars(select(AuditRecord).where(AuditRecord.query == "$everything")).all()
    assert [(r.patient_id, r.interaction, r.agent_name) for r in rows] == [(pid, "operation", "township-his")]
    statement = his.client.get("/fhir/metadata").json
    entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    assert "everything" in {op["name"] for op in entry["operation"]}
    assert his.client.post(f"/fhir/Patient/{pid}/$everything", headers=his._headers()).status_code == 405
