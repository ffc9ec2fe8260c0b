"""Settlement integrity (acceptance audit): deleted parties, records a settlement rests on, claims
that must be refused, idempotency on content, the standard $submit input, EOB payers, reversal."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from referral_service.domain.ledger import Settlement, YearAccumulator
from referral_service.extensions import database
from tests.functional.settlement_helpers import County, claim, components

D = Decimal


@pytest.fixture
def county(client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]) -> County:
    return County(client, make_api_client)


def _nothing_settled() -> None:
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(Settlement)) == 0
        assert s.scalar(select(func.count()).select_from(YearAccumulator)) == 0


@pytest.mark.parametrize("deleted", ["Patient", "Coverage", "Organization"])
def test_a_deleted_patient_coverage_or_provider_is_unknown_to_submit(county: County, deleted: str) -> None:
    pid, cov = county.patient()
    provider = "hosp"
    if deleted == "Organization":  # a hospital no record refers to yet (one that is referred to stays)
        provider = "hosp-closed"
        closed = {**county.platform.get("Organization/hosp").json, "id": provider}
        closed.pop("meta"), closed.pop("identifier", None)
        assert county.platform.put(f"Organization/{provider}", closed).status_code == 201
    target = {"Patient": f"Patient/{pid}", "Coverage": f"Coverage/{cov}",
              "Organization": f"Organization/{provider}"}
    # A patient goes with her coverage (which refers to her): one transaction deletes both.
    paths = [target[deleted], f"Coverage/{cov}"] if deleted == "Patient" else [target[deleted]]
    gone = county.platform.post("", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": path}} for path in paths]})
    assert gone.status_code == 200, gone.json
    assert county.platform.get(target[deleted]).status_code == 410
    response = county.platform.post("Claim/$submit", claim(pid, cov, provider, [("1000.00", "A")]))
    assert response.status_code == 422, response.json
    expression = {"Patient": "Claim.patient", "Coverage": "Claim.insurance[0].coverage",
                  "Organization": "Claim.provider"}[deleted]
    assert response.json["issue"][0]["expression"] == [expression]
    _nothing_settled()


def _reverse(county: County, claim_id: str) -> None:
    response = county.his["hosp"].post(
        f"Claim/{claim_id}/$reverse",
        {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": "录入错误"}]},
    )
    assert response.status_code == 200, response.json


@pytest.mark.parametrize("target", ["Patient", "Coverage"])
def test_a_patient_or_coverage_with_an_active_settlement_cannot_be_deleted(
    county: County, target: str
) -> None:
    pid, cov = county.patient()
    settled = county.his["hosp"].post("Claim/$submit", claim(pid, cov, "hosp", [("1000.00", "A")]))
    assert settled.status_code == 200, settled.json
    claim_id = settled.json["request"]["reference"].split("/")[1]
    path = f"Patient/{pid}" if target == "Patient" else f"Coverage/{cov}"
    for who in (county.platform, county.his["hosp"]):
        refused = who.delete(path)
        assert refused.status_code == 409, refused.json
        issue = refused.json["issue"][0]
        assert issue["code"] == "business-rule"
        assert f"Claim/{claim_id}" in issue["diagnostics"] and "reverse" in issue["diagnostics"]
    in_bundle = county.platform.post("", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": path}}]})
    assert in_bundle.status_code == 409, in_bundle.json
    assert county.platform.get(path).status_code == 200
    assert county.platform.get(f"Patient/{pid}").status_code == 200
    # Reversed, no settlement rests on it; but the claim and its records, which are kept for good,
    # still refer to it: it stays (referential integrity), with that reason.
    _reverse(county, claim_id)
    refused = county.platform.delete(path)
    assert refused.status_code == 409, refused.json
    issue = refused.json["issue"][0]
    holder = f"Claim/{claim_id} (patient)" if target == "Patient" else "ExplanationOfBenefit/"
    assert issue["code"] == "conflict" and holder in issue["diagnostics"]
    assert county.platform.get(path).status_code == 200


def test_a_coverage_only_a_reversed_settlement_used_is_held_by_its_records_only(county: County) -> None:
    """The claim was settled on one coverage, reversed, and settled again on another: no settlement
    rests on the first any more, only the reversed settlement's records refer to it."""
    pid, cov = county.patient()
    copy = {k: v for k, v in county.platform.get(f"Coverage/{cov}").json.items() if k not in ("id", "meta")}
    second = county.platform.post("Coverage", copy)
    assert second.status_code == 201, second.json
    body = claim(pid, cov, "hosp", [("1000.00", "A")], key="K-cov")
    first = county.his["hosp"].post("Claim/$submit", body)
    claim_id = first.json["request"]["reference"].split("/")[1]
    _reverse(county, claim_id)
    body["id"] = claim_id
    body["insurance"][0]["coverage"] = {"reference": f"Coverage/{second.json['id']}"}
    again = county.his["hosp"].post("Claim/$submit", body)
    assert again.status_code == 200, again.json
    first_refused = county.platform.delete(f"Coverage/{cov}")
    assert first_refused.status_code == 409, first_refused.json
    assert first_refused.json["issue"][0]["code"] == "conflict"  # referred to, not settled on
    assert "reverse" not in first_refused.json["issue"][0]["diagnostics"]
    second_refused = county.platform.delete(f"Coverage/{second.json['id']}")
    assert second_refused.status_code == 409, second_refused.json
    assert second_refused.json["issue"][0]["code"] == "business-rule"  # an active settlement rests on it
    assert f"Claim/{claim_id}" in second_refused.json["issue"][0]["diagnostics"]


