"""Two counties' insurance offices: each sees only its own county's residents' settlements (DESIGN 8).

The FHIR API already limits an insurer's financial resources to the patients of its district (plus
those it is linked to). Its other views read the ledger: the settlement export (CSV, XLSX, its
listing and downloads), the insurer's web pages (totals, payments, export form, history) and fund
payment batches. Here 青山县 and 云州市 each have an insurance bureau; a resident of each county is
settled at home and at the other county's hospital (out-of-county care stays the business of the
patient's own county). Each insurer's views hold its residents' settlements only, to the fen, and
its export totals equal the ledger totals of what it sees.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient
from openpyxl import load_workbook
from sqlalchemy import select
from werkzeug.test import TestResponse

from referral_service.config import PROJECT_ROOT
from referral_service.domain import resident_id
from referral_service.domain.exports import ExportLog
from referral_service.domain.ledger import FUNDS, Settlement
from referral_service.domain.registry import Organization, Patient
from referral_service.exports import export_month
from referral_service.exports.settlements import KEYS, local_bounds
from referral_service.extensions import database
from referral_service.fhir.codes import BASE, COVERAGE_TYPE_SYSTEM, SETTLEMENT_COMPONENT_SYSTEM
from referral_service.services import settlement as settlement_service
from referral_service.services.accounts import create_user
from referral_service.services.indicators import local_today
from tests.functional.fhir_helpers import Fhir, organization, token_for
from tests.functional.settlement_helpers import County, claim, components

D = Decimal
QINGSHAN, YUNZHOU = "青山县", "云州市"
PASSWORD = "county-scope-password"
INSURER_SCOPES = "system/ExplanationOfBenefit.rs system/Claim.rs system/PaymentReconciliation.cruds"


@dataclass
class Office:
    """One county's insurance bureau: its API client, its web user and what it should see."""

    org: str
    district: str
    api: Fhir
    user: str
    settlements: dict[str, dict[str, D]] = field(default_factory=dict)  # claim id -> components
    reversed: set[str] = field(default_factory=set)  # claim ids reversed (in the period)

    def expected(self) -> dict[str, D]:
        """Per fund: settled minus reversed (both inside the period), from the ClaimResponses."""
        out = {f: D("0.00") for f in FUNDS}
        for claim_id, parts in self.settlements.items():
            for fund in FUNDS:
                amount = parts.get(fund, D("0.00"))
                out[fund] += amount - (amount if claim_id in self.reversed else D("0.00"))
        return out


@dataclass
class World:
    app: Flask
    county: County
    offices: dict[str, Office]
    claims: dict[str, str]  # label -> Claim id
    period: tuple[date, date]

    @property
    def query(self) -> str:
        return f"from={self.period[0].isoformat()}&to={self.period[1].isoformat()}"

    def web(self, username: str) -> FlaskClient:
        client = self.app.test_client()
        with client.session_transaction() as sess:
            sess["lang"] = "en"
        response = client.post("/login", data={"username": username, "password": PASSWORD})
        assert response.status_code == 302, response.get_data(as_text=True)
        return client


@pytest.fixture
def two_policies(tmp_path: Path) -> Iterator[None]:
    """The demo policy for 青山县 and the same terms for 云州市 (a policy is per insured region)."""
    folder = tmp_path / "policies"
    folder.mkdir()
    source = PROJECT_ROOT / "config" / "policies" / "qingshan-2018.yaml"
    qingshan = yaml.safe_load(source.read_text(encoding="utf-8"))
    yunzhou = dict(qingshan, id="yunzhou-2018", region=YUNZHOU, name="云州市城乡居民医保一站式结算政策")
    for name, policy in (("qingshan.yaml", qingshan), ("yunzhou.yaml", yunzhou)):
        (folder / name).write_text(yaml.safe_dump(policy, allow_unicode=True), encoding="utf-8")
    settlement_service.configure(folder)
    try:
        yield
    finally:
        settlement_service.configure(PROJECT_ROOT / "config" / "policies")


