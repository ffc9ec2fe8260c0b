"""One-stop settlement through POST /fhir/Claim/$submit and $reverse, on both engines."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from referral_service.domain.fhir_store import PatientAccess
from referral_service.domain.ledger import Payable, Settlement, YearAccumulator
from referral_service.domain.registry import AuditRecord
from referral_service.extensions import database
from referral_service.services import settlement as settlement_service
from tests.functional.fhir_helpers import every_stored_version_validates
from tests.functional.settlement_helpers import County, claim, components
from tests.support.statements import statements_sent

D = Decimal


@pytest.fixture
def county(client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]) -> County:
    return County(client, make_api_client)


def test_worked_example_of_design(county: County) -> None:
    pid, cov = county.patient(poor=True)
    ref = county.referral(pid, performer="hosp")
    response = county.his["hosp"].post(
        "Claim/$submit", claim(pid, cov, "hosp", [("27000.00", "A"), ("3000.00", "C")], referral=ref)
    )
    assert response.status_code == 200, response.json
    assert response.json["resourceType"] == "ClaimResponse"
    c = components(response.json)
    assert c == {
        "total": D("30000.00"),
        "eligible": D("27000.00"),
        "basic-deductible": D("500.00"),
        "basic-insurance": D("21200.00"),
        "critical-illness": D("2145.00"),
        "medical-assistance": D("2558.50"),
        "poverty-safety-net": D("1096.50"),
        "class-b-self-pay": D("0.00"),
        "out-of-list": D("3000.00"),
        "patient-pay": D("3000.00"),
    }
    assert len(response.json["total"]) == 10
    with database.session() as s:
        payables = {p.fund: p.amount for p in s.scalars(select(Payable))}
        assert payables == {
            "basic-insurance": D("21200.00"),
            "critical-illness": D("2145.00"),
            "medical-assistance": D("2558.50"),
            "poverty-safety-net": D("1096.50"),
        }
        acc = s.scalars(select(YearAccumulator)).one()
        assert (acc.inpatient_basic_paid, acc.critical_illness_paid, acc.assistance_paid) == (
            D("21200.00"),
            D("2145.00"),
            D("2558.50"),
        )
    eob = county.his["hosp"].get(
        f"ExplanationOfBenefit?claim=Claim/{response.json['request']['reference'].split('/')[1]}"
    )
    assert eob.json["total"] == 1
    resource = eob.json["entry"][0]["resource"]
    assert resource["insurance"][0]["coverage"]["reference"] == f"Coverage/{cov}"
    assert len(resource["total"]) == 10


def test_resubmission_is_idempotent_and_changes_are_409(county: County) -> None:
    pid, cov = county.patient()
    body = claim(pid, cov, "hosp", [("1000.00", "A")], key="K-1")
    first = county.his["hosp"].post("Claim/$submit", body)
    again = county.his["hosp"].post("Claim/$submit", body)
    assert again.status_code == 200
    assert again.json["id"] == first.json["id"]
    changed = claim(pid, cov, "hosp", [("1200.00", "A")], key="K-1")
    conflict = county.his["hosp"].post("Claim/$submit", changed)
    assert conflict.status_code == 409
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(Settlement)) == 1
        assert s.scalars(select(YearAccumulator)).one().inpatient_basic_paid == D("400.00")  # (1000-500)*0.8
    claim_id = first.json["request"]["reference"].split("/")[1]
    reversed_ = county.his["hosp"].post(
        f"Claim/{claim_id}/$reverse",
        {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": "录入错误"}]},
    )
    assert reversed_.status_code == 200, reversed_.json
    resettled = county.his["hosp"].post("Claim/$submit", changed)
    assert resettled.status_code == 200
    assert components(resettled.json)["basic-insurance"] == D("560.00")


def test_reversal_restores_accumulators_and_lists_later_settlements(county: County) -> None:
    pid, cov = county.patient(poor=True)
    hosp = county.his["hosp"]
    first = hosp.post("Claim/$submit", claim(pid, cov, "hosp", [("20000.00", "A")], discharge="2026-02-01"))
    second = hosp.post("Claim/$submit", claim(pid, cov, "hosp", [("20000.00", "A")], discharge="2026-03-01"))
    assert components(second.json)["basic-deductible"] == D("500.00")  # no episode: each stay owes it
    claim_id = first.json["request"]["reference"].split("/")[1]
    missing_reason = hosp.post(f"Claim/{claim_id}/$reverse", {"resourceType": "Parameters", "parameter": []})
    assert missing_reason.status_code == 422
    response = hosp.post(
        f"Claim/{claim_id}/$reverse",
        {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": "重复结算"}]},
    )
    assert response.status_code == 200
    later = [p for p in response.json["parameter"] if p["name"] == "laterSettlement"]
    assert len(later) == 1
    assert later[0]["part"][1]["valueReference"]["reference"] == f"ClaimResponse/{second.json['id']}"
    assert hosp.get(f"ClaimResponse/{first.json['id']}").json["status"] == "cancelled"
    with database.session() as s:
        acc = s.scalars(select(YearAccumulator)).one()
        second_row = s.scalars(select(Settlement).where(Settlement.status == "active")).one()
        assert acc.inpatient_basic_paid == second_row.basic_insurance
        assert acc.critical_illness_paid == second_row.critical_illness
        assert acc.assistance_paid == second_row.medical_assistance
        assert acc.critical_illness_cumulative_r1 == second_row.ci_r1_added
        assert {
            p.status for p in s.scalars(select(Payable).where(Payable.settlement_id != second_row.id))
        } == {"cancelled"}
    twice = hosp.post(
        f"Claim/{claim_id}/$reverse",
        {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": "again"}]},
    )
    assert twice.status_code == 409
    assert every_stored_version_validates() > 6  # Claims, ClaimResponses (and reversed), EOBs


def test_a_client_that_may_not_reverse_a_claim_gets_403_whatever_the_claims_state(county: County) -> None:
    """Who may reverse is checked before what is wrong with the request or the settlement: another
    provider's client gets 403, not 422 for a missing reason nor 409 for a reversal already made."""
    pid, cov = county.patient()
    hosp, clinic = county.his["hosp"], county.his["th-01"]  # th-01 sees the patient (its GP), not its claim
    settled = hosp.post("Claim/$submit", claim(pid, cov, "hosp", [("1000.00", "A")]))
    claim_id = settled.json["request"]["reference"].split("/")[1]
    reason = {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": "重复结算"}]}
    assert clinic.post(f"Claim/{claim_id}/$reverse", {"resourceType": "Parameters"}).status_code == 403
    assert clinic.post(f"Claim/{claim_id}/$reverse", reason).status_code == 403
    assert hosp.post(f"Claim/{claim_id}/$reverse", reason).status_code == 200
    assert clinic.post(f"Claim/{claim_id}/$reverse", reason).status_code == 403
    assert hosp.post(f"Claim/{claim_id}/$reverse", reason).status_code == 409
    assert clinic.post("Claim/no-such-claim/$reverse", reason).status_code == 404


def test_up_referral_pays_only_the_deductible_difference(county: County) -> None:
    pid, cov = county.patient()
    up = county.referral(pid, performer="th-01", requester="vc-01")
    township = county.his["th-01"].post(
        "Claim/$submit", claim(pid, cov, "th-01", [("5000.00", "A")], referral=up, discharge="2026-03-05")
    )
    assert components(township.json)["basic-deductible"] == D("200.00")
    onward = county.referral(pid, performer="hosp", requester="th-01", based_on=up)
    county_stay = county.his["hosp"].post(
        "Claim/$submit", claim(pid, cov, "hosp", [("10000.00", "A")], referral=onward, discharge="2026-03-20")
    )
    c = components(county_stay.json)
    assert c["basic-deductible"] == D("300.00")
    assert c["basic-insurance"] == D("7760.00")  # (10000 - 300) * 0.80
    down = county.referral(pid, performer="th-01", requester="hosp", kind="down-referral", based_on=onward)
    back = county.his["th-01"].post(
        "Claim/$submit", claim(pid, cov, "th-01", [("1000.00", "A")], referral=down, discharge="2026-03-30")
    )
    assert components(back.json)["basic-deductible"] == D("0.00")


def test_unreferred_out_of_county_penalty_and_no_safety_net(county: County) -> None:
    pid, cov = county.patient(poor=True)
    response = county.his["city"].post("Claim/$submit", claim(pid, cov, "city", [("20000.00", "A")]))
    c = components(response.json)
    assert c["basic-insurance"] == D("9500.00")  # (20000 - 1000) * (0.70 - 0.20)
    assert c["poverty-safety-net"] == D("0.00")
    assert c["medical-assistance"] > 0


@pytest.mark.parametrize(
    ("mutate", "status", "needle"),
    [
        (lambda c: c["item"][0].pop("category"), 422, "charge class"),
        (lambda c: c["item"][0].pop("net"), 422, "no amount"),
        (lambda c: c["item"][0]["net"].update(value=-5), 422, "negative"),
        (lambda c: c["item"][0]["net"].update(currency="USD"), 422, "CNY"),
        (lambda c: c["item"][0]["net"].update(value=10.005), 422, "whole fen"),
        (lambda c: c["billablePeriod"].update(start="2017-05-20", end="2017-06-01"), 422, "青山县"),
        (lambda c: c.update(patient={"reference": "Patient/nobody"}), 422, "Patient"),
        (lambda c: c["type"]["coding"][0].update(code="pharmacy"), 422, "institutional"),
        (lambda c: c["billablePeriod"].pop("end"), 422, "billablePeriod.end"),
        (lambda c: c.pop("status"), 400, "status"),
        (lambda c: c["item"][0]["net"].update(value="1000.00"), 400, "a decimal must be a JSON number"),
        (lambda c: c.update(referral=None), 400, "null is not allowed"),
        (lambda c: c.update(provider={"reference": "Organization/th-01"}), 403, "own organisation"),
        (lambda c: c["identifier"][0].update(value="v" * 201), 422, "at most 200 characters"),
    ],
)
def test_bad_claims_are_refused_and_nothing_is_stored(
    county: County, mutate: Callable, status: int, needle: str
) -> None:
    pid, cov = county.patient()
    body = claim(pid, cov, "hosp", [("1000.00", "A")])
    mutate(body)
    response = county.his["hosp"].post("Claim/$submit", body)
    assert response.status_code == status, response.json
    assert response.json["resourceType"] == "OperationOutcome"
    assert needle in str(response.json)
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(Settlement)) == 0
        assert s.scalar(select(func.count()).select_from(YearAccumulator)) == 0