def _post_text(county: County, text: str) -> Any:
    his = county.his["hosp"]
    return his.client.post("/fhir/Claim/$submit", data=text.encode(), content_type="application/fhir+json",
                           headers=his._headers())


def test_resubmitting_the_same_claim_spelled_otherwise_is_the_same_settlement(county: County) -> None:
    """27000.00 and 27000, another key order and white space, a new `created`: the same claim."""
    pid, cov = county.patient()
    body = claim(pid, cov, "hosp", [("27000.00", "A"), ("3000.00", "C")], key="K-spell")
    body["item"][0]["quantity"] = {"value": 1}
    first_text = json.dumps(body).replace('"value": 27000.0,', '"value": 27000.00,')
    assert "27000.00" in first_text
    first = _post_text(county, first_text)
    assert first.status_code == 200, first.json
    respelled = json.loads(json.dumps(body))
    respelled["created"] = "2026-03-11T09:30:00+08:00"  # rebuilt by the HIS after a timeout
    respelled["item"][0]["quantity"] = {"value": 1.0}
    text = json.dumps(respelled, sort_keys=True, indent=3, ensure_ascii=False)
    text = text.replace('"value": 27000.0\n', '"value": 27000\n')
    text = text.replace('"value": 3000.0\n', '"value": 3e3\n')
    assert '"value": 27000\n' in text and "3e3" in text and "2026-03-11T09:30" in text
    again = _post_text(county, text)
    assert again.status_code == 200, again.json
    assert again.json["id"] == first.json["id"]
    for change in ('"value": 27000.01\n', '"value": 2700\n'):
        changed = _post_text(county, text.replace('"value": 27000\n', change))
        assert changed.status_code == 409, changed.json
        assert "other content" in changed.json["issue"][0]["diagnostics"]
    other_class = json.loads(text)
    other_class["item"][1]["category"]["coding"][0]["code"] = "B"
    assert county.his["hosp"].post("Claim/$submit", other_class).status_code == 409
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(Settlement)) == 1


def test_a_settlement_fingerprinted_before_canonical_hashing_is_still_recognised(county: County) -> None:
    from referral_service.fhir import jsonio
    from referral_service.services.settlement import _raw_content_hash

    pid, cov = county.patient()
    text = json.dumps(claim(pid, cov, "hosp", [("1000.00", "A")], key="K-old"))
    first = _post_text(county, text)
    with database.session() as s:
        row = s.scalars(select(Settlement)).one()
        row.content_hash = _raw_content_hash(jsonio.loads(text.encode()))
        s.commit()
    again = _post_text(county, text)
    assert again.status_code == 200, again.json
    assert again.json["id"] == first.json["id"]


