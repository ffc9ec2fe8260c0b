"""Chained parameters up to three links deep and `_has` nested two levels, on both engines, as HAPI
answers them (FHIR search.html#chaining, #has): every link a reference of the type reached, a deleted
or hidden resource at any link matching nothing, with sorting, paging and `_summary=count`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest
from flask.testing import FlaskClient

from referral_service.domain.resident_id import generate
from referral_service.extensions import database
from referral_service.fhir.store import ResourceStore
from tests.functional.fhir_helpers import (
    Fhir,
    ordered_ids,
    organization,
    paged_ids,
    patient,
    token_for,
    vital,
)

ORG_ID = "urn:oid:1.2.156.112604"
V3 = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


@dataclass
class World:
    """ch-01 县人民医院 with its townships th-01 测试卫生院 and th-02 第二卫生院 (partOf ch-01), and
    city-h 市医院 (part of nothing). 王芳 (female, 1990, GP and managing organisation th-01) had a
    finished visit at th-01 where her pulse (8867-4) was taken on 2024-01-05; 王小明 (male, 1985, GP
    th-02) is in a visit at th-02 where his temperature (8310-5) was taken on 2024-02-10. The platform
    wrote everything; the township client (th-01) sees 王芳's records, not 王小明's."""

    platform: Fhir
    township: Fhir
    fang: str
    ming: str
    enc_fang: str
    enc_ming: str
    pulse: str
    temperature: str


def _created(response: Any) -> str:
    assert response.status_code == 201, response.json
    return str(response.json["id"])


UNITS = {"8867-4": "/min", "8310-5": "Cel", "8480-6": "mm[Hg]", "2708-6": "%"}


def _observation(code: str, value: float, encounter: str, subject: str, when: str) -> dict[str, Any]:
    body = vital(code, value, UNITS[code], f"Encounter/{encounter}", f"Patient/{subject}")
    body["effectiveDateTime"] = when
    return body


@pytest.fixture
def world(client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]) -> World:
    def fhir(client_id: str, org: str) -> Fhir:
        cid, secret = make_api_client(client_id, "system/*.cruds", org)
        return Fhir(client, token_for(client, cid, secret))

    platform = fhir("county-platform", "qs-health-commission")
    for org_id, name, level, part_of in (
        ("ch-01", "县人民医院", "county", None),
        ("th-01", "测试卫生院", "township", "ch-01"),
        ("th-02", "第二卫生院", "township", "ch-01"),
        ("city-h", "市医院", "city", None),
    ):
        body = organization(org_id, level=level, name=name) | {
            "identifier": [{"system": ORG_ID, "value": f"org-{org_id}"}]
        }
        if part_of:
            body["partOf"] = {"reference": f"Organization/{part_of}"}
        assert platform.put(f"Organization/{org_id}", body).status_code == 201
    township = fhir("township-his", "th-01")

    fang_body = patient(generate("620421", date(1990, 3, 7), "female", 1), gp="th-01")
    fang_body["managingOrganization"] = {"reference": "Organization/th-01"}
    fang = _created(platform.post("Patient", fang_body))
    ming = _created(platform.post("Patient", patient(
        generate("620421", date(1985, 5, 5), "male", 2), given="小明", gender="male", birth="1985-05-05",
        gp="th-02")))

    def encounter(subject: str, provider: str, status: str, start: str) -> str:
        return _created(platform.post("Encounter", {
            "resourceType": "Encounter", "status": status, "class": {"system": V3, "code": "AMB"},
            "subject": {"reference": f"Patient/{subject}"},
            "serviceProvider": {"reference": f"Organization/{provider}"}, "period": {"start": start},
        }))

    enc_fang = encounter(fang, "th-01", "finished", "2024-01-05")
    enc_ming = encounter(ming, "th-02", "in-progress", "2024-02-10")
    pulse = _created(platform.post("Observation", _observation(
        "8867-4", 72, enc_fang, fang, "2024-01-05T09:00:00+08:00")))
    temperature = _created(platform.post("Observation", _observation(
        "8310-5", 37, enc_ming, ming, "2024-02-10T09:00:00+08:00")))
    return World(platform, township, fang, ming, enc_fang, enc_ming, pulse, temperature)


def ids_of(response: Any) -> set[str]:
    return set(ordered_ids(response))


def assert_400(response: Any, says: str) -> None:
    assert response.status_code == 400, response.json
    assert response.json["resourceType"] == "OperationOutcome"
    assert says in response.json["issue"][0]["diagnostics"], response.json


def delete_stored(res_type: str, res_id: str) -> None:
    """Delete a resource that others still refer to (the API refuses that, 409): as a resource
    stored before the check, or removed by an administrator, would leave its referrers."""
    with database.unit_of_work() as session:
        store = ResourceStore(session)
        existing = store.current(res_type, res_id, for_update=True)
        assert existing is not None
        store.delete(existing)


# ------------------------------------------------------------------------------------------ chains


def test_chains_of_two_and_three_links(world: World) -> None:
    """Each link is a reference parameter of the type the previous one reached; the last parameter
    is of any type, with its modifiers. They were 400 (one link only)."""
    p, pulse, temperature = world.platform, world.pulse, world.temperature
    # two links: Observation -> Encounter -> Organization
    assert ids_of(p.get("Observation?encounter.service-provider.name=测试")) == {pulse}
    assert ids_of(p.get("Observation?encounter.service-provider.name=第二")) == {temperature}
    assert ids_of(p.get("Observation?encounter.service-provider.name:exact=第二卫生院")) == {temperature}
    assert ids_of(p.get("Observation?encounter.service-provider.name:exact=第二")) == set()
    assert ids_of(p.get("Observation?encounter.service-provider.name:contains=卫生")) == {pulse, temperature}
    assert ids_of(p.get(f"Observation?encounter.service-provider.identifier={ORG_ID}|org-th-02")) == {
        temperature}
    assert ids_of(p.get("Observation?encounter.service-provider._id=th-01")) == {pulse}
    assert ids_of(p.get("Observation?encounter.patient.birthdate=lt1989")) == {temperature}
    assert ids_of(p.get("Observation?encounter.patient.gender:not=female")) == {temperature}
    assert ids_of(p.get("Observation?encounter.patient.general-practitioner=Organization/th-02")) == {
        temperature}
    assert ids_of(p.get("Observation?encounter.subject:Patient.general-practitioner:Organization=th-01")) == {
        pulse}
    assert ids_of(p.get("Observation?encounter.patient._lastUpdated=gt2000")) == {pulse, temperature}
    # `:Type` on a link whose reference may point at several types
    assert ids_of(p.get("Observation?subject:Patient.organization.name=测试")) == {pulse}
    gp_of = "Observation?patient.general-practitioner:Organization"
    assert ids_of(p.get(f"{gp_of}.identifier={ORG_ID}|org-th-01")) == {pulse}
    # unambiguous without it: of the types a GP may be, only Organization has `partof`
    assert ids_of(p.get("Observation?patient.general-practitioner.partof._id=ch-01")) == {pulse, temperature}
    # the last link searches every type that has the parameter, as a one-link chain does
    assert ids_of(p.get("Observation?encounter.subject.name=小明")) == {temperature}
    # three links: Observation -> Encounter -> Organization -> Organization
    assert ids_of(p.get("Observation?encounter.service-provider.partof.name=县人民")) == {pulse, temperature}
    assert ids_of(p.get("Observation?encounter.service-provider.partof.name=市医院")) == set()
    assert ids_of(p.get("Observation?patient.organization.partof._id=ch-01")) == {pulse}
    assert ids_of(p.get("Encounter?patient.general-practitioner:Organization.partof.name=县人民")) == {
        world.enc_fang, world.enc_ming}
    # combined with other criteria (AND) and OR-ed values
    assert ids_of(p.get("Observation?encounter.service-provider.partof.name=县人民&code=8310-5")) == {
        temperature}
    assert ids_of(p.get("Observation?encounter.service-provider._id=th-02,city-h")) == {temperature}


def test_chains_that_are_ambiguous_too_deep_or_wrong_are_400(world: World) -> None:
    p = world.platform
    # Observation.subject may be a Patient, a PractitionerRole or an EpisodeOfCare with `organization`
    assert_400(p.get("Observation?subject.organization.name=测试"), "name the type")
    assert_400(p.get("Observation?subject:Patient.organization.partof.partof.name=x"), "at most 3 links")
    assert_400(p.get("Observation?encounter.service-provider.partof.partof.name=x"), "at most 3 links")
    for bad, says in (
        ("Observation?encounter.service-provider:Patient.name=x", "does not refer to"),
        ("Observation?encounter.service-provider:AuditEvent.date=2024", "does not refer to"),
        ("Observation?encounter.status.name=x", "reference parameter 'status'"),
        ("Observation?encounter.patient.shoe-size.name=x", "reference parameter 'shoe-size'"),
        ("Observation?encounter.patient.shoe-size=9", "search parameter 'shoe-size'"),
        ("Observation?encounter.patient.name:missing=true", ":missing"),
        ("Observation?encounter.patient.name:sounds=x", "modifier :sounds"),
        ("Observation?encounter.patient.=x", "a chain ends"),
        ("Observation?encounter..name=x", "a chain ends"),
        ("Observation?subject:.code=x", "names no type"),  # was taken as no type named: 200
        ("Observation?encounter.patient:.name=x", "names no type"),
        ("Observation?encounter.patient._has:Observation:patient:code=x", "not _has"),
    ):
        assert_400(p.get(bad), says)


def test_a_deleted_resource_at_any_link_matches_nothing(world: World) -> None:
    p, pulse, temperature = world.platform, world.pulse, world.temperature
    three = "Observation?encounter.service-provider.partof.name=县人民"
    assert ids_of(p.get(three)) == {pulse, temperature}
    assert ids_of(p.get("Observation?encounter.service-provider.partof._id=ch-01")) == {pulse, temperature}
    delete_stored("Organization", "ch-01")  # the third link
    assert ids_of(p.get(three)) == set()
    # (its index rows went with it; its id did not: the deletion itself must stop the match)
    assert ids_of(p.get("Observation?encounter.service-provider.partof._id=ch-01")) == set()
    assert ids_of(p.get("Observation?encounter.service-provider.name=测试")) == {pulse}
    delete_stored("Organization", "th-01")  # the second link
    assert ids_of(p.get("Observation?encounter.service-provider.name=测试")) == set()
    assert ids_of(p.get("Observation?encounter.patient.name=王")) == {pulse, temperature}
    assert ids_of(p.get("Observation?encounter.service-provider._id=th-01")) == set()
    delete_stored("Encounter", world.enc_ming)  # the first link
    assert ids_of(p.get("Observation?encounter.patient.name=王")) == {pulse}
    assert ids_of(p.get(f"Observation?encounter._id={world.enc_ming}")) == set()
    assert ids_of(p.get(f"Observation?encounter={world.enc_ming}")) == {temperature}  # the reference itself
    assert ids_of(p.get("Observation?encounter.service-provider.name=第二")) == set()


def test_chains_sort_page_and_count(world: World) -> None:
    p, pulse, temperature = world.platform, world.pulse, world.temperature
    three = "Observation?encounter.service-provider.partof.name=县人民"
    assert ordered_ids(p.get(f"{three}&_sort=date")) == [pulse, temperature]
    assert ordered_ids(p.get(f"{three}&_sort=-date")) == [temperature, pulse]
    assert paged_ids(p, f"{three}&_sort=-date") == [temperature, pulse]
    assert paged_ids(p, three) == [pulse, temperature]
    assert paged_ids(p, "Observation?encounter.service-provider.name=第二") == [temperature]
    counted = p.get(f"{three}&_summary=count")
    assert counted.status_code == 200 and counted.json["total"] == 2 and "entry" not in counted.json
    counted = p.get("Observation?encounter.service-provider.name=测试&_summary=count")
    assert counted.json["total"] == 1


# ------------------------------------------------------------------------------------------- _has


def test_has_nested_two_levels_and_with_a_chained_parameter(world: World) -> None:
    """`_has:Encounter:patient:_has:Observation:encounter:code=...`: the patients with an encounter
    that such an observation refers to. It was 400 (one level)."""
    p, fang, ming = world.platform, world.fang, world.ming
    nested = "Patient?_has:Encounter:patient:_has:Observation:encounter:code"
    assert ids_of(p.get(f"{nested}=8867-4")) == {fang}
    assert ids_of(p.get(f"{nested}=8310-5")) == {ming}
    assert ids_of(p.get(f"{nested}=8867-4,8310-5")) == {fang, ming}
    assert ids_of(p.get(f"{nested}=9279-1")) == set()
    assert ids_of(p.get(f"{nested}=8867-4,8310-5&gender=male")) == {ming}
    assert ids_of(p.get("Patient?_has:Encounter:patient:_has:Observation:encounter:value-quantity=gt50")) == {
        fang}
    assert ids_of(p.get("Organization?_has:Encounter:service-provider:_has:Observation:encounter:code=8310-5")
                  ) == {"th-02"}
    # the final parameter chained, with a type on the link or not
    assert ids_of(p.get("Patient?_has:Observation:patient:encounter.service-provider.name=第二")) == {ming}
    assert ids_of(p.get("Patient?_has:Observation:patient:encounter.status=finished")) == {fang}
    assert ids_of(p.get("Organization?_has:Patient:general-practitioner:_has:Encounter:patient:"
                        "service-provider.partof._id=ch-01")) == {"th-01", "th-02"}
    assert ids_of(p.get("Encounter?_has:Observation:encounter:subject:Patient.gender=male")) == {
        world.enc_ming}
    # sorted, paged one a page (the next links keep the clause), counted
    assert ordered_ids(p.get(f"{nested}=8867-4,8310-5&_sort=birthdate")) == [ming, fang]
    assert paged_ids(p, f"{nested}=8867-4,8310-5&_sort=-birthdate") == [fang, ming]
    assert paged_ids(p, f"{nested}=8867-4,8310-5") == [fang, ming]
    counted = p.get(f"{nested}=8867-4,8310-5&_summary=count")
    assert counted.status_code == 200 and counted.json["total"] == 2 and "entry" not in counted.json
    # a deleted resource at either level matches nothing
    assert p.delete(f"Observation/{world.pulse}").status_code == 204
    assert ids_of(p.get(f"{nested}=8867-4,8310-5")) == {ming}
    delete_stored("Encounter", world.enc_ming)  # its observation still refers to it
    assert ids_of(p.get(f"{nested}=8867-4,8310-5")) == set()
    assert ids_of(p.get("Patient?_has:Observation:patient:code=8310-5")) == {ming}


def test_has_that_is_too_deep_or_wrong_is_400(world: World) -> None:
    p = world.platform
    assert_400(p.get("Patient?_has:Encounter:patient:_has:Observation:encounter:_has:Observation:encounter:"
                     "code=x"), "at most 2 levels")
    for bad, says in (
        ("Patient?_has:Encounter:patient:_has=x", "expected _has:Type:reference:parameter"),
        ("Patient?_has:Encounter:patient:_has:Observation:encounter=x", "expected _has:Type:reference"),
        ("Patient?_has:Encounter:patient:_has:Observation:patient:code=x", "to Encounter"),
        ("Patient?_has:Encounter:patient:_hasx:Observation:encounter:code=x", "expected _has"),
        ("Patient?_has:Encounter:patient:_has:AuditEvent:patient:action=R", "AuditEvents"),
        ("Patient?_has:Observation:patient:subject.organization.name=x", "name the type"),
    ):
        assert_400(p.get(bad), says)


# ----------------------------------------------------------------------------------------- access


def test_what_the_caller_may_not_see_at_any_level_matches_nothing(world: World) -> None:
    """The township (th-01) sees 王芳 and her records, not 王小明's. A resource it may not see, at
    any level of a `_has` or any link of a chain, makes nothing match: the answer does not tell that
    it exists (the platform, which sees everything, finds the same searches)."""
    p, t, fang = world.platform, world.township, world.fang
    nested = "Patient?_has:Encounter:patient:_has:Observation:encounter:code"
    assert ids_of(t.get(f"{nested}=8867-4")) == {fang}  # her own records: found
    assert ids_of(t.get(f"{nested}=8310-5")) == set()
    # the inner level hidden: an observation of 王小明's recorded against 王芳's visit
    _created(p.post("Observation", _observation("8480-6", 120, world.enc_fang, world.ming,
                                                "2024-01-05T09:10:00+08:00")))
    assert ids_of(p.get(f"{nested}=8480-6")) == {fang}
    assert ids_of(t.get(f"Patient?_id={fang}")) == {fang}
    assert ids_of(t.get(f"Encounter?_id={world.enc_fang}")) == {world.enc_fang}
    assert ids_of(t.get(f"{nested}=8480-6")) == set()
    assert ids_of(p.get("Encounter?_has:Observation:encounter:code=8480-6")) == {world.enc_fang}
    assert ids_of(t.get("Encounter?_has:Observation:encounter:code=8480-6")) == set()
    # the middle level hidden: 王芳's observation recorded against 王小明's visit at th-02
    via = _created(p.post("Observation", _observation("2708-6", 98, world.enc_ming, fang,
                                                      "2024-02-10T09:10:00+08:00")))
    assert ids_of(t.get("Observation?code=2708-6")) == {via}  # hers: the township sees it
    deep = "Organization?_has:Encounter:service-provider:_has:Observation:encounter:code=2708-6"
    assert ids_of(p.get(deep)) == {"th-02"}
    assert ids_of(t.get(deep)) == set()
    assert ids_of(t.get("Patient?_has:Observation:patient:encounter.service-provider.name=第二")) == set()
    assert ids_of(p.get("Patient?_has:Observation:patient:encounter.service-provider.name=第二")) == {
        fang, world.ming}
    # chains: the hidden visit is a link the township's search does not pass through
    chain = "Observation?encounter.service-provider.name=第二"
    assert ids_of(p.get(chain)) == {world.temperature, via}
    assert ids_of(t.get(chain)) == set()
    assert ids_of(t.get("Observation?encounter.patient.gender=male")) == set()
    assert ids_of(t.get("Observation?encounter.service-provider.partof.name=县人民")) == {world.pulse}
    counted = t.get(f"{chain}&_summary=count")
    assert counted.status_code == 200 and counted.json["total"] == 0


def test_a_statement_is_not_shared_by_callers_whose_inner_levels_differ(
    world: World, client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]
) -> None:
    """Statements are cached by shape, access policy included. The county hospital and the insurance
    bureau see the same organisations and patients (the district's), but the bureau sees no
    encounters: the policy of the second level decides, and must be part of the statement's key."""
    insurer = organization("ins-01", level=None, kind="insurer", name="县医保局")
    assert world.platform.put("Organization/ins-01", insurer).status_code == 201

    def fhir(client_id: str, org: str) -> Fhir:
        cid, secret = make_api_client(client_id, "system/*.rs", org)
        return Fhir(client, token_for(client, cid, secret))

    county, bureau = fhir("county-his", "ch-01"), fhir("insurance-office", "ins-01")
    search = "Organization?_has:Patient:general-practitioner:_has:Encounter:patient:status=finished"
    for fhir_client in (county, bureau):
        assert ids_of(fhir_client.get(f"Patient?_id={world.fang}")) == {world.fang}
        assert ids_of(fhir_client.get("Organization?_has:Patient:general-practitioner:gender=female")) == {
            "th-01"}
    assert ids_of(county.get(search)) == {"th-01"}
    assert ids_of(bureau.get(search)) == set()
    assert ids_of(bureau.get(f"Encounter?_id={world.enc_fang}")) == set()
    assert ids_of(county.get(search)) == {"th-01"}


def test_the_deepest_chain_and_has_answer_a_client_with_an_access_policy(world: World) -> None:
    """A chain of three links whose last reference may point at any type, alone or under two levels
    of `_has`, as a township client (the access policy of every type looked through at every link):
    on SQLite these nested subqueries beyond its parser's stack (500 "parser stack overflow")."""
    t, fang = world.township, world.fang
    assert ids_of(t.get("Observation?encounter.patient.general-practitioner.name=测试")) == {world.pulse}
    assert ids_of(t.get("Observation?encounter.patient.general-practitioner.name=第二")) == set()
    assert ids_of(t.get("ClaimResponse?insurer:ExplanationOfBenefit.coverage:Coverage.payor.identifier=x")
                  ) == set()
    assert ids_of(t.get("Patient?_has:Encounter:patient:_has:Observation:encounter:"
                        "encounter.patient.general-practitioner.name=测试")) == {fang}
    assert ids_of(t.get("Organization?_has:Encounter:service-provider:_has:Observation:encounter:"
                        "encounter.service-provider.partof.name=县人民")) == {"th-01"}
    assert ids_of(world.platform.get("Patient?_has:Encounter:patient:_has:Observation:encounter:"
                                     "encounter.patient.general-practitioner.name=第二")) == {world.ming}