def test_no_active_coverage_on_discharge_is_422(county: County) -> None:
    pid, cov = county.patient(coverage_from="2026-06-01")
    response = county.his["hosp"].post("Claim/$submit", claim(pid, cov, "hosp", [("1000.00", "A")]))
    assert response.status_code == 422
    assert "Coverage" in response.json["issue"][0]["diagnostics"]


def test_a_patient_without_an_insured_region_is_422_naming_it(county: County) -> None:
    pid, cov = county.patient()
    person = county.platform.get(f"Patient/{pid}").json
    moved = county.platform.put(f"Patient/{pid}", person | {"address": [{"city": "云州市"}]})
    assert moved.status_code == 200, moved.json
    response = county.his["hosp"].post("Claim/$submit", claim(pid, cov, "hosp", [("1000.00", "A")]))
    assert response.status_code == 422, response.json
    assert response.json["issue"][0]["expression"] == ["Claim.patient"]
    assert "Patient.address[0].district" in response.json["issue"][0]["diagnostics"]
    with database.session() as s:
        assert s.scalars(select(Settlement)).all() == []


def test_village_inpatient_is_refused(county: County) -> None:
    pid, cov = county.patient()
    response = county.platform.post("Claim/$submit", claim(pid, cov, "vc-01", [("100.00", "A")]))
    assert response.status_code == 422