def test_a_settled_claim_cannot_be_changed_until_reversed(county: County) -> None:
    pid, cov = county.patient()
    hosp = county.his["hosp"]
    settled = hosp.post("Claim/$submit", claim(pid, cov, "hosp", [("1000.00", "A")], key="K-put"))
    claim_id = settled.json["request"]["reference"].split("/")[1]
    stored = hosp.get(f"Claim/{claim_id}").json
    changed = json.loads(json.dumps(stored))
    changed["item"][0]["net"]["value"] = 5000
    for who in (hosp, county.platform):
        refused = who.put(f"Claim/{claim_id}", changed)
        assert refused.status_code == 409, refused.json
        issue = refused.json["issue"][0]
        assert issue["code"] == "business-rule" and "reverse it first" in issue["diagnostics"]
    in_bundle = county.platform.post("", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": changed, "request": {"method": "PUT", "url": f"Claim/{claim_id}"}}]})
    assert in_bundle.status_code == 409, in_bundle.json
    # The same Claim resource settled again under another identifier would overwrite it too.
    other_key = claim(pid, cov, "hosp", [("2000.00", "A")], key="K-other") | {"id": claim_id}
    resubmitted = hosp.post("Claim/$submit", other_key)
    assert resubmitted.status_code == 409, resubmitted.json
    after = hosp.get(f"Claim/{claim_id}").json
    assert after["meta"]["versionId"] == "1" and after["item"][0]["net"]["value"] == 1000
    # Nothing claimed changes: fine (another spelling, only the narrative).
    div = '<div xmlns="http://www.w3.org/1999/xhtml">住院结算</div>'
    same = json.loads(json.dumps(stored)) | {"text": {"status": "generated", "div": div}}
    same["item"][0]["net"]["value"] = 1000.000
    assert hosp.put(f"Claim/{claim_id}", same).status_code == 200
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(Settlement)) == 1
    _reverse(county, claim_id)
    assert hosp.put(f"Claim/{claim_id}", changed).status_code == 200


def test_submit_takes_the_standard_parameters_form(county: County) -> None:
    pid, cov = county.patient()
    hosp = county.his["hosp"]
    body = claim(pid, cov, "hosp", [("1000.00", "A")], key="K-params")
    wrapped = hosp.post("Claim/$submit", {"resourceType": "Parameters",
                                          "parameter": [{"name": "resource", "resource": body}]})
    assert wrapped.status_code == 200, wrapped.json
    assert wrapped.json["resourceType"] == "ClaimResponse"
    assert hosp.post("Claim/$submit", body).json["id"] == wrapped.json["id"]  # the same claim
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": claim(pid, cov, "hosp", [("500.00", "A")], inpatient=False)}]}
    in_bundle = hosp.post("Claim/$submit", {"resourceType": "Parameters",
                                            "parameter": [{"name": "resource", "resource": bundle}]})
    assert in_bundle.status_code == 200, in_bundle.json
    for parameters, where in (
        ([], "Parameters.parameter"),
        ([{"name": "resource", "resource": body}] * 2, "Parameters.parameter"),
        ([{"name": "claim", "resource": body}], "Parameters.parameter[0]"),
        ([{"name": "resource", "valueString": "x"}], "Parameters.parameter[0].resource"),
        ([{"name": "resource", "resource": {"resourceType": "Patient"}}], "resourceType"),
    ):
        refused = hosp.post("Claim/$submit", {"resourceType": "Parameters", "parameter": parameters})
        assert refused.status_code == 400, (parameters, refused.json)
        assert refused.json["issue"][0]["expression"] == [where]
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(Settlement)) == 2
    capability = hosp.client.get("/fhir/metadata").json
    claim_entry = next(r for r in capability["rest"][0]["resource"] if r["type"] == "Claim")
    submit = next(o for o in claim_entry["operation"] if o["name"] == "submit")
    assert "Parameters" in submit["documentation"]


def _tomorrow_plus(days: int) -> str:
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    return (datetime.now(ZoneInfo("Asia/Shanghai")).date() + timedelta(days=days)).isoformat()


