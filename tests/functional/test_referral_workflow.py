"""The referral journey through FHIR, on both engines: 基层首诊、疑难上转、康复回家."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from referral_service.fhir.codes import (
    BASE,
    CAPABILITY_SYSTEM,
    DISCHARGE_DISPOSITION_SYSTEM,
    ICD10_SYSTEM,
    V3_ACT_CODE_SYSTEM,
)
from tests.functional.fhir_helpers import (
    RESIDENT_SAMPLE,
    Fhir,
    active_referral,
    every_stored_version_validates,
    organization,
    patient,
    token_for,
    visit_bundle,
)


def _hospital(org_id: str, capabilities: list[str]) -> dict[str, Any]:
    org = organization(org_id, level="county", name=org_id)
    org["type"] += [{"coding": [{"system": CAPABILITY_SYSTEM, "code": c}]} for c in capabilities]
    return org


@pytest.fixture
def county(client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]) -> dict[str, Fhir]:
    cid, secret = make_api_client("county-platform", "system/*.cruds", "qs-health-commission")
    platform = Fhir(client, token_for(client, cid, secret))
    for org in [
        organization("th-01"),
        organization("th-02"),
        _hospital("hosp", ["general"]),
        _hospital("mch", ["obstetrics", "paediatrics"]),
    ]:
        assert platform.put(f"Organization/{org['id']}", org).status_code == 201
    clients = {"platform": platform}
    for name, org in [("township-his", "th-01"), ("county-his", "hosp"), ("mch-his", "mch")]:
        cid, secret = make_api_client(name, "system/*.cruds", org)
        clients[name] = Fhir(client, token_for(client, cid, secret))
    return clients


def _one(fhir: Fhir, query: str) -> dict[str, Any]:
    bundle = fhir.get(query).json
    entries = [e for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
    assert len(entries) == 1, (query, bundle)
    return entries[0]["resource"]


def _first_visit(county: dict[str, Fhir]) -> tuple[str, str, dict[str, Any]]:
    clinic = county["township-his"]
    response = clinic.post("", visit_bundle("th-01"))
    assert response.status_code == 200, response.json
    locations = [e["response"]["location"] for e in response.json["entry"]]
    pid = locations[0].split("/")[1]
    eid = locations[1].split("/")[1]
    gr = _one(clinic, f"GuidanceResponse?subject=Patient/{pid}")
    return pid, eid, gr


def test_full_journey(county: dict[str, Fhir]) -> None:
    clinic, hospital = county["township-his"], county["county-his"]
    pid, _eid, gr = _first_visit(county)
    rules = [c["coding"][0]["code"] for c in gr["reasonCode"]]
    assert rules == ["news2-high", "news2-medium"]
    assert gr["moduleCanonical"].endswith("|2024.1")
    news2 = gr["contained"][0]
    assert gr["outputParameters"]["reference"] == "#news2"
    assert {p["name"]: p.get("valueInteger") for p in news2["parameter"]}["total"] == 10
    sr_id = gr["result"]["reference"].split("/")[1]
    sr = clinic.get(f"ServiceRequest/{sr_id}").json
    assert (sr["status"], sr["priority"], sr["performer"][0]["reference"]) == (
        "draft",
        "stat",
        "Organization/hosp",
    )
    assert sr["category"][0]["coding"][0]["code"] == "3457005"
    task = _one(clinic, f"Task?focus=ServiceRequest/{sr_id}")
    assert (task["status"], task["owner"]["reference"]) == ("draft", "Organization/hosp")

    # The clinician confirms: the referral is sent.
    assert clinic.put(f"ServiceRequest/{sr_id}", sr | {"status": "active"}).status_code == 200
    inbox = _one(hospital, "Task?owner=Organization/hosp&status=requested")
    assert inbox["id"] == task["id"]
    assert _one(clinic, f"EpisodeOfCare?patient=Patient/{pid}")["status"] == "active"

    # The county hospital accepts and admits.
    assert hospital.put(f"Task/{task['id']}", inbox | {"status": "accepted"}).status_code == 200
    admission = {
        "resourceType": "Encounter",
        "status": "in-progress",
        "class": {"system": V3_ACT_CODE_SYSTEM, "code": "IMP"},
        "subject": {"reference": f"Patient/{pid}"},
        "serviceProvider": {"reference": "Organization/hosp"},
        "basedOn": [{"reference": f"ServiceRequest/{sr_id}"}],
        "period": {"start": "2026-11-02T14:00:00+08:00"},
    }
    created = hospital.post("Encounter", admission)
    assert created.status_code == 201, created.json
    imp = created.json
    assert hospital.get(f"Task/{task['id']}").json["status"] == "in-progress"

    # Discharge home with a stroke diagnosis: down-referral to the township clinic.
    stroke = hospital.post(
        "Condition",
        {
            "resourceType": "Condition",
            "subject": {"reference": f"Patient/{pid}"},
            "encounter": {"reference": f"Encounter/{imp['id']}"},
            "code": {"coding": [{"system": ICD10_SYSTEM, "code": "I63.9"}]},
        },
    ).json
    discharged = imp | {
        "status": "finished",
        "period": {"start": "2026-11-02T14:00:00+08:00", "end": "2026-11-12T10:00:00+08:00"},
        "diagnosis": [{"condition": {"reference": f"Condition/{stroke['id']}"}}],
        "hospitalization": {
            "dischargeDisposition": {"coding": [{"system": DISCHARGE_DISPOSITION_SYSTEM, "code": "home"}]}
        },
    }
    assert hospital.put(f"Encounter/{imp['id']}", discharged).status_code == 200
    assert hospital.get(f"Task/{task['id']}").json["status"] == "completed"
    assert hospital.get(f"ServiceRequest/{sr_id}").json["status"] == "completed"
    # The rules propose the down-referral (DESIGN section 9): draft ServiceRequest, Task and CarePlan.
    down = _one(clinic, "ServiceRequest?code=down-referral&performer=Organization/th-01")
    assert down["status"] == "draft"
    assert down["basedOn"][0]["reference"] == f"ServiceRequest/{sr_id}"
    assert down["requester"]["reference"] == "Organization/hosp"
    gr = hospital.get(f"GuidanceResponse/gr-{imp['id']}").json
    assert gr["result"]["reference"] == f"ServiceRequest/{down['id']}"
    assert [c["coding"][0]["code"] for c in gr["reasonCode"]] == ["down-referral-dx"]
    down_task = _one(clinic, f"Task?focus=ServiceRequest/{down['id']}")
    assert (down_task["status"], down_task["owner"]["reference"]) == ("draft", "Organization/th-01")
    plan = _one(clinic, f"CarePlan?patient=Patient/{pid}")
    assert plan["status"] == "draft"
    assert [a["detail"]["scheduledPeriod"]["start"] for a in plan["activity"]] == [
        "2026-11-19",
        "2026-12-12",
        "2027-02-10",
    ]
    episode = _one(clinic, f"EpisodeOfCare?patient=Patient/{pid}")
    assert [r["reference"] for r in episode["referralRequest"]] == [
        f"ServiceRequest/{sr_id}",
        f"ServiceRequest/{down['id']}",
    ]

    # The hospital confirms: the down-referral is sent, its follow-ups planned.
    assert hospital.put(f"ServiceRequest/{down['id']}", down | {"status": "active"}).status_code == 200
    assert _one(clinic, "Task?owner=Organization/th-01&status=requested")["id"] == down_task["id"]
    assert clinic.get(f"CarePlan/{plan['id']}").json["status"] == "active"

    # The first follow-up visit at the clinic completes the first activity.
    assert clinic.post("Encounter", _follow_up_visit(pid, down["id"], "2026-11-19")).status_code == 201
    plan = clinic.get(f"CarePlan/{plan['id']}").json
    assert [a["detail"]["status"] for a in plan["activity"]] == ["completed", "scheduled", "scheduled"]
    # the clinic that follows the patient up has them: the down-referral's Task is under way
    assert clinic.get(f"Task/{down_task['id']}").json["status"] == "in-progress"
    assert every_stored_version_validates() > 20


def _follow_up_visit(pid: str, sr_id: str, day: str) -> dict[str, Any]:
    """A finished visit at th-01 on `day` (09:00-09:20 in Asia/Shanghai) `basedOn` the down-referral."""
    return {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": V3_ACT_CODE_SYSTEM, "code": "AMB"},
        "subject": {"reference": f"Patient/{pid}"},
        "serviceProvider": {"reference": "Organization/th-01"},
        "basedOn": [{"reference": f"ServiceRequest/{sr_id}"}],
        "period": {"start": f"{day}T09:00:00+08:00", "end": f"{day}T09:20:00+08:00"},
    }


def _missed_plans() -> list[str]:
    """The CarePlans whose follow-ups the monitoring counts as missed on 2027-06-01 (all of them are due)."""
    from datetime import date

    from referral_service.extensions import database
    from referral_service.services import indicators

    with database.unit_of_work() as db:
        return [m.care_plan_id for m in indicators.missed_follow_ups(db, date(2027, 6, 1))]


def _down_referral(county: dict[str, Fhir]) -> tuple[str, dict[str, Any]]:
    """A patient of th-01 admitted directly and discharged home with a stroke: (patient id, the proposed
    down-referral)."""
    platform, hospital = county["platform"], county["county-his"]
    pid = platform.post("Patient", patient(RESIDENT_SAMPLE, gp="th-01")).json["id"]
    stay = _stay(hospital, pid)
    return pid, hospital.get(f"ServiceRequest/ref-down-{stay['id']}").json


def test_a_down_referral_is_proposed_at_discharge_and_sent_when_the_hospital_confirms_it(
    county: dict[str, Fhir],
) -> None:
    """Finishing the IMP Encounter proposes (draft ServiceRequest, Task, CarePlan); a PUT of the
    ServiceRequest `active` by the hospital sends it: Task requested, CarePlan active."""
    clinic, hospital = county["township-his"], county["county-his"]
    pid, down = _down_referral(county)
    sr_id = down["id"]
    assert (down["status"], down["performer"][0]["reference"]) == ("draft", "Organization/th-01")
    task = _one(hospital, f"Task?focus=ServiceRequest/{sr_id}")
    assert (task["status"], task["owner"]["reference"]) == ("draft", "Organization/th-01")
    plan = hospital.get(f"CarePlan/cp-{sr_id}").json
    assert plan["status"] == "draft" and len(plan["activity"]) == 3
    assert _one(hospital, f"EpisodeOfCare?patient=Patient/{pid}")["status"] == "active"
    assert clinic.get("Task?owner=Organization/th-01&status=requested&_summary=count").json["total"] == 0

    # The clinic cannot send the hospital's proposal, and a visit on it records no follow-up yet.
    assert clinic.put(f"ServiceRequest/{sr_id}", down | {"status": "active"}).status_code == 403
    assert clinic.post("Encounter", _follow_up_visit(pid, sr_id, "2026-11-13")).status_code == 201
    assert hospital.get(f"CarePlan/cp-{sr_id}").json["meta"]["versionId"] == plan["meta"]["versionId"]

    # Monitoring of missed follow-ups ignores the proposal: they are no one's follow-ups yet.
    assert f"cp-{sr_id}" not in _missed_plans()

    confirmed = hospital.put(f"ServiceRequest/{sr_id}", down | {"status": "active"})
    assert confirmed.status_code == 200, confirmed.json
    assert f"cp-{sr_id}" in _missed_plans()
    task = hospital.get(f"Task/{task['id']}").json
    assert (task["status"], task["owner"]["reference"]) == ("requested", "Organization/th-01")
    plan = hospital.get(f"CarePlan/cp-{sr_id}").json
    assert plan["status"] == "active"
    assert [a["detail"]["status"] for a in plan["activity"]] == ["scheduled"] * 3

    # Sent: a recorded follow-up puts the Task under way and completes the first visit.
    assert clinic.post("Encounter", _follow_up_visit(pid, sr_id, "2026-11-19")).status_code == 201
    plan = clinic.get(f"CarePlan/cp-{sr_id}").json
    assert [a["detail"]["status"] for a in plan["activity"]] == ["completed", "scheduled", "scheduled"]
    assert clinic.get(f"Task/{task['id']}").json["status"] == "in-progress"
    assert every_stored_version_validates() > 10


def test_revoking_a_proposed_down_referral_needs_a_reason_and_cancels_task_and_plan(
    county: dict[str, Fhir],
) -> None:
    hospital = county["county-his"]
    _pid, down = _down_referral(county)
    sr_id = down["id"]
    refused = hospital.put(f"ServiceRequest/{sr_id}", down | {"status": "revoked"})
    assert refused.status_code == 422
    assert hospital.get(f"ServiceRequest/{sr_id}").json["meta"]["versionId"] == down["meta"]["versionId"]
    revoked = hospital.put(
        f"ServiceRequest/{sr_id}",
        down | {"status": "revoked", "note": [*down.get("note", []), {"text": "患者转往外地康复"}]},
    )
    assert revoked.status_code == 200, revoked.json
    task = _one(hospital, f"Task?focus=ServiceRequest/{sr_id}")
    assert (task["status"], task["statusReason"]["text"]) == ("cancelled", "患者转往外地康复")
    plan = hospital.get(f"CarePlan/cp-{sr_id}").json
    assert plan["status"] == "revoked"
    assert [a["detail"]["status"] for a in plan["activity"]] == ["cancelled"] * 3
    # A revoked proposal can no longer be sent.
    current = hospital.get(f"ServiceRequest/{sr_id}").json
    assert hospital.put(f"ServiceRequest/{sr_id}", current | {"status": "active"}).status_code == 409
    assert hospital.get(f"CarePlan/cp-{sr_id}").json["status"] == "revoked"
    assert _one(hospital, f"Task?focus=ServiceRequest/{sr_id}")["status"] == "cancelled"
    assert every_stored_version_validates() > 5


def _posted_referral(his: Fhir, pid: str, kind: str, requester: str, performer: str, *,
                     based_on: str | None = None) -> str:
    """A referral a HIS made itself and posts already `active` (DESIGN 9); returns its id."""
    body = active_referral(pid, kind, requester, performer, based_on=based_on, authored="2026-11-02")
    response = his.post("ServiceRequest", body)
    assert response.status_code == 201, response.json
    return str(response.json["id"])


def test_referrals_a_his_posts_along_a_based_on_chain_join_the_episode_of_its_root(
    county: dict[str, Fhir],
) -> None:
    """DESIGN 2 and 5: a root referral opens an episode and every referral `basedOn` one of it belongs
    to that episode, so the EpisodeOfCare lists the whole chain, in the order it was sent: here a
    clinic's up-referral, the county hospital's onward referral and the down-referral home."""
    platform, clinic, hospital = county["platform"], county["township-his"], county["county-his"]
    pid = platform.post("Patient", patient(RESIDENT_SAMPLE, gp="th-01")).json["id"]
    up = _posted_referral(clinic, pid, "up-referral", "th-01", "hosp")
    onward = _posted_referral(hospital, pid, "up-referral", "hosp", "mch", based_on=up)
    home = _posted_referral(county["mch-his"], pid, "down-referral", "mch", "th-01", based_on=onward)
    episode = _one(clinic, f"EpisodeOfCare?patient=Patient/{pid}")
    assert episode["id"] == f"eoc-{up}"
    assert [r["reference"] for r in episode["referralRequest"]] == [
        f"ServiceRequest/{up}", f"ServiceRequest/{onward}", f"ServiceRequest/{home}"
    ]
    # a down-referral with no earlier referral opens an episode of its own
    other = platform.post("Patient", patient("620421199003070080", gp="th-01")).json["id"]
    alone = _posted_referral(hospital, other, "down-referral", "hosp", "th-01")
    episode = _one(clinic, f"EpisodeOfCare?patient=Patient/{other}")
    assert [r["reference"] for r in episode["referralRequest"]] == [f"ServiceRequest/{alone}"]
    assert every_stored_version_validates() > 5


@pytest.mark.parametrize(
    ("change", "element"),
    [
        ({"performer": None}, "ServiceRequest.performer"),
        ({"performer": [{"display": "县医院"}]}, "ServiceRequest.performer"),
        ({"performer": [{"reference": "Patient/{pid}"}]}, "ServiceRequest.performer"),
        ({"requester": None}, "ServiceRequest.requester"),
        ({"requester": {"reference": "Patient/{pid}"}}, "ServiceRequest.requester"),
    ],
)
def test_an_active_referral_needs_its_referring_and_target_organisations(
    county: dict[str, Fhir], change: dict[str, Any], element: str
) -> None:
    """The Task that carries a referral is owned by its target and requested by the referrer, both
    Organizations: an active referral without them is 422 naming the ServiceRequest's element (not
    the Task the service would have built), and nothing is stored."""
    platform, clinic = county["platform"], county["township-his"]
    pid = platform.post("Patient", patient(RESIDENT_SAMPLE, gp="th-01")).json["id"]
    sr_id = _posted_referral(clinic, pid, "up-referral", "th-01", "hosp")
    body = clinic.get(f"ServiceRequest/{sr_id}").json
    del body["id"], body["meta"]
    for key, value in change.items():
        if value is None:
            body.pop(key)
        else:
            body[key] = json.loads(json.dumps(value).replace("{pid}", pid))
    response = clinic.post("ServiceRequest", body)
    assert response.status_code == 422, response.json
    assert response.json["issue"][0]["expression"] == [element]
    assert clinic.get(f"ServiceRequest?patient=Patient/{pid}&_summary=count").json["total"] == 1
    # a draft may lack them until it is sent
    draft = clinic.post("ServiceRequest", body | {"status": "draft"})
    assert draft.status_code == 201, draft.json
    sent = clinic.put(f"ServiceRequest/{draft.json['id']}", draft.json | {"status": "active"})
    assert sent.status_code in (403, 422), sent.json  # 403: no requester names the clinic as its author
    assert clinic.get(f"Task?focus=ServiceRequest/{draft.json['id']}&_summary=count").json["total"] == 0


def test_re_evaluating_a_visit_creates_no_duplicates(county: dict[str, Fhir]) -> None:
    clinic = county["township-his"]
    pid, eid, _ = _first_visit(county)
    enc = clinic.get(f"Encounter/{eid}").json
    assert clinic.put(f"Encounter/{eid}", enc).status_code == 200
    for kind in ("GuidanceResponse", "ServiceRequest", "Task"):
        assert clinic.get(f"{kind}?patient=Patient/{pid}&_summary=count").json["total"] == 1, kind
    assert every_stored_version_validates() > 10


def test_override_needs_a_reason_and_cancels_the_task(county: dict[str, Fhir]) -> None:
    clinic = county["township-his"]
    _, _, gr = _first_visit(county)
    sr_id = gr["result"]["reference"].split("/")[1]
    sr = clinic.get(f"ServiceRequest/{sr_id}").json
    refused = clinic.put(f"ServiceRequest/{sr_id}", sr | {"status": "revoked"})
    assert refused.status_code == 422
    assert clinic.get(f"ServiceRequest/{sr_id}").json["meta"]["versionId"] == sr["meta"]["versionId"]
    ok = clinic.put(
        f"ServiceRequest/{sr_id}", sr | {"status": "revoked", "note": [{"text": "家属要求在本院治疗"}]}
    )
    assert ok.status_code == 200
    assert _one(clinic, f"Task?focus=ServiceRequest/{sr_id}")["status"] == "cancelled"
    assert every_stored_version_validates() > 10


def test_rejection_then_retarget(county: dict[str, Fhir]) -> None:
    clinic, hospital, mch = county["township-his"], county["county-his"], county["mch-his"]
    _, _, gr = _first_visit(county)
    sr_id = gr["result"]["reference"].split("/")[1]
    sr = clinic.get(f"ServiceRequest/{sr_id}").json
    clinic.put(f"ServiceRequest/{sr_id}", sr | {"status": "active"})
    task = _one(hospital, "Task?owner=Organization/hosp&status=requested")
    assert hospital.put(f"Task/{task['id']}", task | {"status": "rejected"}).status_code == 422
    rejected = hospital.put(
        f"Task/{task['id']}", task | {"status": "rejected", "statusReason": {"text": "no ICU bed"}}
    )
    assert rejected.status_code == 200
    assert clinic.get(f"Task/{task['id']}").json["status"] == "rejected"
    sr = clinic.get(f"ServiceRequest/{sr_id}").json
    moved = clinic.put(
        f"ServiceRequest/{sr_id}",
        sr | {"performer": [{"reference": "Organization/mch"}], "note": [{"text": "县医院无床位，改转妇幼"}]},
    )
    assert moved.status_code == 200, moved.json
    assert (
        _one(mch, "Task?owner=Organization/mch&status=requested")["focus"]["reference"]
        == f"ServiceRequest/{sr_id}"
    )
    assert every_stored_version_validates() > 10


def test_forbidden_task_moves_change_nothing(county: dict[str, Fhir]) -> None:
    clinic, hospital = county["township-his"], county["county-his"]
    _, _, gr = _first_visit(county)
    sr_id = gr["result"]["reference"].split("/")[1]
    draft = _one(hospital, f"Task?focus=ServiceRequest/{sr_id}")
    early = hospital.put(f"Task/{draft['id']}", draft | {"status": "accepted"})  # not sent yet
    assert early.status_code == 409
    assert early.json["issue"][0]["diagnostics"] == (
        "Task cannot move from draft to accepted; allowed next states: none for Organization/hosp "
        "(the requester sends a draft Task by confirming its ServiceRequest)"
    )
    clinic.put(f"ServiceRequest/{sr_id}", clinic.get(f"ServiceRequest/{sr_id}").json | {"status": "active"})
    task = _one(hospital, "Task?owner=Organization/hosp&status=requested")
    not_owner = clinic.put(f"Task/{task['id']}", task | {"status": "accepted"})
    assert not_owner.status_code == 403
    skip = hospital.put(f"Task/{task['id']}", task | {"status": "completed"})
    assert skip.status_code == 409
    assert "allowed next states: accepted, received, rejected" in skip.json["issue"][0]["diagnostics"]
    assert hospital.get(f"Task/{task['id']}").json["meta"]["versionId"] == task["meta"]["versionId"]


def test_treat_here_when_nothing_matches(county: dict[str, Fhir]) -> None:
    clinic = county["township-his"]
    bundle = visit_bundle("th-01", spo2=97, diagnoses=("J06.9",))
    for e in bundle["entry"]:  # calm vitals
        r = e["resource"]
        code = (r.get("code") or {}).get("coding", [{}])[0].get("code")
        if code in ("9279-1",):
            r["valueQuantity"]["value"] = 16
        if code == "8867-4":
            r["valueQuantity"]["value"] = 80
        if code == "8310-5":
            r["valueQuantity"]["value"] = 36.8
        if code == "85354-9":
            r["component"][0]["valueQuantity"]["value"] = 125
            r["component"][1]["valueQuantity"]["value"] = 80
    pid = clinic.post("", bundle).json["entry"][0]["response"]["location"].split("/")[1]
    gr = _one(clinic, f"GuidanceResponse?subject=Patient/{pid}")
    assert [c["coding"][0]["code"] for c in gr["reasonCode"]] == ["default"]
    assert "result" not in gr
    assert clinic.get(f"ServiceRequest?patient=Patient/{pid}&_summary=count").json["total"] == 0


@pytest.mark.parametrize(
    ("birth", "rules"),
    [
        (None, ["default"]),  # no age: the age rules cannot apply (DESIGN 4: a missing value is false)
        ("1940", ["elderly-watch"]),  # 85 or 86 on 2026-11-02, never an infant
        ("1946-11", ["default"]),  # 79 until some day of November 1946's anniversary: not yet certainly 80
        ("1946-10", ["elderly-watch"]),
        ("2026-09", ["infant-fever"]),  # one or two months old
    ],
)
def test_the_age_rules_read_a_partial_or_missing_birth_date_as_what_it_certainly_says(
    county: dict[str, Fhir], birth: str | None, rules: list[str]
) -> None:
    """A Patient.birthDate of a year or a month, or none, was read as age 0: an adult with a fever
    was sent urgently to paediatrics by infant-fever. The age is now counted from the last day the
    birthDate allows (the youngest the patient can be), and a missing one leaves the age unknown."""
    platform, clinic = county["platform"], county["township-his"]
    person = patient(None, gp="th-01")
    if birth is None:
        del person["birthDate"]
    else:
        person["birthDate"] = birth
    pid = platform.post("Patient", person).json["id"]
    bundle = visit_bundle("th-01", spo2=97, diagnoses=("J06.9",))
    urn = bundle["entry"].pop(0)["fullUrl"]
    bundle = json.loads(json.dumps(bundle).replace(urn, f"Patient/{pid}"))
    calm = {"9279-1": 21, "8867-4": 91, "8310-5": 38.5}  # NEWS2 2 + 1 + 1, with a fever
    for e in bundle["entry"]:
        code = (e["resource"].get("code") or {}).get("coding", [{}])[0].get("code")
        if code in calm:
            e["resource"]["valueQuantity"]["value"] = calm[code]
        if code == "85354-9":
            e["resource"]["component"][0]["valueQuantity"]["value"] = 125
    response = clinic.post("", bundle)
    assert response.status_code == 200, response.json
    gr = _one(clinic, f"GuidanceResponse?subject=Patient/{pid}")
    assert [c["coding"][0]["code"] for c in gr["reasonCode"]] == rules


def test_a_vital_sign_beyond_64_bits_is_stored_and_scored_not_a_500(county: dict[str, Fhir]) -> None:
    """FHIR decimals have no upper bound: a respiration rate written as a 30-digit integer was a 500
    (the JSON writer takes 64-bit integers only). It is kept with its digits and scores 3."""
    clinic = county["township-his"]
    bundle = visit_bundle("th-01", spo2=97, diagnoses=("J06.9",))
    rate = next(e["resource"] for e in bundle["entry"]
                if (e["resource"].get("code") or {}).get("coding", [{}])[0].get("code") == "9279-1")
    huge = "123456789012345678901234567890"
    raw = json.dumps(bundle).replace(f'"value": {rate["valueQuantity"]["value"]},', f'"value": {huge},', 1)
    response = clinic.client.post("/fhir", data=raw.encode(), content_type="application/fhir+json",
                                  headers=clinic._headers())
    assert response.status_code == 200, response.json
    pid = response.json["entry"][0]["response"]["location"].split("/")[1]
    gr = _one(clinic, f"GuidanceResponse?subject=Patient/{pid}")
    items = [i["part"] for i in gr["contained"][0]["parameter"] if i["name"] == "item"]
    rr = next({p["name"]: p for p in i} for i in items if i[0]["valueString"] == "respiration_rate")
    assert (rr["value"]["valueString"], rr["score"]["valueInteger"]) == (huge, 3)
    stored = clinic.client.get(
        f"/fhir/Observation?subject=Patient/{pid}&code=9279-1", headers=clinic._headers()
    ).get_data()
    assert f'"value":{huge}'.encode() in stored


def _stay(
    hospital: Fhir,
    pid: str,
    *,
    dx: str = "I63.9",
    start: str = "2026-11-02T14:00:00+08:00",
    end: str = "2026-11-12T10:00:00+08:00",
    based_on: str | None = None,
    provider: str = "hosp",
) -> dict[str, Any]:
    """An inpatient stay at the hospital, admitted then discharged home with one diagnosis."""
    admission: dict[str, Any] = {
        "resourceType": "Encounter",
        "status": "in-progress",
        "class": {"system": V3_ACT_CODE_SYSTEM, "code": "IMP"},
        "subject": {"reference": f"Patient/{pid}"},
        "serviceProvider": {"reference": f"Organization/{provider}"},
        "period": {"start": start},
    }
    if based_on:
        admission["basedOn"] = [{"reference": f"ServiceRequest/{based_on}"}]
    created = hospital.post("Encounter", admission)
    assert created.status_code == 201, created.json
    imp = created.json
    cond = hospital.post(
        "Condition",
        {
            "resourceType": "Condition",
            "subject": {"reference": f"Patient/{pid}"},
            "encounter": {"reference": f"Encounter/{imp['id']}"},
            "code": {"coding": [{"system": ICD10_SYSTEM, "code": dx}]},
        },
    ).json
    discharged = imp | {
        "status": "finished",
        "period": {"start": start, "end": end},
        "diagnosis": [{"condition": {"reference": f"Condition/{cond['id']}"}}],
        "hospitalization": {
            "dischargeDisposition": {"coding": [{"system": DISCHARGE_DISPOSITION_SYSTEM, "code": "home"}]}
        },
    }
    done = hospital.put(f"Encounter/{imp['id']}", discharged)
    assert done.status_code == 200, done.json
    return dict(done.json)


def _decision_outcome(gr: dict[str, Any]) -> str:
    ext = next(e for e in gr["extension"] if e["url"].endswith("/referral-decision"))
    return str(next(e["valueCode"] for e in ext["extension"] if e["url"] == "outcome"))


def test_the_down_referral_goes_to_the_township_clinic_that_made_the_episodes_up_referral(
    county: dict[str, Fhir],
) -> None:
    """DESIGN 4: th-02 referred up to the county hospital, which referred on to the MCH hospital;
    the patient's GP is th-01. Discharged from the MCH hospital, the patient goes home to th-02, the
    township clinic of the episode's up-referral, not to the GP because the last referral came from
    the county hospital."""
    platform = county["platform"]
    pid = platform.post("Patient", patient(RESIDENT_SAMPLE, gp="th-01")).json["id"]
    up = _posted_referral(platform, pid, "up-referral", "th-02", "hosp")
    onward = _posted_referral(county["county-his"], pid, "up-referral", "hosp", "mch", based_on=up)
    stay = _stay(county["mch-his"], pid, based_on=onward, provider="mch")
    down = county["mch-his"].get(f"ServiceRequest/ref-down-{stay['id']}").json
    assert down["performer"] == [{"reference": "Organization/th-02"}]


def test_without_a_referrer_or_gp_clinic_the_latest_visit_by_its_date_decides(
    county: dict[str, Fhir],
) -> None:
    """"The township clinic of the patient's latest AMB visit" is the latest by when the visit took
    place, not by when a HIS sent it: th-02's visit of 1 October, sent after th-01's of 20 October,
    loses."""
    platform, hospital = county["platform"], county["county-his"]
    pid = platform.post("Patient", patient(RESIDENT_SAMPLE)).json["id"]  # no GP
    for clinic, day in (("th-01", "2026-10-20"), ("th-02", "2026-10-01")):
        visit = _follow_up_visit(pid, "unused", day)
        visit["serviceProvider"] = {"reference": f"Organization/{clinic}"}
        del visit["basedOn"]
        assert platform.post("Encounter", visit).status_code == 201
    stay = _stay(hospital, pid)
    down = hospital.get(f"ServiceRequest/ref-down-{stay['id']}").json
    assert down["performer"] == [{"reference": "Organization/th-01"}]


def test_no_township_clinic_means_no_down_referral_and_the_decision_says_why(
    county: dict[str, Fhir],
) -> None:
    """GP a village clinic, no outpatient visit, admitted directly: the down-referral rule fires, but
    there is no township clinic, so the outcome is none and the reason is given in zh and en."""
    platform, hospital = county["platform"], county["county-his"]
    assert platform.put("Organization/vc-01", organization("vc-01", level="village")).status_code == 201
    pid = platform.post("Patient", patient(RESIDENT_SAMPLE, gp="vc-01")).json["id"]
    stay = _stay(hospital, pid)
    gr = hospital.get(f"GuidanceResponse/gr-{stay['id']}").json
    assert _decision_outcome(gr) == "none"
    assert "result" not in gr
    assert [c["coding"][0]["code"] for c in gr["reasonCode"]] == [
        "down-referral-dx",
        "down-referral-no-clinic",
    ]
    assert all(c["coding"][0]["system"].endswith("/CodeSystem/referral-rule") for c in gr["reasonCode"])
    notes = [n["text"] for n in gr["note"]]
    assert any(n.startswith("未找到患者所属的乡镇卫生院") for n in notes)
    assert any(n.startswith("No township clinic was found for the patient") for n in notes)
    assert hospital.get(f"ServiceRequest?patient=Patient/{pid}&_summary=count").json["total"] == 0
    assert every_stored_version_validates() > 5


def test_a_discharge_that_is_not_down_referred_names_the_down_referral_none_rule(
    county: dict[str, Fhir],
) -> None:
    platform, hospital = county["platform"], county["county-his"]
    pid = platform.post("Patient", patient(RESIDENT_SAMPLE, gp="th-01")).json["id"]
    stay = _stay(hospital, pid, dx="K80.2")
    gr = hospital.get(f"GuidanceResponse/gr-{stay['id']}").json
    assert _decision_outcome(gr) == "none"
    assert [c["coding"][0]["code"] for c in gr["reasonCode"]] == ["down-referral-none"]
    assert gr["moduleCanonical"].endswith("/down-referral-default|2024.2")


def test_a_new_urgency_reaches_the_open_task(county: dict[str, Fhir]) -> None:
    """PUT stat -> routine (with the override's reason): the Task's priority follows, as the clinic's write;
    the inbox order and the 2 h / 24 h acceptance limit read Task.priority."""
    from sqlalchemy import select

    from referral_service.domain.registry import AuditRecord
    from referral_service.extensions import database

    clinic, hospital = county["township-his"], county["county-his"]
    _, _, gr = _first_visit(county)
    sr_id = gr["result"]["reference"].split("/")[1]
    sr = clinic.get(f"ServiceRequest/{sr_id}").json
    assert sr["priority"] == "stat"
    draft_change = sr | {"priority": "urgent", "note": [*sr.get("note", []), {"text": "家属要求，先观察"}]}
    assert clinic.put(f"ServiceRequest/{sr_id}", draft_change).status_code == 200
    assert _one(clinic, f"Task?focus=ServiceRequest/{sr_id}")["priority"] == "urgent"  # the draft Task too
    sr = clinic.get(f"ServiceRequest/{sr_id}").json
    assert clinic.put(f"ServiceRequest/{sr_id}", sr | {"status": "active"}).status_code == 200
    sr = clinic.get(f"ServiceRequest/{sr_id}").json
    routine = sr | {"priority": "routine", "note": [*sr["note"], {"text": "生命体征已平稳"}]}
    assert clinic.put(f"ServiceRequest/{sr_id}", routine).status_code == 200
    task = _one(hospital, f"Task?focus=ServiceRequest/{sr_id}")
    assert (task["status"], task["priority"]) == ("requested", "routine")
    assert _one(hospital, "Task?owner=Organization/hosp&priority=routine")["id"] == task["id"]
    with database.unit_of_work() as db:
        last = db.execute(
            select(AuditRecord.agent_name)
            .where(AuditRecord.entity_type == "Task", AuditRecord.entity_id == task["id"])
            .order_by(AuditRecord.id.desc())
            .limit(1)
        ).scalar_one()
    assert last == "township-his"
    assert every_stored_version_validates() > 10


def test_follow_ups_count_from_the_discharge_day_in_asia_shanghai(county: dict[str, Fhir]) -> None:
    """Discharged 2026-11-12T18:00:00Z, 2026-11-13 02:00 in Asia/Shanghai: follow-ups 7, 30, 90 days
    after the 13th."""
    platform, clinic, hospital = county["platform"], county["township-his"], county["county-his"]
    pid = platform.post("Patient", patient(RESIDENT_SAMPLE, gp="th-01")).json["id"]
    _stay(hospital, pid, start="2026-11-02T06:00:00Z", end="2026-11-12T18:00:00Z")
    plan = _one(clinic, f"CarePlan?patient=Patient/{pid}")
    assert plan["period"]["start"] == "2026-11-13"
    assert [a["detail"]["scheduledPeriod"]["start"] for a in plan["activity"]] == [
        "2026-11-20",
        "2026-12-13",
        "2027-02-11",
    ]


def test_referrals_are_authored_when_the_visit_was_so_a_stay_entered_later_settles(
    county: dict[str, Fhir],
) -> None:
    """Visit 2026-11-02, stay 2026-11-02 to 11-12, all entered later: the up-referral is authored at
    the visit's end and the down-referral at the discharge (processing time is meta.lastUpdated), so
    the stay settles with its referral (authoredOn <= discharge date)."""
    from tests.functional.settlement_helpers import claim

    platform, clinic, hospital = county["platform"], county["township-his"], county["county-his"]
    pid, _eid, gr = _first_visit(county)
    sr_id = gr["result"]["reference"].split("/")[1]
    sr = clinic.get(f"ServiceRequest/{sr_id}").json
    assert sr["authoredOn"] == "2026-11-02T09:30:00+08:00"  # Encounter.period.end of the visit
    assert not sr["meta"]["lastUpdated"].startswith("2026-11-02")
    assert clinic.put(f"ServiceRequest/{sr_id}", sr | {"status": "active"}).status_code == 200
    assert clinic.get(f"ServiceRequest/{sr_id}").json["authoredOn"] == "2026-11-02T09:30:00+08:00"
    stay = _stay(hospital, pid, based_on=sr_id, end="2026-11-12T10:00:00+08:00")
    down = clinic.get(f"ServiceRequest/ref-down-{stay['id']}").json
    assert down["authoredOn"] == "2026-11-12T10:00:00+08:00"
    episode = _one(clinic, f"EpisodeOfCare?patient=Patient/{pid}")
    assert episode["period"]["start"] == "2026-11-02T09:30:00+08:00"

    bureau = organization("bureau", level=None, kind="insurer", name="医保局")
    assert platform.put("Organization/bureau", bureau).status_code == 201
    coverage = platform.post(
        "Coverage",
        {
            "resourceType": "Coverage",
            "status": "active",
            "type": {"coding": [{"system": f"{BASE}/CodeSystem/coverage-type", "code": "basic"}]},
            "beneficiary": {"reference": f"Patient/{pid}"},
            "payor": [{"reference": "Organization/bureau"}],
            "period": {"start": "2020-01-01"},
        },
    )
    assert coverage.status_code == 201, coverage.json
    body = claim(pid, coverage.json["id"], "hosp", [("8000.00", "A")], discharge="2026-11-12", referral=sr_id)
    settled = hospital.post("Claim/$submit", body)
    assert settled.status_code == 200, settled.json


def _target_of(county: dict[str, Fhir], clinic_id: str) -> tuple[str, list[str]]:
    """The proposed hospital of a first visit at the clinic, and the decision's notes."""
    his = county["platform"]
    response = his.post("", visit_bundle(clinic_id))
    assert response.status_code == 200, response.json
    eid = response.json["entry"][1]["response"]["location"].split("/")[1]
    gr = his.get(f"GuidanceResponse/gr-{eid}").json
    sr = his.get(gr["result"]["reference"]).json
    rules = {t for c in gr["reasonCode"] for t in (c["text"], c["coding"][0]["display"])}
    notes = [n["text"] for n in gr["note"] if n["text"] not in rules]
    return sr["performer"][0]["reference"].split("/")[1], notes


def test_a_hospital_registered_later_does_not_take_over_the_countys_referrals(
    county: dict[str, Fhir],
) -> None:
    platform = county["platform"]
    newcomer = _hospital("0b7e2c1a-9f3d-4c8e-8a61-2f0d5e9b1c47", ["general"])
    assert platform.put(f"Organization/{newcomer['id']}", newcomer).status_code == 201
    assert _target_of(county, "th-01") == ("hosp", [])  # registered first, same district, general


def test_the_county_hospital_leading_the_clinics_medical_community_comes_first(
    county: dict[str, Fhir],
) -> None:
    platform = county["platform"]
    assert platform.put("Organization/hosp-2", _hospital("hosp-2", ["general"])).status_code == 201
    member = organization("th-03") | {"partOf": {"reference": "Organization/hosp-2"}}
    assert platform.put("Organization/th-03", member).status_code == 201
    village = organization("vc-03", level="village") | {"partOf": {"reference": "Organization/th-03"}}
    assert platform.put("Organization/vc-03", village).status_code == 201
    assert _target_of(county, "th-03")[0] == "hosp-2"
    assert _target_of(county, "vc-03")[0] == "hosp-2"
    assert _target_of(county, "th-01")[0] == "hosp"


def test_a_county_without_a_county_hospital_gets_one_outside_with_a_note(county: dict[str, Fhir]) -> None:
    platform = county["platform"]
    far = organization("th-far", district="白水县")
    assert platform.put("Organization/th-far", far).status_code == 201
    target, notes = _target_of(county, "th-far")
    assert target == "hosp"
    assert len(notes) == 2
    assert notes[0].startswith("本县（白水县）未登记县级医院：建议转往县外的hosp（青山县）")
    assert notes[1].startswith(
        "no county hospital is registered in the clinic's county (白水县): proposed hosp (青山县) outside"
    )
    # A county hospital of its own, even without the general capability, is preferred to one outside.
    tcm = _hospital("bs-tcm", ["tcm"]) | {"address": [{"district": " 白水县 "}]}
    assert platform.put("Organization/bs-tcm", tcm).status_code == 201
    assert _target_of(county, "th-far") == ("bs-tcm", [])


def test_without_the_capability_in_the_county_the_general_hospital_is_proposed_and_noted(
    county: dict[str, Fhir],
) -> None:
    from referral_service.domain.registry import Organization
    from referral_service.extensions import database
    from referral_service.services.referrals import choose_hospital

    platform = county["platform"]
    assert platform.put("Organization/th-far", organization("th-far", district="白水县")).status_code == 201
    for org in (_hospital("bs-general", ["general"]), _hospital("bs-tcm", ["tcm"])):
        org["address"] = [{"district": "白水县"}]
        assert platform.put(f"Organization/{org['id']}", org).status_code == 201
    with database.unit_of_work() as db:
        clinic = db.get(Organization, "th-far")
        choice = choose_hospital(db, clinic, "obstetrics")
        assert choice.hospital is not None and choice.hospital.id == "bs-general"  # not mch, in 青山县
        assert choice.notes == (
            ("本县县级医院均无产科服务能力：建议转往综合县医院",
             "no county hospital in the county has obstetrics: proposed the general county hospital"),
        )
        assert choose_hospital(db, clinic, "tcm").hospital.id == "bs-tcm"  # type: ignore[union-attr]
        assert choose_hospital(db, db.get(Organization, "th-01"), "obstetrics").hospital.id == "mch"  # type: ignore[union-attr]


def test_supplemental_oxygen_is_a_boolean_in_the_news2_breakdown(county: dict[str, Fhir]) -> None:
    from referral_service.extensions import database
    from referral_service.services.referrals import explain_visit

    _, eid, gr = _first_visit(county)
    items = [p for p in gr["contained"][0]["parameter"] if p["name"] == "item"]
    oxygen = next(i for i in items if i["part"][0]["valueString"] == "supplemental_oxygen")
    assert oxygen["part"][1] == {"name": "value", "valueBoolean": False}
    with database.unit_of_work() as db:
        assert "  supplemental_oxygen: false -> 0" in explain_visit(db, eid)
    assert every_stored_version_validates() > 5