def _resident(county: County, district: str, payor: str, seq: int) -> tuple[str, str]:
    number = resident_id.generate("620421", date(1970, 5, 5), "female", 400 + seq)
    body = {
        "resourceType": "Patient",
        "identifier": [{"system": f"{BASE}/sid/resident-id", "value": number}],
        "name": [{"family": "赵" if district == QINGSHAN else "钱", "given": ["敏"]}],
        "gender": "female",
        "birthDate": "1970-05-05",
        "address": [{"district": district}],
    }
    created = county.platform.post("Patient", body)
    assert created.status_code == 201, created.json
    pid = created.json["id"]
    coverage = county.platform.post("Coverage", {
        "resourceType": "Coverage", "status": "active",
        "type": {"coding": [{"system": COVERAGE_TYPE_SYSTEM, "code": "basic"}]},
        "beneficiary": {"reference": f"Patient/{pid}"},
        "payor": [{"reference": f"Organization/{payor}"}],
        "period": {"start": "2018-01-01"},
    })
    assert coverage.status_code == 201, coverage.json
    return pid, coverage.json["id"]


@pytest.fixture
def world(
    app: Flask, client: FlaskClient, make_api_client: Callable[..., tuple[str, str]], tmp_path: Path,
    two_policies: None,
) -> World:
    app.config["EXPORT_DIR"] = str(tmp_path / "exports")
    county = County(client, make_api_client)  # bureau (青山县), hosp (青山县), city (云州市), ...
    yz = organization("yz-bureau", level=None, kind="insurer", district=YUNZHOU, name="云州市医疗保障局")
    assert county.platform.put("Organization/yz-bureau", yz).status_code == 201
    offices: dict[str, Office] = {}
    for key, org, district in (("qs", "bureau", QINGSHAN), ("yz", "yz-bureau", YUNZHOU)):
        cid, secret = make_api_client(f"{key}-insurance", INSURER_SCOPES, org)
        with database.unit_of_work() as session:
            create_user(session, username=f"{key}-insurer", password=PASSWORD, role="insurer",
                        organization_id=org)
        offices[key] = Office(org, district, Fhir(client, token_for(client, cid, secret)), f"{key}-insurer")
    residents = {
        "qs": _resident(county, QINGSHAN, "bureau", 1),
        "yz": _resident(county, YUNZHOU, "yz-bureau", 2),
    }
    claims: dict[str, str] = {}
    # (label, office, hospital, amount): each resident at home and at the other county's hospital.
    plan = (
        ("qs@home", "qs", "hosp", "10500.00"),
        ("qs@city", "qs", "city", "3333.33"),  # out of county, unreferred: 50 % instead of 70 %
        ("yz@home", "yz", "city", "7777.77"),
        ("yz@county", "yz", "hosp", "5555.55"),  # 青山县's hospital, 云州市's resident
    )
    for label, office, hospital, amount in plan:
        pid, cov = residents[office]
        response = county.his[hospital].post(
            "Claim/$submit", claim(pid, cov, hospital, [(amount, "A")], discharge="2026-11-20"))
        assert response.status_code in (200, 201), response.json
        claim_id = response.json["request"]["reference"].split("/")[1]
        claims[label] = claim_id
        offices[office].settlements[claim_id] = components(response.json)
    reversal = county.his["city"].post(
        f"Claim/{claims['qs@city']}/$reverse",
        {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": "录入错误"}]},
    )
    assert reversal.status_code == 200, reversal.json
    offices["qs"].reversed.add(claims["qs@city"])
    today = local_today()
    return World(app, county, offices, claims, (today - timedelta(days=1), today + timedelta(days=1)))


def ledger_totals(district: str, period: tuple[date, date]) -> dict[str, D]:
    """Independently of the views: per fund, settled minus reversed in the period, residents of `district`."""
    lo, hi = local_bounds(*period)
    out = {f: D("0.00") for f in FUNDS}
    columns = {"basic-insurance": Settlement.basic_insurance, "critical-illness": Settlement.critical_illness,
               "medical-assistance": Settlement.medical_assistance,
               "poverty-safety-net": Settlement.poverty_safety_net}
    with database.session() as db:
        rows = db.execute(
            select(Settlement, Patient.district).join(Patient, Patient.id == Settlement.patient_id)
        ).all()
        for settlement, patient_district in rows:
            if patient_district != district:
                continue
            for fund, column in columns.items():
                amount = getattr(settlement, column.key)
                if lo <= settlement.settled_at < hi:
                    out[fund] += amount
                if settlement.reversed_at is not None and lo <= settlement.reversed_at < hi:
                    out[fund] -= amount
    return out


def get(client: FlaskClient, url: str, headers: dict[str, str] | None = None) -> TestResponse:
    response = client.get(url, headers=headers or {})
    response.get_data()
    response.close()
    return response


def bearer(office: Office) -> dict[str, str]:
    return {"Authorization": f"Bearer {office.api.token}"}


def csv_rows(body: bytes) -> list[dict[str, str]]:
    assert body.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(body[3:].decode("utf-8"), newline="")))
    return [dict(zip(KEYS, row, strict=True)) for row in rows[1:]]