@pytest.mark.parametrize(
    ("mutate", "expression", "needle"),
    [
        (lambda c: c["billablePeriod"].update(start="2026-03-11"), "Claim.billablePeriod.end", "before"),
        (lambda c: c["billablePeriod"].update(start="2026-03-10T12:00:00+08:00",
                                              end="2026-03-10T08:00:00+08:00"),
         "Claim.billablePeriod.end", "before its start"),
        (lambda c: c.update(use="preauthorization"), "Claim.use", "preauthorization"),
        (lambda c: c.update(use="predetermination"), "Claim.use", "predetermination"),
        (lambda c: c.update(status="draft"), "Claim.status", "draft"),
        (lambda c: c.update(status="cancelled"), "Claim.status", "cancelled"),
        (lambda c: c["billablePeriod"].update(start=_tomorrow_plus(0), end=_tomorrow_plus(2)),
         "Claim.billablePeriod.end", "future"),
        (lambda c: c["billablePeriod"].update(end="2099-01-01"), "Claim.billablePeriod.end", "future"),
    ],
)
def test_claims_that_are_no_settleable_claim_are_422(
    county: County, mutate: Callable[[dict[str, Any]], None], expression: str, needle: str
) -> None:
    pid, cov = county.patient()
    body = claim(pid, cov, "hosp", [("1000.00", "A")])
    mutate(body)
    response = county.his["hosp"].post("Claim/$submit", body)
    assert response.status_code == 422, response.json
    issue = response.json["issue"][0]
    assert issue["expression"] == [expression] and needle in issue["diagnostics"], issue
    _nothing_settled()
    with database.session() as s:
        from referral_service.domain.fhir_store import StoredResource

        stored = s.scalar(select(func.count()).select_from(StoredResource).where(
            StoredResource.res_type.in_(("Claim", "ClaimResponse", "ExplanationOfBenefit"))))
        assert stored == 0


def test_a_discharge_up_to_tomorrow_and_a_same_day_stay_are_settled(county: County) -> None:
    pid, cov = county.patient()
    body = claim(pid, cov, "hosp", [("1000.00", "A")], discharge=_tomorrow_plus(1))
    body["billablePeriod"]["start"] = _tomorrow_plus(1)
    assert county.his["hosp"].post("Claim/$submit", body).status_code == 200
    same_day = claim(pid, cov, "hosp", [("1000.00", "A")], discharge="2026-03-10")
    same_day["billablePeriod"]["start"] = "2026-03-10T09:00:00+08:00"
    assert county.his["hosp"].post("Claim/$submit", same_day).status_code == 200


def test_an_items_factor_counts_when_it_has_no_net(county: County) -> None:
    """FHIR: net = quantity x unitPrice x factor; DESIGN 9: a given net wins over the product."""
    pid, cov = county.patient()
    body = claim(pid, cov, "th-01", [("0.00", "A"), ("100.00", "C")], inpatient=False)
    del body["item"][0]["net"]
    body["item"][0] |= {"unitPrice": {"value": 10, "currency": "CNY"}, "quantity": {"value": 1.5},
                        "factor": 0.5}
    body["item"][1] |= {"unitPrice": {"value": 1, "currency": "CNY"}, "quantity": {"value": 3}}
    response = county.his["th-01"].post("Claim/$submit", body)
    assert response.status_code == 200, response.json
    totals = components(response.json)
    assert totals["total"] == D("107.50")  # 10 x 1.5 x 0.5, and the net of 100.00 (not 1 x 3)
    assert totals["out-of-list"] == D("100.00")
    thirds = claim(pid, cov, "th-01", [("0.00", "A")], inpatient=False)
    del thirds["item"][0]["net"]
    thirds["item"][0] |= {"unitPrice": {"value": 10, "currency": "CNY"}, "factor": 0.3333}
    refused = county.his["th-01"].post("Claim/$submit", thirds)
    assert refused.status_code == 422 and "whole fen" in refused.json["issue"][0]["diagnostics"]


def _eob(county: County, claim_response: dict[str, Any]) -> dict[str, Any]:
    claim_id = claim_response["request"]["reference"].split("/")[1]
    bundle = county.his["hosp"].get(f"ExplanationOfBenefit?claim=Claim/{claim_id}").json
    assert bundle["total"] == 1
    return dict(bundle["entry"][0]["resource"])


def _amounts(adjudication: list[dict[str, Any]], system: str) -> dict[str, Decimal]:
    return {
        a["category"]["coding"][0]["code"]: D(str(a["amount"]["value"]))
        for a in adjudication if a["category"]["coding"][0]["system"] == system
    }


