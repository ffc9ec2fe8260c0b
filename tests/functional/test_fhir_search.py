"""FHIR search over HTTP on both engines: parameter types, modifiers, prefixes, result parameters, paging."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from flask.testing import FlaskClient

from referral_service.domain.resident_id import generate
from referral_service.fhir.codes import ICD10_SYSTEM
from tests.functional.fhir_helpers import (
    RESIDENT_ID,
    Fhir,
    ordered_ids,
    organization,
    paged_ids,
    patient,
    token_for,
    vital,
)

V3 = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
LOINC = "http://loinc.org"
MRN = "urn:oid:1.2.156.1"


def _pid(birth: str, gender: str, n: int) -> str:
    return generate("620421", date.fromisoformat(birth), gender, n)


@pytest.fixture
def platform(client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]) -> Fhir:
    cid, secret = make_api_client("county-platform", "system/*.cruds", "qs-health-commission")
    fhir = Fhir(client, token_for(client, cid, secret))
    assert fhir.put("Organization/th-01", organization("th-01")).status_code == 201
    assert fhir.put("Organization/ch-01", organization("ch-01", level="county")).status_code == 201
    return fhir


@dataclass
class World:
    """Patients and encounters that most search tests look for."""

    fang: dict[str, Any]  # 王芳, female, 1990-03-07, GP th-01
    ming: dict[str, Any]  # 王小明, male, 1985-05-05
    na: dict[str, Any]  # 李娜, female, 2000-01-01, no resident id, an MRN without system
    jose: dict[str, Any]  # José Müller, male, no birth date
    enc_jan: dict[str, Any]  # 王芳, 2024-01-05 08:00-10:00 (+08:00), finished
    enc_feb: dict[str, Any]  # 王小明, 2024-02-10 .. 2024-02-15, in-progress

    def ids(self, *names: str) -> set[str]:
        return {getattr(self, n)["id"] for n in names}


def _created(response: Any) -> dict[str, Any]:
    assert response.status_code == 201, response.json
    return dict(response.json)


def encounter(subject: str, start: str, end: str | None, status: str = "finished") -> dict[str, Any]:
    period = {"start": start} | ({"end": end} if end else {})
    return {
        "resourceType": "Encounter",
        "status": status,
        "class": {"system": V3, "code": "AMB"},
        "subject": {"reference": f"Patient/{subject}"},
        # a county hospital's outpatient visit: no referral rules run on it
        "serviceProvider": {"reference": "Organization/ch-01"},
        "period": period,
    }


@pytest.fixture
def world(platform: Fhir) -> World:
    fang = _created(platform.post("Patient", patient(_pid("1990-03-07", "female", 1), gp="th-01")))
    ming = _created(
        platform.post(
            "Patient",
            patient(
                _pid("1985-05-05", "male", 2), family="王", given="小明", gender="male", birth="1985-05-05"
            ),
        )
    )
    na_body = patient(None, family="李", given="娜", birth="2000-01-01")
    na_body["identifier"] = [{"value": "MRN-0042"}]
    na = _created(platform.post("Patient", na_body))
    jose_body = patient(None, family="Müller", given="José", gender="male")
    del jose_body["birthDate"]
    jose_body["identifier"] = [{"system": MRN, "value": "MRN-0042"}]
    jose = _created(platform.post("Patient", jose_body))
    enc_jan = _created(
        platform.post(
            "Encounter", encounter(fang["id"], "2024-01-05T08:00:00+08:00", "2024-01-05T10:00:00+08:00")
        )
    )
    enc_feb = _created(
        platform.post("Encounter", encounter(ming["id"], "2024-02-10", "2024-02-15", status="in-progress"))
    )
    return World(fang, ming, na, jose, enc_jan, enc_feb)


def ids_of(response: Any, mode: str = "match") -> set[str]:
    assert response.status_code == 200, response.json
    bundle = response.json
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "searchset"
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode}


def assert_400(response: Any) -> None:
    assert response.status_code == 400, response.json
    assert response.json["resourceType"] == "OperationOutcome"


# ------------------------------------------------------------------------------------------ token


def test_token_parameters(platform: Fhir, world: World) -> None:
    number = world.fang["identifier"][0]["value"]
    assert ids_of(platform.get(f"Patient?identifier={RESIDENT_ID}|{number}")) == world.ids("fang")
    assert ids_of(platform.get(f"Patient?identifier={number}")) == world.ids("fang")
    assert ids_of(platform.get(f"Patient?identifier={RESIDENT_ID}|")) == world.ids("fang", "ming")
    # the same value under two systems, and without one
    assert ids_of(platform.get("Patient?identifier=MRN-0042")) == world.ids("na", "jose")
    assert ids_of(platform.get("Patient?identifier=|MRN-0042")) == world.ids("na")
    assert ids_of(platform.get(f"Patient?identifier={MRN}|MRN-0042")) == world.ids("jose")
    assert ids_of(platform.get(f"Patient?identifier={RESIDENT_ID}|MRN-0042")) == set()
    assert ids_of(platform.get(f"Patient?identifier=other|{number}")) == set()

    # token code and not
    assert ids_of(platform.get("Patient?gender=female")) == world.ids("fang", "na")
    assert ids_of(platform.get("Patient?gender:not=female")) == world.ids("ming", "jose")
    assert ids_of(platform.get("Encounter?status=finished")) == world.ids("enc_jan")
    assert ids_of(platform.get(f"Encounter?class={V3}|AMB")) == world.ids("enc_jan", "enc_feb")
    assert ids_of(platform.get("Encounter?class=IMP")) == set()
    assert ids_of(platform.get("Encounter?status:not=finished")) == world.ids("enc_feb")


# ----------------------------------------------------------------------------------------- string


def test_a_lower_case_x_finds_the_resident_identity_number_with_or_without_its_system(
    platform: Fhir, world: World
) -> None:
    """Stored upper-case; `system|...x` found it, a bare `...x` found nothing."""
    number = next(n for n in (_pid("1990-03-07", "female", k) for k in range(400)) if n.endswith("X"))
    pid = _created(platform.post("Patient", patient(number[:17] + "x")))["id"]
    for query in (f"identifier={RESIDENT_ID}|{number[:17]}x", f"identifier={number[:17]}x",
                  f"identifier={number}", f"identifier={number[:17]}x,MRN-0042"):
        assert pid in ids_of(platform.get(f"Patient?{query}")), query
    assert ids_of(platform.get(f"Patient?identifier=|{number[:17]}x")) == set()  # no system: not ours
    assert pid not in ids_of(platform.get(f"Patient?identifier:not={number[:17]}x"))


def test_string_parameters(platform: Fhir, world: World) -> None:
    assert ids_of(platform.get("Patient?name=王芳")) == world.ids("fang")
    assert ids_of(platform.get("Patient?family=王")) == world.ids("fang", "ming")
    assert ids_of(platform.get("Patient?name=王")) == world.ids("fang", "ming")
    assert ids_of(platform.get("Patient?given=小明")) == world.ids("ming")
    assert ids_of(platform.get("Patient?name=王小")) == world.ids("ming")  # starts with
    assert ids_of(platform.get("Patient?name=明")) == set()  # not a prefix of any part
    assert ids_of(platform.get("Patient?name:contains=明")) == world.ids("ming")
    assert ids_of(platform.get("Patient?name:exact=王芳")) == world.ids("fang")
    assert ids_of(platform.get("Patient?name:exact=王小")) == set()
    assert ids_of(platform.get("Patient?family:exact=李")) == world.ids("na")

    # string case and accent insensitive
    for value in ("muller", "MÜLLER", "Mül", "jose", "JOSÉ"):
        assert ids_of(platform.get(f"Patient?name={value}")) == world.ids("jose"), value
    assert ids_of(platform.get("Patient?name:exact=Müller")) == world.ids("jose")
    assert ids_of(platform.get("Patient?name:exact=muller")) == set()
    assert ids_of(platform.get("Patient?name:exact=Mül")) == set()
    assert ids_of(platform.get("Patient?name:contains=ULL")) == world.ids("jose")
    assert ids_of(platform.get("Patient?family:contains=se")) == set()  # José is the given name

    # string wildcards are literal
    assert ids_of(platform.get("Patient?name=%25")) == set()
    assert ids_of(platform.get("Patient?name:contains=_")) == set()
    assert ids_of(platform.get("Patient?address=城关")) == world.ids("fang", "ming", "na", "jose")


# ------------------------------------------------------------------------------------------- date


BIRTHDATE_CASES = [
    ("birthdate=1990-03-07", {"fang"}),
    ("birthdate=eq1990-03-07", {"fang"}),
    ("birthdate=1990", {"fang"}),
    ("birthdate=1990-03", {"fang"}),
    ("birthdate=1990-03-08", set()),
    ("birthdate=gt1990-03-07", {"na"}),
    ("birthdate=ge1990-03-07", {"fang", "na"}),
    ("birthdate=lt1990-03-07", {"ming"}),
    ("birthdate=le1990-03-07", {"fang", "ming"}),
    ("birthdate=ne1990-03-07", {"ming", "na"}),
    ("birthdate=gt1985-05-05&birthdate=lt2000-01-01", {"fang"}),
    ("birthdate=1985-05-05,2000-01-01", {"ming", "na"}),
    ("birthdate=ge1999-12-31T16:00:00Z", {"na"}),  # 2000-01-01 in Shanghai starts then
    ("birthdate=lt1999-12-31T16:00:00Z", {"fang", "ming"}),
]

# enc_jan: 2024-01-05 08:00-10:00 Shanghai (00:00-02:00 UTC); enc_feb: 2024-02-10 .. 2024-02-15
ENCOUNTER_DATE_CASES = [
    ("date=2024-01-05", {"enc_jan"}),
    ("date=2024-01", {"enc_jan"}),
    ("date=2024", {"enc_jan", "enc_feb"}),
    ("date=2024-02-12", set()),  # the stay is longer than the day
    ("date=2024-02", {"enc_feb"}),
    ("date=gt2024-01-31", {"enc_feb"}),
    ("date=ge2024-02-15", {"enc_feb"}),
    ("date=gt2024-02-15", set()),
    ("date=lt2024-02-10", {"enc_jan"}),
    ("date=le2024-02-10", {"enc_jan", "enc_feb"}),
    ("date=lt2024-01-05", set()),
    ("date=le2024-01-05", {"enc_jan"}),
    ("date=ge2024-01-05T01:00:00Z", {"enc_jan", "enc_feb"}),  # 09:00 Shanghai: inside the visit
    ("date=gt2024-01-05T03:00:00Z", {"enc_feb"}),  # after the visit ended
    ("date=lt2024-01-05T00:00:00Z", set()),  # 08:00 Shanghai, when the visit started
    ("date=lt2024-01-05T00:30:00Z", {"enc_jan"}),  # the visit started before
    ("date=2024-01-05T08:00:00%2B08:00", set()),  # a second cannot contain a two-hour visit
    ("date=eq2024-01-05T07:00:00%2B08:00,2024-02", {"enc_feb"}),
]


def test_date_parameters(platform: Fhir, world: World) -> None:
    for query, expected in BIRTHDATE_CASES:
        assert ids_of(platform.get(f"Patient?{query}")) == world.ids(*expected), query
    for query, expected in ENCOUNTER_DATE_CASES:
        assert ids_of(platform.get(f"Encounter?{query}")) == world.ids(*expected), query
    for bad in ("birthdate=yesterday", "birthdate=xx1990", "birthdate=1990-13", "birthdate=1990-02-30",
                "birthdate=١٩٩٠", "_lastUpdated=gt٢٠٢٦"):  # FHIR dates are ASCII digits
        assert_400(platform.get(f"Patient?{bad}"))
    assert_400(platform.get("Encounter?date=2024-01-05T25:00"))
    # the ends of the calendar are searchable, not a crash
    for edge in ("birthdate=0001-01-01", "birthdate=gt0001", "birthdate=9999-12-31", "birthdate=lt9999"):
        assert platform.get(f"Patient?{edge}").status_code == 200, edge
    assert ids_of(platform.get("Patient?birthdate=lt9999")) == world.ids("fang", "ming", "na")


def test_dates_at_the_ends_of_the_calendar_are_stored(platform: Fhir) -> None:
    early = _created(platform.post("Patient", patient(None, birth="0001-01-01")))
    assert ids_of(platform.get("Patient?birthdate=lt1000")) == {early["id"]}
    # (a birthDate after today is refused: the late end is a Condition's recordedDate)
    late = _created(platform.post("Condition", {
        "resourceType": "Condition", "subject": {"reference": f"Patient/{early['id']}"},
        "code": {"coding": [{"system": ICD10_SYSTEM, "code": "J18.9"}]}, "recordedDate": "9999-12-31",
    }))
    assert ids_of(platform.get("Condition?recorded-date=gt5000")) == {late["id"]}


# -------------------------------------------------------------------------------------- reference


def test_reference_missing_id_and_combinations(platform: Fhir, world: World) -> None:
    fang = world.fang["id"]
    expected = world.ids("enc_jan")
    assert ids_of(platform.get(f"Encounter?subject=Patient/{fang}")) == expected
    assert ids_of(platform.get(f"Encounter?subject={fang}")) == expected
    assert ids_of(platform.get(f"Encounter?patient={fang}")) == expected
    assert ids_of(platform.get(f"Encounter?patient=Patient/{fang}")) == expected
    assert ids_of(platform.get(f"Encounter?subject:Patient={fang}")) == expected
    assert ids_of(platform.get(f"Encounter?subject=Group/{fang}")) == set()
    assert ids_of(platform.get(f"Encounter?subject=Patient/{fang}/_history/1")) == expected
    both = f"Encounter?subject={fang},{world.ming['id']}"
    assert ids_of(platform.get(both)) == world.ids("enc_jan", "enc_feb")
    assert ids_of(platform.get("Patient?general-practitioner=Organization/th-01")) == world.ids("fang")
    assert ids_of(platform.get("Encounter?service-provider=ch-01")) == world.ids("enc_jan", "enc_feb")

    # missing modifier
    assert ids_of(platform.get("Patient?birthdate:missing=true")) == world.ids("jose")
    assert ids_of(platform.get("Patient?birthdate:missing=false")) == world.ids("fang", "ming", "na")
    assert ids_of(platform.get("Patient?general-practitioner:missing=false")) == world.ids("fang")
    assert ids_of(platform.get("Patient?general-practitioner:missing=true")) == world.ids(
        "ming", "na", "jose"
    )
    assert ids_of(platform.get("Patient?telecom:missing=true")) == world.ids("fang", "ming", "na", "jose")
    assert_400(platform.get("Patient?birthdate:missing=maybe"))

    # or values and repeated params
    assert ids_of(platform.get("Patient?family=王,李")) == world.ids("fang", "ming", "na")
    assert ids_of(platform.get("Patient?family=王,李&gender=female")) == world.ids("fang", "na")
    assert ids_of(platform.get("Patient?name=王&name=小")) == world.ids("ming")
    assert ids_of(platform.get("Patient?gender=female&gender=male")) == set()
    assert ids_of(platform.get(f"Patient?_id={world.fang['id']},{world.na['id']}")) == world.ids("fang", "na")

    # id parameter
    assert ids_of(platform.get(f"Patient?_id={world.ming['id']}")) == world.ids("ming")
    assert ids_of(platform.get(f"Encounter?_id={world.ming['id']}")) == set()  # a Patient's id
    assert ids_of(platform.get("Patient?_id=nobody")) == set()


def test_last_updated_prefixes(platform: Fhir, world: World) -> None:
    time.sleep(0.01)
    later = _created(platform.post("Patient", patient(None, family="赵", given="六")))
    stamp = later["meta"]["lastUpdated"]
    all_patients = world.ids("fang", "ming", "na", "jose") | {later["id"]}
    assert ids_of(platform.get(f"Patient?_lastUpdated={stamp}")) == {later["id"]}
    assert ids_of(platform.get(f"Patient?_lastUpdated=eq{stamp}")) == {later["id"]}
    assert ids_of(platform.get(f"Patient?_lastUpdated=ge{stamp}")) == {later["id"]}
    assert ids_of(platform.get(f"Patient?_lastUpdated=gt{stamp}")) == set()
    assert ids_of(platform.get(f"Patient?_lastUpdated=lt{stamp}")) == all_patients - {later["id"]}
    assert ids_of(platform.get(f"Patient?_lastUpdated=le{stamp}")) == all_patients
    assert ids_of(platform.get("Patient?_lastUpdated=gt2000-01-01")) == all_patients
    assert ids_of(platform.get("Patient?_lastUpdated=lt2000-01-01")) == set()
    day = stamp[:10]
    assert ids_of(platform.get(f"Patient?_lastUpdated=ge{day}T00:00:00Z&_lastUpdated=le{stamp}")) >= {
        later["id"]
    }
    # an offset written with an unescaped '+' arrives as a space; it still parses
    assert ids_of(platform.get("Patient?_lastUpdated=gt2000-01-01T00:00:00+08:00")) == all_patients
    assert_400(platform.get("Patient?_lastUpdated=soon"))


# ---------------------------------------------------------------------------------- result params


def _bulk_patients(fhir: Fhir, count: int, family: str = "陈") -> list[str]:
    """Create `count` Patients in one transaction Bundle; their ids in order."""
    entries = [
        {
            "fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}",
            "resource": patient(None, family=family, given=f"{i:04d}"),
            "request": {"method": "POST", "url": "Patient"},
        }
        for i in range(count)
    ]
    response = fhir.post("", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert response.status_code == 200, response.json
    return [e["response"]["location"].split("/")[1] for e in response.json["entry"]]


def test_count_default_and_maximum(platform: Fhir, client: FlaskClient) -> None:
    _bulk_patients(platform, 60)
    page = platform.get("Patient")
    assert page.json["total"] == 60
    assert len(page.json["entry"]) == 50
    assert "_count=50" in next(link["url"] for link in page.json["link"] if link["relation"] == "next")
    assert len(platform.get("Patient?_count=7").json["entry"]) == 7
    whole = platform.get("Patient?_count=5000")
    assert len(whole.json["entry"]) == 60
    assert not [link for link in whole.json["link"] if link["relation"] == "next"]
    zero = platform.get("Patient?_count=0")
    assert zero.json["total"] == 60
    assert "entry" not in zero.json
    assert_400(platform.get("Patient?_count=many"))
    assert_400(platform.get("Patient?_count=-1"))
    assert_400(platform.get("Patient?_count=²"))
    assert_400(platform.get("Patient?_count=1.5"))
    assert len(platform.get("Patient?_count=" + "9" * 5000).json["entry"]) == 60


def test_count_is_capped_at_the_maximum(platform: Fhir, client: FlaskClient) -> None:
    client.application.config["FHIR_MAX_COUNT"] = 5
    _bulk_patients(platform, 8)
    capped = platform.get("Patient?_count=1000")
    assert len(capped.json["entry"]) == 5
    nxt = next(link["url"] for link in capped.json["link"] if link["relation"] == "next")
    assert len(platform.client.get(nxt, headers=platform._headers()).json["entry"]) == 3


def test_sort(platform: Fhir, world: World) -> None:
    time.sleep(0.01)
    platform.put(f"Patient/{world.ming['id']}", world.ming | {"active": True})  # now the newest
    oldest_first = ordered_ids(platform.get("Patient?_sort=_lastUpdated"))
    assert oldest_first == [world.fang["id"], world.na["id"], world.jose["id"], world.ming["id"]]
    newest_first = ordered_ids(platform.get("Patient?_sort=-_lastUpdated"))
    assert newest_first == list(reversed(oldest_first))
    by_id = ordered_ids(platform.get("Patient?_sort=_id"))
    assert by_id == sorted(world.ids("fang", "ming", "na", "jose"))
    assert ordered_ids(platform.get("Patient?_sort=-_id")) == list(reversed(by_id))
    assert_400(platform.get("Patient?_sort=shoe-size"))


def test_sort_by_a_date_parameter_pages_with_missing_values_last(platform: Fhir, world: World) -> None:
    """DESIGN lists _sort among the search features; a date parameter (birthdate, Encounter date...)
    was 400 "use _id or _lastUpdated". Ascending by the earliest instant, descending by the latest,
    a resource without one last either way; next links keep the order."""
    ming, fang, na, jose = (world.ming["id"], world.fang["id"], world.na["id"], world.jose["id"])
    for sort, expected in (("birthdate", [ming, fang, na, jose]), ("-birthdate", [na, fang, ming, jose])):
        assert ordered_ids(platform.get(f"Patient?_sort={sort}")) == expected, sort
        seen: list[str] = []
        url: str | None = f"Patient?_sort={sort}&_count=1"
        while url:
            page = platform.get(url) if not seen else platform.client.get(url, headers=platform._headers())
            seen += ordered_ids(page)
            url = next((lk["url"] for lk in page.json["link"] if lk["relation"] == "next"), None)
        assert seen == expected, sort
    assert ordered_ids(platform.get("Encounter?_sort=-date")) == [world.enc_feb["id"], world.enc_jan["id"]]
    assert ordered_ids(platform.get("Encounter?_sort=date")) == [world.enc_jan["id"], world.enc_feb["id"]]


def test_chained_parameters(platform: Fhir, world: World) -> None:
    """HAPI answers chained searches (FHIR search.html#chaining), which a HIS uses to find a
    patient's records by the identity number it knows rather than our id: `patient.identifier=`,
    `subject:Patient.name=`. They were 400 (unknown parameter)."""
    number = world.fang["identifier"][0]["value"]
    enc_jan, enc_feb = world.enc_jan["id"], world.enc_feb["id"]
    assert ids_of(platform.get(f"Encounter?patient.identifier={RESIDENT_ID}|{number}")) == {enc_jan}
    assert ids_of(platform.get(f"Encounter?subject:Patient.identifier={number}")) == {enc_jan}
    assert ids_of(platform.get("Encounter?subject.name=王")) == {enc_jan, enc_feb}
    assert ids_of(platform.get("Encounter?subject:Patient.name:exact=王")) == {enc_jan, enc_feb}
    assert ids_of(platform.get("Encounter?patient.gender=male")) == {enc_feb}
    assert ids_of(platform.get("Encounter?patient.birthdate=lt1989")) == {enc_feb}
    assert ids_of(platform.get(f"Encounter?patient._id={world.fang['id']}")) == {enc_jan}
    assert ids_of(platform.get("Encounter?service-provider.identifier=nobody")) == set()
    assert ids_of(platform.get("Encounter?patient.gender=male&status=finished")) == set()
    assert ids_of(platform.get("Encounter?patient.gender=male,female&_sort=date")) == {enc_jan, enc_feb}
    paged = paged_ids(platform, "Encounter?patient.name=王&_sort=date")
    assert paged == [enc_jan, enc_feb]
    # a patient her encounters refer to is not deleted (409): they are still found through her
    assert platform.delete(f"Patient/{world.ming['id']}").status_code == 409
    assert ids_of(platform.get("Encounter?patient.gender=male")) == {enc_feb}
    for bad in ("Encounter?status.code=x", "Encounter?patient.shoe-size=9",
                "Encounter?patient.organization.partof.partof.name=x",
                "Encounter?service-provider:Patient.name=x",
                "Encounter?subject:Nonsense.name=x", "Encounter?patient.name:missing=true",
                "Encounter?patient.=x"):
        assert_400(platform.get(bad))


def test_reverse_chaining_with_has(platform: Fhir, world: World) -> None:
    """`_has` (FHIR search.html#has), as HAPI answers it: the patients some live Encounter or
    Observation matching a criterion refers to. It was 400 (unknown parameter)."""
    fang, ming = world.fang["id"], world.ming["id"]
    pulse = platform.post("Observation", vital("8867-4", 72, "/min", f"Encounter/{world.enc_jan['id']}",
                                               f"Patient/{fang}"))
    assert pulse.status_code == 201, pulse.json
    assert ids_of(platform.get("Patient?_has:Encounter:subject:status=in-progress")) == {ming}
    assert ids_of(platform.get("Patient?_has:Encounter:patient:status=finished,in-progress")) == {fang, ming}
    assert ids_of(platform.get(f"Patient?_has:Observation:patient:code={LOINC}|8867-4")) == {fang}
    assert ids_of(platform.get("Patient?_has:Observation:patient:code=9279-1")) == set()
    assert ids_of(platform.get("Patient?_has:Encounter:subject:date=ge2024-02-01&gender=female")) == set()
    assert ids_of(platform.get("Patient?_has:Encounter:subject:status:not=finished")) == {ming}
    assert ids_of(platform.get("Encounter?_has:Observation:encounter:code=8867-4")) == {world.enc_jan["id"]}
    assert platform.delete(f"Observation/{pulse.json['id']}").status_code == 204
    assert ids_of(platform.get("Patient?_has:Observation:patient:code=8867-4")) == set()
    for bad in ("Patient?_has:Encounter:subject=x", "Patient?_has:Nothing:subject:status=x",
                "Patient?_has:Encounter:service-provider:status=x", "Patient?_has:Encounter:subject:shoe=x",
                "Patient?_has:Encounter:subject:_has:Observation:encounter:_has:Observation:encounter:code=x",
                "Patient?_has:AuditEvent:patient:action=R"):
        assert_400(platform.get(bad))


def test_lenient_handling_ignores_unknown_parameters(platform: Fhir, world: World) -> None:
    """`Prefer: handling=lenient` (FHIR search.html#errors): an unknown parameter is left out, said
    so in an outcome entry, and missing from the self link; without it (or with handling=strict) it
    stays 400."""
    lenient = {"Prefer": "handling=lenient"}
    answer = platform.get("Patient?family=王&shoe-size=9&gender:whatever=x&_count=1", headers=lenient)
    assert answer.status_code == 400  # a known parameter with an unknown modifier is still an error
    answer = platform.get("Patient?family=王&shoe-size=9&_count=1", headers=lenient)
    assert answer.status_code == 200, answer.json
    assert answer.json["total"] == 2
    outcome = next(e["resource"] for e in answer.json["entry"] if e["search"]["mode"] == "outcome")
    assert "shoe-size" in outcome["issue"][0]["diagnostics"]
    for link in answer.json["link"]:
        assert "shoe-size" not in link["url"], link
    nxt = next(lk["url"] for lk in answer.json["link"] if lk["relation"] == "next")
    assert len(ordered_ids(platform.client.get(nxt, headers=platform._headers()))) == 1
    assert platform.get("Patient?family=王&_count=1", headers=lenient).json["total"] == 2
    assert "outcome" not in {e["search"]["mode"] for e in
                             platform.get("Patient?family=王", headers=lenient).json["entry"]}
    assert_400(platform.get("Patient?family=王&shoe-size=9"))
    assert_400(platform.get("Patient?family=王&shoe-size=9", headers={"Prefer": "handling=strict"}))
    assert platform.get("Patient?shoe-size=9", headers={"Prefer": "return=minimal, handling=lenient"}
                        ).status_code == 200


def test_token_text_modifier_searches_texts_and_displays(platform: Fhir, world: World,
                                                         client: FlaskClient) -> None:
    """`code:text=` (FHIR search.html#modifiers) matches a code's text or display as a string
    parameter does (starts with, case and accents ignored). It was 400; `flask fhir-reindex` gives
    resources stored before it their text rows."""
    def condition(text: str, display: str) -> str:
        return _created(platform.post("Condition", {
            "resourceType": "Condition", "subject": {"reference": f"Patient/{world.fang['id']}"},
            "code": {"coding": [{"system": ICD10_SYSTEM, "code": "J18.9", "display": display}], "text": text},
        }))["id"]

    pneumonia = condition("社区获得性肺炎", "Pneumonia, unspecified organism")
    fever = condition("发热", "Fever, unspecified")
    assert ids_of(platform.get("Condition?code:text=社区")) == {pneumonia}
    assert ids_of(platform.get("Condition?code:text=PNEUMONIA")) == {pneumonia}
    assert ids_of(platform.get("Condition?code:text=fever,社区获得性肺炎")) == {pneumonia, fever}
    assert ids_of(platform.get("Condition?code:text=肺炎")) == set()  # starts with, as strings do
    assert ids_of(platform.get("Condition?code=J18.9")) == {pneumonia, fever}
    assert ids_of(platform.get("Patient?gender:text=female")) == set()  # a code has no text

    from sqlalchemy import delete

    from referral_service.domain.fhir_store import StringIndex
    from referral_service.extensions import database

    with client.application.app_context(), database.unit_of_work() as session:
        session.execute(delete(StringIndex).where(StringIndex.param == "code:text"))  # as stored before
    assert ids_of(platform.get("Condition?code:text=社区")) == set()
    result = client.application.test_cli_runner().invoke(args=["fhir-reindex", "--batch", "2"])
    assert result.exit_code == 0, result.output
    assert ids_of(platform.get("Condition?code:text=社区")) == {pneumonia}
    number = world.fang["identifier"][0]["value"]
    assert ids_of(platform.get(f"Patient?identifier={number}")) == world.ids("fang")  # the rest kept


def test_sort_by_string_token_and_reference_parameters_and_several_keys(platform: Fhir, world: World) -> None:
    """HAPI sorts by any string, token or reference parameter, and by several keys; we answered
    `_sort=family` with 400. Strings sort by their normalised value (case and accents ignored) in
    code-point order on every database; a resource without a value comes last either way; ties go
    by the next key, then by age; next links keep the order."""
    anonymous_body = patient(None)
    del anonymous_body["name"], anonymous_body["gender"]
    anonymous = _created(platform.post("Patient", anonymous_body))["id"]
    ming, fang, na, jose = (world.ming["id"], world.fang["id"], world.na["id"], world.jose["id"])
    # family: müller (normalised "muller") < 李 < 王 (王芳 and 王小明 tie: oldest first)
    cases = {
        "family": [jose, na, fang, ming, anonymous],
        "-family": [ming, fang, na, jose, anonymous],
        "family,given": [jose, na, ming, fang, anonymous],  # 小 (U+5C0F) before 芳 (U+82B3)
        "family,-birthdate": [jose, na, fang, ming, anonymous],
        "-family,given": [ming, fang, na, jose, anonymous],
        "gender,birthdate": [fang, na, ming, jose, anonymous],  # female before male
        "-gender,-birthdate": [ming, jose, na, fang, anonymous],  # jose: no birthDate, last of the men
        "gender,-_id": [*sorted([fang, na], reverse=True), *sorted([ming, jose], reverse=True), anonymous],
    }
    for sort, expected in cases.items():
        assert ordered_ids(platform.get(f"Patient?_sort={sort}")) == expected, sort
        assert paged_ids(platform, f"Patient?_sort={sort}") == expected, sort
    by_subject = sorted([(world.fang["id"], world.enc_jan["id"]), (world.ming["id"], world.enc_feb["id"])])
    assert ordered_ids(platform.get("Encounter?_sort=subject")) == [e for _, e in by_subject]
    assert ordered_ids(platform.get("Encounter?_sort=-subject")) == [e for _, e in reversed(by_subject)]
    for bad in ("shoe-size", "family,family", "family,-family", "--family", "", "family,", "_pk",
                "a,b,c,d,e,f", "given,family,gender,birthdate,_id,_lastUpdated"):
        assert_400(platform.get(f"Patient?_sort={bad}"))


def test_sorted_paging_visits_each_once(platform: Fhir) -> None:
    ids = _bulk_patients(platform, 23)
    for sort in ("_id", "-_id", "_lastUpdated", "-_lastUpdated", None):
        url: str | None = "Patient?_count=5" + (f"&_sort={sort}" if sort else "")
        seen: list[str] = []
        pages = 0
        while url:
            response = (
                platform.get(url) if pages == 0 else platform.client.get(url, headers=platform._headers())
            )
            seen += ordered_ids(response)
            pages += 1
            url = next((lk["url"] for lk in response.json["link"] if lk["relation"] == "next"), None)
        assert pages == 5, sort
        assert sorted(seen) == sorted(ids), sort
        if sort in ("_id", "-_id"):
            assert seen == sorted(ids, reverse=sort == "-_id")
        elif sort is None:
            assert seen == ids  # creation order


def test_include_and_revinclude(platform: Fhir, world: World) -> None:
    response = platform.get("Encounter?status=finished&_include=Encounter:subject")
    assert ids_of(response) == world.ids("enc_jan")
    assert ids_of(response, "include") == world.ids("fang")
    typed = platform.get("Encounter?_include=Encounter:subject:Patient")
    assert ids_of(typed, "include") == world.ids("fang", "ming")
    assert ids_of(platform.get("Encounter?_include=Encounter:subject:Group"), "include") == set()
    rev = platform.get(f"Patient?_id={world.fang['id']},{world.na['id']}&_revinclude=Encounter:subject")
    assert ids_of(rev) == world.ids("fang", "na")
    assert ids_of(rev, "include") == world.ids("enc_jan")
    includes = [e for e in rev.json["entry"] if e["search"]["mode"] == "include"]
    assert includes[0]["fullUrl"].endswith(f"/fhir/Encounter/{world.enc_jan['id']}")
    assert rev.json["total"] == 2  # includes are not counted
    assert_400(platform.get("Encounter?_include=Encounter:status"))
    assert_400(platform.get("Encounter?_include=Patient:general-practitioner"))
    assert_400(platform.get("Patient?_revinclude=Encounter"))


def test_wildcard_includes_are_400_saying_unsupported(platform: Fhir, world: World) -> None:
    """_include=* is not supported: 400 saying so, and the CapabilityStatement does not claim it."""
    for query in ("Encounter?_include=*", "Encounter?_include=Encounter:*",
                  "Encounter?_include:recurse=Encounter:subject",
                  "Patient?_revinclude=*"):
        response = platform.get(query)
        assert_400(response)
        assert "not supported" in response.json["issue"][0]["diagnostics"], query
    capability = platform.get("metadata").json
    for resource in capability["rest"][0]["resource"]:
        for claimed in resource.get("searchInclude", []) + resource.get("searchRevInclude", []):
            assert "*" not in claimed and claimed.count(":") == 1, (resource["type"], claimed)


def test_iterating_includes_follow_the_included_resources(platform: Fhir, world: World) -> None:
    """HAPI follows `_include:iterate` and `_revinclude:iterate` from what was included; we answered
    400 for :iterate from another type than the one searched, and a `_revinclude` of a reference
    that cannot point at the searched type silently included nothing (now 400)."""
    enc_jan, fang = world.enc_jan["id"], world.fang["id"]
    pulse = platform.post("Observation", vital("8867-4", 72, "/min", f"Encounter/{enc_jan}",
                                               f"Patient/{fang}"))
    assert pulse.status_code == 201, pulse.json
    same_type = platform.get("Encounter?status=finished&_include:iterate=Encounter:subject")
    assert ids_of(same_type, "include") == world.ids("fang")
    # Encounter -> its Patient -> her general practitioner (Organization th-01)
    two_levels = platform.get(
        "Encounter?status=finished&_include=Encounter:subject&_include:iterate=Patient:general-practitioner")
    assert ids_of(two_levels, "match") == {enc_jan}
    assert ids_of(two_levels, "include") == {fang, "th-01"}
    assert ids_of(platform.get("Encounter?status=finished&_include=Encounter:subject"), "include") == {fang}
    # Patient <- her Encounters <- their Observations
    down = platform.get(
        f"Patient?_id={fang}&_revinclude=Encounter:subject&_revinclude:iterate=Observation:encounter")
    assert ids_of(down, "include") == {enc_jan, pulse.json["id"]}
    mixed = platform.get(f"Observation?_id={pulse.json['id']}&_include=Observation:encounter"
                         "&_revinclude:iterate=Encounter:subject:Patient&_include:iterate=Encounter:subject")
    assert ids_of(mixed, "include") == {enc_jan, fang}
    assert_400(platform.get("Patient?_revinclude=Observation:encounter"))  # refers to Encounters only
    assert_400(platform.get("Patient?_revinclude=Encounter:subject:Group"))
    assert_400(platform.get("Encounter?_include=Encounter:service-provider:Patient"))


def test_revinclude_over_its_limit_says_so(
    platform: Fhir, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from referral_service.fhir import store

    query = f"Patient?_id={world.fang['id']}&_revinclude=Encounter:subject"
    whole = platform.get(query).json
    assert not [e for e in whole["entry"] if e["search"]["mode"] == "outcome"]
    monkeypatch.setattr(store, "REVINCLUDE_LIMIT", 0)
    cut = platform.get(query)
    assert ids_of(cut) == world.ids("fang") and ids_of(cut, "include") == set()
    [outcome] = [e["resource"] for e in cut.json["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome["issue"][0]["severity"] == "warning"
    assert "Encounter:subject matched more than 0" in outcome["issue"][0]["diagnostics"]


def test_summary_total_and_post_search(platform: Fhir, world: World) -> None:
    counted = platform.get("Patient?family=王&_summary=count")
    assert counted.status_code == 200
    assert counted.json["total"] == 2
    assert "entry" not in counted.json
    assert not [link for link in counted.json["link"] if link["relation"] == "next"]
    no_total = platform.get("Patient?_total=none")
    assert "total" not in no_total.json
    assert len(no_total.json["entry"]) == 4
    assert platform.get("Patient?_total=accurate").json["total"] == 4
    assert_400(platform.get("Patient?_summary=banana"))
    for summary in ("true", "text", "data", "false"):  # (what each keeps: test_fhir_subset)
        answered = platform.get(f"Patient?family=王&_summary={summary}")
        assert answered.status_code == 200, answered.json
        assert answered.json["total"] == 2 and len(answered.json["entry"]) == 2
    assert_400(platform.get("Patient?_total=roughly"))

    # post search with form body
    response = platform.client.post(
        "/fhir/Patient/_search",
        data={"family": "王", "gender": "male"},
        headers={"Authorization": f"Bearer {platform.token}"},
    )
    assert ids_of(response) == world.ids("ming")
    # query string and body combine (AND)
    combined = platform.client.post(
        "/fhir/Patient/_search?family=王",
        data={"gender": "female"},
        headers={"Authorization": f"Bearer {platform.token}"},
    )
    assert ids_of(combined) == world.ids("fang")
    bad = platform.client.post(
        "/fhir/Patient/_search",
        data={"colour": "blue"},
        headers={"Authorization": f"Bearer {platform.token}"},
    )
    assert_400(bad)


def test_post_search_takes_its_parameters_as_a_form_only(platform: Fhir, world: World) -> None:
    """A JSON body was ignored: the search ran without the criteria it held and answered every patient;
    so did a form that is not UTF-8."""
    for body, mimetype in (('{"family": "王"}', "application/fhir+json"), ("family=王", "text/plain")):
        response = platform.client.post(
            "/fhir/Patient/_search", data=body.encode(), content_type=mimetype,
            headers={"Authorization": f"Bearer {platform.token}"},
        )
        assert response.status_code == 415, response.json
        assert response.json["resourceType"] == "OperationOutcome"
        assert "x-www-form-urlencoded" in response.json["issue"][0]["diagnostics"]
    for body in (b"family=\xe7\x8e&gender=male", b"family=%E7%8E&gender=male"):  # not UTF-8
        # Werkzeug dropped the whole form: the search ran without criteria and answered every patient.
        broken = platform.client.post(
            "/fhir/Patient/_search", data=body, content_type="application/x-www-form-urlencoded",
            headers={"Authorization": f"Bearer {platform.token}"},
        )
        assert broken.status_code == 400, broken.json
        assert broken.json["resourceType"] == "OperationOutcome"
        assert "UTF-8" in broken.json["issue"][0]["diagnostics"]
    bare = platform.client.post(  # no body at all: the query string's parameters
        "/fhir/Patient/_search?family=王", headers={"Authorization": f"Bearer {platform.token}"}
    )
    assert ids_of(bare) == world.ids("ming") | world.ids("fang")


BAD_QUERIES = [
    "Patient?colour=blue",
    "Patient?name:fuzzy=wang",
    "Patient?birthdate:exact=1990",
    "Patient?gender:contains=f",
    "Encounter?subject:Spaceship=1",
    "Patient?family=",
    "Encounter?_include=Nothing:subject",
    "Encounter?_include=Encounter:subject:Nothing",
    "Patient?_id:not=x",
    "Patient?_lastUpdated:missing=true",
    "Patient?_sort=_id,colour",
    "Patient?name=a%00b",
    "Patient?_id=%00",
    "Patient?_count=",
]


def test_unknown_or_malformed_parameters_are_400(platform: Fhir, world: World) -> None:
    for query in BAD_QUERIES:
        response = platform.get(query)
        assert response.status_code == 400, query
        assert response.json["resourceType"] == "OperationOutcome"
        assert response.json["issue"][0]["severity"] == "error"


def test_links_are_absolute_and_repeat_the_query(platform: Fhir, world: World) -> None:
    response = platform.get("Patient?family=王&_count=1")
    links = {link["relation"]: link["url"] for link in response.json["link"]}
    assert links["self"].startswith("http://localhost/fhir/Patient?")
    assert links["next"].startswith("http://localhost/fhir/Patient?")
    query = dict(parse_qsl(urlsplit(links["next"]).query))
    assert query["family"] == "王"
    assert query["_count"] == "1"
    second = platform.client.get(links["next"], headers=platform._headers())
    assert len(second.json["entry"]) == 1
    assert "next" not in {link["relation"] for link in second.json["link"]}
    # the self link of a later page names that page
    second_self = next(link["url"] for link in second.json["link"] if link["relation"] == "self")
    assert "_cursor=" in second_self
    again = platform.client.get(second_self, headers=platform._headers())
    assert ordered_ids(again) == ordered_ids(second)


# ----------------------------------------------------------------------------------------- paging


def test_paging_with_inserts_between_pages(platform: Fhir) -> None:
    """250 Patients paged by 20 while new ones arrive: each old one exactly once, no empty last page."""
    before = set(_bulk_patients(platform, 250))
    response = platform.get("Patient?_count=20")
    seen: list[str] = []
    pages = 0
    inserted = 0
    while True:
        assert response.status_code == 200, response.json
        entries = response.json.get("entry", [])
        assert entries, "an empty page was served"
        seen += [e["resource"]["id"] for e in entries]
        pages += 1
        nxt = next((lk["url"] for lk in response.json["link"] if lk["relation"] == "next"), None)
        if nxt is None:
            break
        assert nxt.startswith("http://localhost/fhir/Patient?")
        if pages <= 3:  # new Patients between page fetches
            _created(platform.post("Patient", patient(None, family="新", given=str(pages))))
            inserted += 1
        response = platform.client.get(nxt, headers=platform._headers())
    assert len(seen) == len(set(seen))
    assert before <= set(seen)
    assert len(seen) == 250 + inserted
    assert pages == (250 + inserted + 19) // 20


def test_paging_when_the_last_page_is_exactly_full(platform: Fhir) -> None:
    _bulk_patients(platform, 40)
    first = platform.get("Patient?_count=20")
    nxt = next(lk["url"] for lk in first.json["link"] if lk["relation"] == "next")
    second = platform.client.get(nxt, headers=platform._headers())
    assert len(second.json["entry"]) == 20
    assert "next" not in {lk["relation"] for lk in second.json["link"]}


TAMPERINGS: list[Callable[[str], str]] = [
    lambda c: c[:-2] + ("AA" if c[-2:] != "AA" else "BB"),
    lambda c: c[1:],
    lambda c: "not-a-cursor",
    lambda c: "%%%",
    lambda c: c + "x",
    lambda c: "eyJ2IjoiYSIsInBrIjoxfQ",  # a hand-made {"v":"a","pk":1}
    lambda c: "eyJ2Ijoibm90IGEgZGF0ZSIsInBrIjoxfQ",  # {"v":"not a date","pk":1}
    lambda c: c.replace("Q", "R", 1) if "Q" in c else c.replace("A", "B", 1),
]


def test_tampered_cursor_is_400(platform: Fhir) -> None:
    _bulk_patients(platform, 5)
    first = platform.get("Patient?_count=2&_sort=_lastUpdated")
    nxt = next(lk["url"] for lk in first.json["link"] if lk["relation"] == "next")
    cursor = dict(parse_qsl(urlsplit(nxt).query))["_cursor"]
    assert platform.get(f"Patient?_count=2&_sort=_lastUpdated&_cursor={cursor}").status_code == 200
    for tamper in TAMPERINGS:
        changed = tamper(cursor)
        assert changed != cursor
        response = platform.get(f"Patient?_count=2&_sort=_lastUpdated&_cursor={quote(changed)}")
        assert response.status_code == 400, changed
        assert response.json["resourceType"] == "OperationOutcome"


def test_cursor_from_another_sort_is_400(platform: Fhir) -> None:
    _bulk_patients(platform, 5)
    first = platform.get("Patient?_count=2&_sort=_id")
    nxt = next(lk["url"] for lk in first.json["link"] if lk["relation"] == "next")
    cursor = dict(parse_qsl(urlsplit(nxt).query))["_cursor"]
    assert_400(platform.get(f"Patient?_count=2&_sort=_lastUpdated&_cursor={cursor}"))


def test_history_cursor_tampered_is_400(platform: Fhir, world: World) -> None:
    response = platform.get("Patient/_history?_count=1")
    nxt = next(lk["url"] for lk in response.json["link"] if lk["relation"] == "next")
    cursor = dict(parse_qsl(urlsplit(nxt).query))["_cursor"]
    assert platform.client.get(nxt, headers=platform._headers()).status_code == 200
    assert_400(platform.get(f"Patient/_history?_count=1&_cursor={cursor[:-3]}"))
    assert_400(platform.get("Patient/_history?_count=1&_cursor=eyJ0IjoiMjAyNC0wMS0wMSIsInBrIjoxLCJ2IjoxfQ"))


def test_index_values_with_array_syntax_round_trip(platform: Fhir) -> None:
    """Quotes, backslashes, commas, braces and NULL-like words reach the indexes unchanged."""
    family = 'O"Bri\\en,{x} NULL'
    created = platform.post("Patient", patient(None, family=family, given="}{"))
    assert created.status_code == 201, created.json
    escaped = family.replace("\\", "\\\\").replace(",", "\\,")  # FHIR search escapes
    found = platform.get("Patient", query_string={"family:exact": escaped})
    assert ids_of(found) == {created.json["id"]}
    assert ids_of(platform.get("Patient", query_string={"family": "NULL"})) == set()