def xlsx_rows(body: bytes, tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "download.xlsx"
    path.write_bytes(body)
    book = load_workbook(path, read_only=True)
    try:
        sheet = book["明细"]
        rows = list(sheet.iter_rows(values_only=True))
    finally:
        book.close()
    return [dict(zip(KEYS, row, strict=True)) for row in rows[1:]]


def sums(rows: list[dict[str, Any]]) -> dict[str, D]:
    out = {f: D("0.00") for f in FUNDS}
    for row in rows:
        out[row["fund"]] += D(str(row["amount"])).quantize(D("0.01"))
    return out


def claim_ids(rows: list[dict[str, Any]]) -> set[str]:
    return {str(row["claim_id"]) for row in rows}


# ------------------------------------------------------------------------------------ the exports


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_each_insurers_export_holds_its_own_residents_only(
    world: World, client: FlaskClient, tmp_path: Path, fmt: str
) -> None:
    for key, office in world.offices.items():
        response = get(client, f"/exports/settlements?{world.query}&format={fmt}", headers=bearer(office))
        assert response.status_code == 200, response.data
        rows = csv_rows(response.data) if fmt == "csv" else xlsx_rows(response.data, tmp_path)
        assert claim_ids(rows) == set(office.settlements), key  # its residents, wherever treated
        expected = office.expected()
        assert sums(rows) == expected, key
        assert expected == ledger_totals(office.district, world.period), key  # file = ledger, to the fen
        manifest_url = response.headers["Link"].split(";")[0].strip("<>")
        manifest = get(client, manifest_url, headers=bearer(office)).json
        assert {f: D(v) for f, v in manifest["totals"].items()} == expected, key
    qs, yz = world.offices["qs"], world.offices["yz"]
    assert qs.expected()["basic-insurance"] == D("8000.00")  # (10500 - 500) x 0.80; the city stay reversed
    assert yz.expected()["basic-insurance"] == D("7777.77")  # 4744.44 + 3033.33
    assert yz.expected()["critical-illness"] == D("333.33")


def test_one_hospital_of_the_other_county_shows_only_the_insurers_residents(
    world: World, client: FlaskClient
) -> None:
    qs, yz = world.offices["qs"], world.offices["yz"]
    at_city = csv_rows(get(client, f"/exports/settlements?{world.query}&hospital=city",
                           headers=bearer(qs)).data)
    assert claim_ids(at_city) == {world.claims["qs@city"]}
    assert {r["event"] for r in at_city} == {"settlement", "reversal"}
    assert sums(at_city) == {f: D("0.00") for f in FUNDS}  # settled and reversed in the period
    at_county = csv_rows(get(client, f"/exports/settlements?{world.query}&hospital=hosp",
                             headers=bearer(yz)).data)
    assert claim_ids(at_county) == {world.claims["yz@county"]}


def test_an_insurer_neither_lists_nor_downloads_the_other_countys_exports(
    world: World, client: FlaskClient
) -> None:
    qs, yz = world.offices["qs"], world.offices["yz"]
    made = get(client, f"/exports/settlements?{world.query}", headers=bearer(qs))
    assert made.status_code == 200
    export_id = made.headers["X-Export-Id"]
    name = made.headers["Content-Disposition"].split("filename=", 1)[1].strip('"')
    assert get(client, f"/exports/{export_id}/{name}", headers=bearer(qs)).status_code == 200
    assert get(client, f"/exports/{export_id}/{name}", headers=bearer(yz)).status_code == 404
    manifest_url = made.headers["Link"].split(";")[0].strip("<>")
    assert get(client, manifest_url, headers=bearer(yz)).status_code == 404
    assert [e["id"] for e in get(client, "/exports", headers=bearer(qs)).json["exports"]] == [export_id]
    assert get(client, "/exports", headers=bearer(yz)).json["exports"] == []


# ------------------------------------------------------------------------------------ web pages


def _money(amount: D) -> str:
    return f"{amount:,.2f}"


def _amount(cell: str) -> str:
    """A money cell's figures without its currency sign ("CN¥8,000.00" -> "8,000.00")."""
    return re.sub(r"[^0-9.,-]", "", cell)


def test_each_insurers_settlement_totals_page(world: World) -> None:
    for key, office in world.offices.items():
        page = world.web(office.user).get(f"/insurer/settlements?{world.query}")
        assert page.status_code == 200
        html = page.get_data(as_text=True)
        expected = office.expected()
        for fund in FUNDS:
            cell = re.search(rf'data-fund="{fund}">.*?<td class="num"[^>]*>([^<]*)<', html, re.S)
            assert cell is not None and _amount(cell.group(1)) == _money(expected[fund]), (key, fund)
        grand = re.search(r'id="grand-total">([^<]*)<', html)
        assert grand is not None and _amount(grand.group(1)) == _money(sum(expected.values(), D("0.00")))
    qs_city = world.web("qs-insurer").get(f"/insurer/settlements?{world.query}&hospital=city")
    html = qs_city.get_data(as_text=True)
    assert re.search(r'id="grand-total">[^<]*0\.00', html)  # 青山县's resident, settled and reversed
    assert "4,744.44" not in html  # 云州市's resident at the city hospital


def test_each_insurers_payments_page(world: World) -> None:
    yz = world.offices["yz"]
    paid = yz.api.post("PaymentReconciliation", _batch(world, yz, "yz@county", "hosp"))
    assert paid.status_code == 201, paid.json
    as_of = (world.period[1] + timedelta(days=1)).isoformat()
    qs_html = world.web("qs-insurer").get(f"/insurer/payments?as_of={as_of}").get_data(as_text=True)
    yz_html = world.web("yz-insurer").get(f"/insurer/payments?as_of={as_of}").get_data(as_text=True)
    qs_unpaid = qs_html.split('id="unpaid"', 1)[1].split("</table>", 1)[0]
    yz_unpaid = yz_html.split('id="unpaid"', 1)[1].split("</table>", 1)[0]
    assert "8,000.00" in qs_unpaid and "4,744.44" not in qs_unpaid
    assert "4,744.44" in yz_unpaid and "8,000.00" not in yz_unpaid
    assert "3,033.33" not in yz_unpaid  # paid by the batch below
    qs_batches = qs_html.split('id="batches"', 1)[1].split("</table>", 1)[0]
    yz_batches = yz_html.split('id="batches"', 1)[1].split("</table>", 1)[0]
    assert paid.json["id"] in yz_batches and "3,033.33" in yz_batches
    assert paid.json["id"] not in qs_batches


def test_each_insurers_export_form_history_and_result(world: World) -> None:
    qs_web, yz_web = world.web("qs-insurer"), world.web("yz-insurer")
    start, end = (d.isoformat() for d in world.period)
    posted = qs_web.post("/insurer/exports", data={"from": start, "to": end, "format": "csv"})
    assert posted.status_code == 303, posted.get_data(as_text=True)
    result = qs_web.get(posted.headers["Location"])
    html = result.get_data(as_text=True).split('id="export-result"', 1)[1].split("</section>", 1)[0]
    assert html.count("matches") == len(FUNDS)  # file totals = the settlements page's totals
    assert _money(world.offices["qs"].expected()["basic-insurance"]) in html
    link = next(x for x in re.findall(r'href="(/exports/[^"]+)"', html) if x.endswith(".csv"))
    data = qs_web.get(link)
    assert claim_ids(csv_rows(data.get_data())) == set(world.offices["qs"].settlements)
    data.close()
    assert yz_web.get(posted.headers["Location"]).status_code == 404  # another county's export
    denied = yz_web.get(link)
    assert denied.status_code == 404
    denied.close()
    yz_history = yz_web.get("/insurer/exports").get_data(as_text=True).split('id="history"', 1)[1]
    assert f"{start} ~ {end}" not in yz_history.split("</table>", 1)[0]
    qs_history = qs_web.get("/insurer/exports").get_data(as_text=True).split('id="history"', 1)[1]
    assert f"{start} ~ {end}" in qs_history.split("</table>", 1)[0]


# ------------------------------------------------------------------------------------ payments


def _batch(world: World, office: Office, label: str, hospital: str) -> dict[str, Any]:
    claim_id = world.claims[label]
    owner = next(o for o in world.offices.values() if claim_id in o.settlements)
    amount = owner.settlements[claim_id]["basic-insurance"]
    return {
        "resourceType": "PaymentReconciliation", "status": "active",
        "period": {"start": world.period[0].isoformat(), "end": world.period[1].isoformat()},
        "created": f"{world.period[1].isoformat()}T09:00:00+08:00",
        "paymentIssuer": {"reference": f"Organization/{office.org}"},
        "requestor": {"reference": f"Organization/{hospital}"},
        "outcome": "complete", "paymentDate": local_today().isoformat(),
        "paymentAmount": {"value": float(amount), "currency": "CNY"},
        "detail": [{
            "request": {"reference": f"Claim/{claim_id}"},
            "type": {"coding": [{"system": SETTLEMENT_COMPONENT_SYSTEM, "code": "basic-insurance"}]},
            "payee": {"reference": f"Organization/{hospital}"},
            "amount": {"value": float(amount), "currency": "CNY"},
        }],
    }


def test_a_payment_batch_covers_only_settlements_its_insurer_sees(world: World) -> None:
    qs, yz = world.offices["qs"], world.offices["yz"]
    # 青山县's bureau may not pay its own county hospital for 云州市's resident, nor the reverse.
    refused = qs.api.post("PaymentReconciliation", _batch(world, qs, "yz@county", "hosp"))
    assert refused.status_code == 422, refused.json
    assert "no active settlement" in refused.json["issue"][0]["diagnostics"]
    refused = yz.api.post("PaymentReconciliation", _batch(world, yz, "qs@home", "hosp"))
    assert refused.status_code == 422, refused.json
    # Each pays for its own residents, wherever they were treated.
    assert yz.api.post("PaymentReconciliation", _batch(world, yz, "yz@county", "hosp")).status_code == 201
    assert qs.api.post("PaymentReconciliation", _batch(world, qs, "qs@home", "hosp")).status_code == 201


# ------------------------------------------------------------------------------- monthly run


def test_the_monthly_run_gives_each_bureau_its_own_countys_files(
    world: World, client: FlaskClient, tmp_path: Path
) -> None:
    with database.unit_of_work() as session:  # the month holding the settlements (all made today)
        paths = export_month(session, local_today(), out_dir=tmp_path / "monthly")
    network = {p for p in paths if p.parent == tmp_path / "monthly"}
    assert len(network) == 3 * len(FUNDS)  # the whole network: CSV, XLSX, manifest per fund
    month = (local_today().replace(day=1), world.period[1])
    for key, office in world.offices.items():
        folder = tmp_path / "monthly" / f"bureau-{office.org}"
        found = {f: D("0.00") for f in FUNDS}
        claims: set[str] = set()
        for fund in FUNDS:
            (csv_path,) = [p for p in paths if p.parent == folder and p.suffix == ".csv" and fund in p.name]
            rows = csv_rows(csv_path.read_bytes())
            claims |= claim_ids(rows)
            found[fund] = sums(rows)[fund]
        assert claims == set(office.settlements), key
        assert found == office.expected() == ledger_totals(office.district, month), key
        listed = get(client, "/exports", headers=bearer(office)).json["exports"]
        assert len(listed) == len(FUNDS), key  # its own monthly files: not the other's, nor the network's
        assert all(e["parameters"]["from"] == month[0].isoformat() for e in listed)
        other = next(o for o in world.offices.values() if o is not office)
        with database.session() as db:
            foreign = db.scalars(select(ExportLog).where(ExportLog.organization_id == other.org)).first()
            assert foreign is not None
            url = f"/exports/{foreign.id}/{foreign.files[0]['name']}"
        assert get(client, url, headers=bearer(other)).status_code == 200
        assert get(client, url, headers=bearer(office)).status_code == 404


def test_a_bureau_without_a_district_sees_what_the_api_shows_it(
    world: World, client: FlaskClient, make_api_client: Callable[..., tuple[str, str]]
) -> None:
    """No district, no county: the API shows such a bureau only patients linked to it (none here), and
    so do its exports, for the one rule; the platform still sees every settlement."""
    with database.unit_of_work() as session:
        session.add(Organization(id="bureau-nowhere", name="无辖区医保局", district="", kind="insurer"))
    cid, secret = make_api_client("nowhere-insurance", INSURER_SCOPES, "bureau-nowhere")
    nowhere = {"Authorization": f"Bearer {token_for(client, cid, secret)}"}
    assert get(client, "/fhir/ExplanationOfBenefit?_summary=count", headers=nowhere).json["total"] == 0
    exported = get(client, f"/exports/settlements?{world.query}", headers=nowhere)
    assert exported.status_code == 200 and csv_rows(exported.data) == []
    everyone = world.county.platform.get("ExplanationOfBenefit?_summary=count").json["total"]
    assert everyone == sum(len(o.settlements) for o in world.offices.values())