def test_referral_checks(county: County) -> None:
    pid, cov = county.patient()
    other, _ = county.patient()
    wrong_patient = county.referral(other, performer="hosp")
    late = county.referral(pid, performer="hosp", authored="2026-04-01")
    for ref in (wrong_patient, late):
        response = county.his["hosp"].post(
            "Claim/$submit", claim(pid, cov, "hosp", [("100.00", "A")], referral=ref)
        )
        assert response.status_code == 422, ref


@pytest.mark.parametrize(
    "order", [(0, 1, 2), (2, 1, 0)], ids=["patient-coverage-claim", "claim-coverage-patient"]
)
def test_submit_bundle_with_what_the_claim_references(county: County, order: tuple[int, ...]) -> None:
    """The entries may come in any order, as in a transaction: a Coverage before the Patient it
    covers is stored after it."""
    from tests.functional.settlement_helpers import POVERTY_URL  # noqa: F401

    _, _ = county.patient()
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "urn:uuid:p1",
                "resource": {
                    "resourceType": "Patient",
                    "name": [{"family": "赵", "given": ["敏"]}],
                    "gender": "female",
                    "birthDate": "1980-02-02",
                    "address": [{"district": "青山县"}],
                },
            },
            {
                "fullUrl": "urn:uuid:c1",
                "resource": {
                    "resourceType": "Coverage",
                    "status": "active",
                    "type": {
                        "coding": [
                            {
                                "system": "http://referral-service.example/fhir/CodeSystem/coverage-type",
                                "code": "basic",
                            }
                        ]
                    },
                    "beneficiary": {"reference": "urn:uuid:p1"},
                    "payor": [{"reference": "Organization/bureau"}],
                    "period": {"start": "2020-01-01"},
                },
            },
            {"resource": claim("urn-p", "urn-c", "hosp", [("800.00", "A")], inpatient=False)},
        ],
    }
    bundle["entry"][2]["resource"]["patient"] = {"reference": "urn:uuid:p1"}
    bundle["entry"][2]["resource"]["insurance"][0]["coverage"] = {"reference": "urn:uuid:c1"}
    bundle["entry"] = [bundle["entry"][i] for i in order]
    response = county.his["hosp"].post("Claim/$submit", bundle)
    assert response.status_code == 200, response.json
    assert components(response.json)["basic-insurance"] == D("400.00")  # outpatient county 50%


