"""`_summary=true|text|data` and `_elements` on reads, vreads, searches and histories (FHIR
search.html#summary, #elements), as HAPI answers them: only the elements asked for, plus id, meta and
the mandatory elements, tagged SUBSETTED. We used to answer the whole resource."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from flask.testing import FlaskClient

from tests.functional.fhir_helpers import Fhir, organization, patient, token_for

V3 = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
NARRATIVE = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">王芳</div>'}


@pytest.fixture
def platform(client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]) -> Fhir:
    cid, secret = make_api_client("county-platform", "system/*.cruds", "qs-health-commission")
    fhir = Fhir(client, token_for(client, cid, secret))
    assert fhir.put("Organization/th-01", organization("th-01")).status_code == 201
    assert fhir.put("Organization/ch-01", organization("ch-01", level="county")).status_code == 201
    return fhir


@pytest.fixture
def fang(platform: Fhir) -> dict[str, Any]:
    body = patient(None, gp="th-01") | {"text": NARRATIVE, "maritalStatus": {"text": "已婚"}}
    created = platform.post("Patient", body)
    assert created.status_code == 201, created.json
    return dict(created.json)


def _subsetted(resource: dict[str, Any]) -> bool:
    return any(t.get("code") == "SUBSETTED" for t in resource["meta"].get("tag", []))


def _encounter(subject: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "status": "in-progress",
        "class": {"system": V3, "code": "AMB"},
        "subject": {"reference": f"Patient/{subject}"},
        "serviceProvider": {"reference": "Organization/ch-01"},
        "period": {"start": "2026-11-02T09:00:00+08:00"},
    }


def test_read_summary_modes(platform: Fhir, fang: dict[str, Any]) -> None:
    whole = platform.get(f"Patient/{fang['id']}")
    assert not _subsetted(whole.json)
    assert {"text", "generalPractitioner", "maritalStatus", "name"} <= whole.json.keys()

    summary = platform.get(f"Patient/{fang['id']}?_summary=true")
    assert summary.status_code == 200
    assert summary.headers["ETag"] == whole.headers["ETag"]
    # Patient's summary elements (R4 isSummary) stay; text, generalPractitioner and maritalStatus go
    assert set(summary.json) == {"resourceType", "id", "meta", "name", "gender", "birthDate", "address"}
    assert summary.json["name"] == whole.json["name"]
    assert summary.json["meta"]["versionId"] == whole.json["meta"]["versionId"]
    assert _subsetted(summary.json)

    text = platform.get(f"Patient/{fang['id']}?_summary=text").json
    assert set(text) == {"resourceType", "id", "meta", "text"} and _subsetted(text)

    data = platform.get(f"Patient/{fang['id']}?_summary=data").json
    assert set(data) == set(whole.json) - {"text"} and _subsetted(data)

    assert platform.get(f"Patient/{fang['id']}?_summary=false").json == whole.json
    for bad in ("_summary=count", "_summary=banana", "_summary=true&_elements=name", "_elements=9lives",
                "_elements=name;gender"):
        refused = platform.get(f"Patient/{fang['id']}?{bad}")
        assert refused.status_code == 400, bad
        assert refused.json["resourceType"] == "OperationOutcome"


def test_elements_keep_what_is_named_and_what_is_mandatory(platform: Fhir, fang: dict[str, Any]) -> None:
    named = platform.get(f"Patient/{fang['id']}?_elements=gender,maritalStatus").json
    assert set(named) == {"resourceType", "id", "meta", "gender", "maritalStatus"} and _subsetted(named)
    typed = platform.get(f"Patient/{fang['id']}?_elements=Patient.birthDate").json
    assert set(typed) == {"resourceType", "id", "meta", "birthDate"}

    encounter = platform.post("Encounter", _encounter(fang["id"])).json
    subject_only = platform.get(f"Encounter/{encounter['id']}?_elements=subject").json
    # status and class are 1..1 in R4: kept although not named
    assert set(subject_only) == {"resourceType", "id", "meta", "subject", "status", "class"}

    updated = platform.put(f"Patient/{fang['id']}", fang | {"gender": "other"})
    assert updated.status_code == 200
    first = platform.get(f"Patient/{fang['id']}/_history/1?_elements=gender").json
    assert first["gender"] == "female" and "name" not in first and _subsetted(first)

    history = platform.get(f"Patient/{fang['id']}/_history?_elements=gender").json
    versions = [e["resource"] for e in history["entry"]]
    assert [v["gender"] for v in versions] == ["other", "female"]
    assert all(set(v) == {"resourceType", "id", "meta", "gender"} for v in versions)
    self_link = next(lk["url"] for lk in history["link"] if lk["relation"] == "self")
    assert ("_elements", "gender") in parse_qsl(urlsplit(self_link).query)


def test_search_subsets_the_matches_and_pages_alike(platform: Fhir, fang: dict[str, Any]) -> None:
    for _ in range(2):
        assert platform.post("Encounter", _encounter(fang["id"])).status_code == 201
    first = platform.get("Encounter?_summary=true&_count=1")
    entry = first.json["entry"][0]["resource"]
    assert _subsetted(entry)
    assert {"status", "class", "subject"} <= entry.keys()
    assert "serviceProvider" not in entry and "period" not in entry  # not summary elements in R4
    nxt = next(lk["url"] for lk in first.json["link"] if lk["relation"] == "next")
    assert ("_summary", "true") in parse_qsl(urlsplit(nxt).query)
    second = platform.client.get(nxt, headers=platform._headers()).json["entry"][0]["resource"]
    assert _subsetted(second) and "period" not in second

    elements = platform.get("Encounter?_elements=period&_include=Encounter:subject").json
    matches = [e["resource"] for e in elements["entry"] if e["search"]["mode"] == "match"]
    included = [e["resource"] for e in elements["entry"] if e["search"]["mode"] == "include"]
    assert len(matches) == 2
    assert all(set(m) == {"resourceType", "id", "meta", "period", "status", "class"} for m in matches)
    assert included and "generalPractitioner" in included[0] and not _subsetted(included[0])
    qualified = platform.get("Encounter?_elements=period,Patient.gender&_include=Encounter:subject").json
    patient_included = next(e["resource"] for e in qualified["entry"] if e["search"]["mode"] == "include")
    assert set(patient_included) == {"resourceType", "id", "meta", "gender"}

    summary_included = platform.get("Encounter?_summary=true&_include=Encounter:subject").json["entry"]
    patient_summary = next(e["resource"] for e in summary_included if e["search"]["mode"] == "include")
    assert "generalPractitioner" not in patient_summary and _subsetted(patient_summary)

    counted = platform.get("Encounter?_summary=count&_elements=period").json
    assert counted["total"] == 2 and "entry" not in counted


def test_conformance_resources_in_summary(platform: Fhir) -> None:
    whole = platform.get("CodeSystem?_count=1").json["entry"][0]["resource"]
    assert "concept" in whole
    summary = platform.get("CodeSystem?_count=1&_summary=true").json["entry"][0]["resource"]
    assert "concept" not in summary and summary["url"] == whole["url"] and _subsetted(summary)


def test_a_subsetted_resource_is_not_stored(platform: Fhir, fang: dict[str, Any]) -> None:
    """A client that PUTs back what `_summary` gave it would erase what was cut: 422, nothing stored."""
    summary = platform.get(f"Patient/{fang['id']}?_summary=true").json
    refused = platform.put(f"Patient/{fang['id']}", summary)
    assert refused.status_code == 422, refused.json
    assert refused.json["issue"][0]["expression"] == ["Patient.meta.tag"]
    assert platform.get(f"Patient/{fang['id']}").json["meta"]["versionId"] == "1"
    copy = {k: v for k, v in summary.items() if k != "id"}
    assert platform.post("Patient", copy).status_code == 422
    checked = platform.post("Patient/$validate", summary).json
    assert any("SUBSETTED" in issue["diagnostics"] for issue in checked["issue"])