def test_the_eob_names_every_payer_and_what_it_pays_of_each_item(county: County) -> None:
    """DESIGN 9: payer of a component -> ExplanationOfBenefit.insurance[] and item.adjudication."""
    from referral_service.fhir.codes import SETTLEMENT_COMPONENT_SYSTEM as COMPONENTS
    from tests.functional.fhir_helpers import every_stored_version_validates

    pid, cov = county.patient(poor=True)
    ref = county.referral(pid, performer="hosp")
    body = claim(pid, cov, "hosp", [("20000.00", "A"), ("7000.00", "A"), ("1000.01", "B"), ("3000.00", "C")],
                 referral=ref)
    del body["item"][1]["net"]  # priced: 7000 = 3500 x 4 x 0.5
    body["item"][1] |= {"unitPrice": {"value": 3500, "currency": "CNY"}, "quantity": {"value": 4},
                        "factor": 0.5}
    response = county.his["hosp"].post("Claim/$submit", body)
    assert response.status_code == 200, response.json
    claim_totals = components(response.json)
    eob = _eob(county, response.json)
    fund_system = "http://referral-service.example/fhir/sid/fund"
    payers = [(i["focal"], i["coverage"].get("reference"), i["coverage"]["identifier"]["value"])
              for i in eob["insurance"]]
    assert payers == [
        (True, f"Coverage/{cov}", "basic-insurance"),
        (False, f"Coverage/{cov}", "critical-illness"),
        (False, None, "medical-assistance"),
        (False, None, "poverty-safety-net"),
    ]
    assert all(i["coverage"]["identifier"]["system"] == fund_system for i in eob["insurance"])
    per_item = [_amounts(item["adjudication"], COMPONENTS) for item in eob["item"]]
    assert len(per_item) == 4 and all(len(row) == 10 for row in per_item)
    submitted = [_amounts(item["adjudication"], "http://terminology.hl7.org/CodeSystem/adjudication")["submitted"]
                 for item in eob["item"]]
    assert submitted == [D("20000.00"), D("7000.00"), D("1000.01"), D("3000.00")]
    assert eob["item"][1]["net"]["value"] == 7000  # computed: the claim gave no net
    for code, amount in claim_totals.items():
        assert sum(row[code] for row in per_item) == amount, code  # reconciles to the fen
    funds = ("basic-insurance", "critical-illness", "medical-assistance", "poverty-safety-net")
    for row, paid in zip(per_item, submitted, strict=True):
        assert sum(row[f] for f in funds) + row["patient-pay"] == paid
    assert per_item[3]["out-of-list"] == per_item[3]["patient-pay"] == D("3000.00")
    assert per_item[2]["class-b-self-pay"] == claim_totals["class-b-self-pay"] == D("100.00")
    assert every_stored_version_validates() >= 3
    # Not registered poor, small claim: only what paid (basic) besides the focal coverage.
    other, other_cov = county.patient()
    small = county.his["hosp"].post("Claim/$submit", claim(other, other_cov, "hosp", [("1000.00", "A")]))
    assert [i["coverage"]["identifier"]["value"] for i in _eob(county, small.json)["insurance"]] == [
        "basic-insurance"]


def test_a_hospital_client_with_the_demo_his_scopes_reverses_its_own_settlements(
    county: County, client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]
) -> None:
    """The demo HIS clients hold system/Claim.crs (no .u): the permission to submit is the one to
    reverse; only the claim's own provider (besides the insurance office and the platform)."""
    from referral_service.seed.accounts import HIS_SCOPES, INSURANCE_SCOPES
    from tests.functional.fhir_helpers import Fhir, token_for

    assert "system/Claim.crs" in HIS_SCOPES.split()

    def his(name: str, org: str, scopes: str = HIS_SCOPES) -> Fhir:
        cid, secret = make_api_client(name, scopes, org)
        return Fhir(client, token_for(client, cid, secret))

    hosp, township = his("hosp-demo-his", "hosp"), his("th-demo-his", "th-01")
    reader = his("reader", "hosp", INSURANCE_SCOPES)
    pid, cov = county.patient()
    settled = hosp.post("Claim/$submit", claim(pid, cov, "hosp", [("1000.00", "A")]))
    assert settled.status_code == 200, settled.json
    claim_id = settled.json["request"]["reference"].split("/")[1]
    reason = {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": "录入错误"}]}
    no_scope = reader.post(f"Claim/{claim_id}/$reverse", reason)
    assert no_scope.status_code == 403 and "Claim.c" in no_scope.json["issue"][0]["diagnostics"]
    assert township.post(f"Claim/{claim_id}/$reverse", reason).status_code == 403  # not its claim
    reversed_ = hosp.post(f"Claim/{claim_id}/$reverse", reason)
    assert reversed_.status_code == 200, reversed_.json
    with database.session() as s:
        assert s.scalars(select(Settlement.status)).all() == ["reversed"]