def test_outpatient_cap_is_its_own_pot(county: County) -> None:
    pid, cov = county.patient()
    hosp = county.his["th-01"]
    paid = [
        components(
            hosp.post(
                "Claim/$submit",
                claim(pid, cov, "th-01", [("400.00", "A")], inpatient=False, discharge=f"2026-03-{d:02d}"),
            ).json
        )["basic-insurance"]
        for d in (1, 2, 3)
    ]
    assert paid == [D("240.00"), D("240.00"), D("20.00")]  # 60%, capped at 500 a year
    inpatient = hosp.post(
        "Claim/$submit", claim(pid, cov, "th-01", [("1200.00", "A")], discharge="2026-03-04")
    )
    assert components(inpatient.json)["basic-insurance"] == D("900.00")  # (1200 - 200) * 0.90


def test_claims_and_payment_batches_cannot_be_deleted(county: County) -> None:
    pid, cov = county.patient()
    response = county.his["hosp"].post("Claim/$submit", claim(pid, cov, "hosp", [("1000.00", "A")]))
    claim_id = response.json["request"]["reference"].split("/")[1]
    refused = county.his["hosp"].delete(f"Claim/{claim_id}")
    assert refused.status_code == 403
    assert county.his["hosp"].get(f"Claim/{claim_id}").status_code == 200


def test_a_settlement_writes_its_resources_access_link_and_audit_row_together(
    backend: str, county: County
) -> None:
    """PostgreSQL: a settlement is 4 statements. One loads the patient (with poverty registrations),
    provider and coverage and takes the claim's lock; one looks for an earlier settlement; one locks
    the accumulator (created if missing); one writes the Claim, ClaimResponse and
    ExplanationOfBenefit with the settlement row, its payables, the new accumulator totals, the
    provider's access link and the audit row. On both engines those rows are there afterwards."""
    other, other_cov = county.patient()
    warm = county.his["hosp"].post("Claim/$submit", claim(other, other_cov, "hosp", [("100.00", "A")]))
    assert warm.status_code == 200  # (the client's organisation facts are cached from here on)
    pid, cov = county.patient(poor=True)
    with database.session() as s:
        assert s.get(PatientAccess, (pid, "hosp")) is None
    with statements_sent() as seen:
        response = county.his["hosp"].post("Claim/$submit", claim(pid, cov, "hosp", [("5000.00", "A")]))
    assert response.status_code == 200, response.json
    mine = seen
    if backend == "postgresql":
        assert len(mine) == 4, mine
        assert all(word in mine[0] for word in ("pg_advisory_xact_lock", "poverty_registration", "coverage"))
        assert "ON CONFLICT" in mine[2] and "RETURNING" in mine[2] and "year_accumulator" in mine[2]
        writes = [s for s in mine if "INSERT INTO fhir_resource" in s]
        assert len(writes) == 1 and writes[0].count("INSERT INTO fhir_resource\n") == 3
        for table in ("audit_record", "patient_access", "INSERT INTO settlement", "INSERT INTO payable",
                      "UPDATE year_accumulator"):
            assert table in writes[0], table
        # The write statement is long (over psycopg's default 4096 bytes), yet its conversion to
        # PostgreSQL's placeholders is kept: the next settlement of the same shape parses nothing anew.
        from psycopg import _queries

        assert len(writes[0].encode()) > 4096
        pid2, cov2 = county.patient(poor=True)
        before = _queries._query2pg.cache_info()
        again = county.his["hosp"].post("Claim/$submit", claim(pid2, cov2, "hosp", [("5000.00", "A")]))
        after = _queries._query2pg.cache_info()
        assert again.status_code == 200
        assert after.misses == before.misses and after.hits >= before.hits + 4
    claim_id = response.json["request"]["reference"].split("/")[1]
    his = county.his["hosp"]
    assert his.get(f"Claim/{claim_id}").json["meta"]["versionId"] == "1"
    for query in (f"ClaimResponse?request=Claim/{claim_id}", f"ExplanationOfBenefit?claim=Claim/{claim_id}"):
        assert his.get(query).json["total"] == 1, query
    with database.session() as s:
        assert s.get(PatientAccess, (pid, "hosp")) is not None
        audits = s.execute(
            select(AuditRecord.query, AuditRecord.patient_id, AuditRecord.organization_id)
            .where(AuditRecord.entity_id == claim_id, AuditRecord.interaction == "operation")
        ).all()
        assert [tuple(a) for a in audits] == [("$submit", pid, "hosp")]
        settled = s.scalars(select(Settlement).where(Settlement.claim_id == claim_id)).one()
        assert (settled.total, settled.status, settled.sequence, settled.settled_at.tzinfo is not None) == (
            D("5000.00"), "active", 1, True)
        assert settled.trace
        assert all({"code", "zh", "en", "formula", "values"} <= set(t) for t in settled.trace)
        assert settlement_service.recompute(s, settled.id) == {}  # the stored row is what settle() gives
        acc = s.get(YearAccumulator, (pid, 2026))
        assert acc is not None and (acc.settlements, acc.inpatient_basic_paid) == (1, settled.basic_insurance)
        assert acc.patient_paid == settled.patient_pay
        payables = {p.fund: (p.amount, p.status, p.paid_amount) for p in settled.payables}
        assert payables["basic-insurance"] == (settled.basic_insurance, "unpaid", D("0.00"))
        assert sum(a for a, _, _ in payables.values()) == settled.total - settled.patient_pay


@pytest.mark.parametrize(
    ("parameter", "where"),
    [
        ('"x"', "Parameters.parameter"),
        ('{"name": "reason", "valueString": "x"}', "Parameters.parameter"),
        ('["x"]', "Parameters.parameter[0]"),
        ("[null]", "Parameters.parameter[0]"),
        ('[{"name": "reason", "valueString": "ok"}, 7]', "Parameters.parameter[1]"),
        ('[{"name": ["reason"]}]', "Parameters.parameter[0]"),
        ('[{"name": "reason", "valueString": 5}]', "Parameters.parameter[0].valueString"),
        ('[{"name": "reason", "valueString": {"text": "x"}}]', "Parameters.parameter[0].valueString"),
        (r'[{"name": "reason", "valueString": "\ud800"}]', "Parameters.parameter[0].valueString"),
        (r'[{"name": "reason", "valueString": "\u0000"}]', "Parameters.parameter[0].valueString"),
    ],
)
def test_reverse_with_malformed_parameters_is_400_and_reverses_nothing(
    county: County, parameter: str, where: str
) -> None:
    pid, cov = county.patient()
    hosp = county.his["hosp"]
    settled = hosp.post("Claim/$submit", claim(pid, cov, "hosp", [("1000.00", "A")]))
    claim_id = settled.json["request"]["reference"].split("/")[1]
    response = hosp.client.post(
        f"/fhir/Claim/{claim_id}/$reverse",
        data=f'{{"resourceType": "Parameters", "parameter": {parameter}}}'.encode(),
        content_type="application/fhir+json", headers=hosp._headers(),
    )
    assert response.status_code == 400, response.json
    assert response.json["resourceType"] == "OperationOutcome"
    assert response.json["issue"][0]["expression"] == [where]
    with database.session() as s:
        assert s.scalars(select(Settlement.status)).all() == ["active"]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ('"net": {"value": 1e999, "currency": "CNY"}', "out of range"),  # no Decimal context holds it
        ('"net": {"value": 1E+30, "currency": "CNY"}', "out of range"),
        ('"unitPrice": {"value": 1e999999, "currency": "CNY"}, "quantity": {"value": 1e999999}',
         "out of range"),  # the product overflows the decimal context
        ('"unitPrice": {"value": 1e600, "currency": "CNY"}, "quantity": {"value": 1e600}', "out of range"),
    ],
)
def test_absurd_amounts_are_422_not_500(county: County, item: str, message: str) -> None:
    pid, cov = county.patient()
    body = claim(pid, cov, "hosp", [("1000.00", "A")])
    del body["item"][0]["net"]
    body["item"][0]["net"] = "@"
    text = json.dumps(body).replace('"net": "@"', item)
    hosp = county.his["hosp"]
    response = hosp.client.post("/fhir/Claim/$submit", data=text.encode(),
                                content_type="application/fhir+json", headers=hosp._headers())
    assert response.status_code == 422, response.json
    assert message in response.json["issue"][0]["diagnostics"]
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(Settlement)) == 0
