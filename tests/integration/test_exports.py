"""Settlement exports: totals equal the ledger to the fen, CSV / XLSX / manifest, masking, neutralisation."""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask import Flask
from openpyxl import load_workbook
from sqlalchemy import String, func, select

from referral_service.config import PROJECT_ROOT
from referral_service.domain.base import new_id
from referral_service.domain.errors import BadRequest, Forbidden
from referral_service.domain.exports import ExportLog, Recipient, mask_identity
from referral_service.domain.ledger import FUNDS, Payable, Settlement
from referral_service.domain.registry import Organization, Patient
from referral_service.exports import SettlementExportRequest, export_settlements, monthly_export
from referral_service.exports.settlements import COLUMNS, FUND_COLUMNS, KEYS, local_bounds
from referral_service.exports.writer import neutralise
from referral_service.extensions import database
from referral_service.fhir.store import ResourceStore
from referral_service.monitoring.jobs import load_jobs, run_job

INSURER = Recipient("insurer", "user", "insurer", "insurer-org")
MONITOR = Recipient("monitor", "user", "monitor", "poverty-office")
D = Decimal
MARCH = (date(2026, 3, 1), date(2026, 3, 31))


def local(text: str) -> datetime:
    """An Asia/Shanghai wall-clock time as aware UTC."""
    return (datetime.fromisoformat(text) - timedelta(hours=8)).replace(tzinfo=UTC)


class LedgerFactory:
    """Creates organisations, patients and settlements (with payables) straight in the ledger tables."""

    def __init__(self) -> None:
        self.counter = 0

    def org(
        self,
        org_id: str,
        name: str | None = None,
        *,
        level: str | None = "county",
        kind: str | None = None,
        district: str = "青山县",
    ) -> str:
        with database.unit_of_work() as session:
            if session.get(Organization, org_id) is None:
                session.add(
                    Organization(
                        id=org_id, name=name or org_id, facility_level=level, kind=kind, district=district
                    )
                )
                # published in the FHIR store too, so references to it resolve
                ResourceStore(session).save(
                    "Organization",
                    {"resourceType": "Organization", "id": org_id, "name": name or org_id},
                    method="PUT",
                    owner_org_id=None,
                )
        return org_id

    def patient(
        self,
        patient_id: str,
        resident_id: str | None = "62042119900307002X",
        *,
        family: str = "王",
        given: str = "芳",
        district: str = "青山县",
    ) -> str:
        with database.unit_of_work() as session:
            session.add(
                Patient(
                    id=patient_id,
                    resident_id=resident_id,
                    family_name=family,
                    given_name=given,
                    gender="female",
                    district=district,
                )
            )
        return patient_id

    def settlement(
        self,
        provider: str,
        patient: str,
        settled_at: datetime,
        *,
        basic: str = "0",
        critical: str = "0",
        assistance: str = "0",
        safety_net: str = "0",
        patient_pay: str = "100",
        reversed_at: datetime | None = None,
        discharge: date | None = None,
    ) -> str:
        """A settlement whose components add up: B1 + B2 + B3 + B4 + P = T."""
        self.counter += 1
        parts = {
            "basic-insurance": D(basic),
            "critical-illness": D(critical),
            "medical-assistance": D(assistance),
            "poverty-safety-net": D(safety_net),
        }
        total = sum(parts.values(), D(patient_pay))
        sid = new_id()
        with database.unit_of_work() as session:
            session.add(
                Settlement(
                    id=sid,
                    claim_id=f"claim-{self.counter}",
                    claim_response_id=f"cr-{self.counter}",
                    eob_id=f"eob-{self.counter}",
                    provider_id=provider,
                    identifier_system="urn:his",
                    identifier_value=str(self.counter),
                    content_hash="x" * 64,
                    patient_id=patient,
                    claim_type="inpatient",
                    facility_level="county",
                    discharge_date=discharge or settled_at.date(),
                    accumulator_year=settled_at.year,
                    registered_poor=bool(parts["medical-assistance"]),
                    referred=True,
                    unreferred_out_of_county=False,
                    policy_id="qingshan",
                    policy_version="2018.1",
                    total=total,
                    eligible=total,
                    basic_deductible=D("0"),
                    class_b_self_pay=D("0"),
                    out_of_list=D("0"),
                    patient_pay=D(patient_pay),
                    deductible_borne=D("0"),
                    ci_r1_added=D("0"),
                    trace=[],
                    status="reversed" if reversed_at else "active",
                    sequence=self.counter,
                    settled_at=settled_at,
                    reversed_at=reversed_at,
                    **{FUND_COLUMNS[f]: v for f, v in parts.items()},
                )
            )
            session.flush()
            for fund, amount in parts.items():
                if amount > 0:
                    session.add(
                        Payable(
                            settlement_id=sid,
                            fund=fund,
                            hospital_id=provider,
                            amount=amount,
                            status="cancelled" if reversed_at else "unpaid",
                        )
                    )
        return sid


@pytest.fixture
def ledger(app: Flask) -> LedgerFactory:
    """Factory for ledger rows."""
    return LedgerFactory()


@pytest.fixture
def march(ledger: LedgerFactory) -> dict[str, str]:
    """Two hospitals, settlements around March 2026 with reversals inside and outside the period."""
    ledger.org("insurer-org", "青山县医疗保障局", level=None, kind="insurer")
    h1 = ledger.org("county-hosp", "青山县人民医院")
    h2 = ledger.org("tcm-hosp", '=HYPERLINK("http://evil")')  # a name that would run as a formula
    p1 = ledger.patient("p1", "62042119900307002X", family="@王", given="芳")
    p2 = ledger.patient("p2", None, family="-李", given="四")
    ids = {
        # 1 March 00:30 local = 28 Feb 16:30 UTC: inside March by local date
        "first": ledger.settlement(
            h1,
            p1,
            local("2026-03-01T00:30:00"),
            basic="1000.10",
            critical="200.05",
            assistance="50.01",
            safety_net="10.00",
            patient_pay="300.33",
        ),
        "reversed_inside": ledger.settlement(
            h1,
            p2,
            local("2026-03-10T09:00:00"),
            basic="800.00",
            patient_pay="200.00",
            reversed_at=local("2026-03-20T10:00:00"),
        ),
        "reversed_from_feb": ledger.settlement(
            h2,
            p1,
            local("2026-02-27T12:00:00"),
            basic="123.45",
            critical="10.10",
            reversed_at=local("2026-03-02T08:00:00"),
        ),
        "reversed_in_april": ledger.settlement(
            h2, p2, local("2026-03-31T23:59:00"), basic="77.77", reversed_at=local("2026-04-02T08:00:00")
        ),
        # 1 April 00:10 local is 31 March 16:10 UTC: outside March
        "april": ledger.settlement(h1, p1, local("2026-04-01T00:10:00"), basic="999.99"),
        "february": ledger.settlement(h1, p2, local("2026-02-28T23:50:00"), basic="555.55"),
    }
    return ids


def ledger_totals(start: date, end: date) -> dict[str, Decimal]:
    """Independently from the exporter: per fund, settled in the period minus reversed in the period."""
    lo, hi = local_bounds(start, end)
    out = {}
    with database.unit_of_work() as session:
        for fund, column in FUND_COLUMNS.items():
            col = getattr(Settlement, column)
            settled = sum(
                session.scalars(select(col).where(Settlement.settled_at >= lo, Settlement.settled_at < hi)),
                D("0"),
            )
            reversed_ = sum(
                session.scalars(select(col).where(Settlement.reversed_at >= lo, Settlement.reversed_at < hi)),
                D("0"),
            )
            out[fund] = settled - reversed_
    return out


def run_export(tmp_path: Path, recipient: Recipient = INSURER, **kw: Any) -> Any:
    request = SettlementExportRequest(*kw.pop("period", MARCH), **kw)
    with database.unit_of_work() as session:
        return export_settlements(session, recipient, request, tmp_path)


def csv_rows(path: Path) -> list[dict[str, str]]:
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    reader = csv.reader(io.StringIO(raw[3:].decode("utf-8"), newline=""))
    header = next(reader)
    assert header == [c.title for c in COLUMNS]
    return [dict(zip(KEYS, row, strict=True)) for row in reader]


def xlsx_details(path: Path) -> Iterator[dict[str, Any]]:
    book = load_workbook(path, read_only=True)
    assert book.sheetnames[0] == "汇总" and book.sheetnames[1] == "明细"
    rows = book["明细"].iter_rows(values_only=True)
    header = next(rows)
    assert list(header) == [c.title for c in COLUMNS]
    for row in rows:
        yield dict(zip(KEYS, row, strict=True))
    book.close()


def test_totals_equal_the_ledger_including_reversals_in_the_period(
    march: dict[str, str], tmp_path: Path
) -> None:
    result = run_export(tmp_path, formats=("csv", "xlsx"))
    expected = ledger_totals(*MARCH)
    assert expected["basic-insurance"] == D("1000.10") + D("800.00") - D("800.00") - D("123.45") + D("77.77")
    manifest = result.manifest
    assert {f: D(v) for f, v in manifest["totals"].items()} == expected
    rows = csv_rows(result.files[0])
    assert len(rows) == manifest["rows"] == sum(manifest["rows_by_fund"].values())
    for fund in FUNDS:
        assert sum((D(r["amount"]) for r in rows if r["fund"] == fund), D("0")) == expected[fund]
    by_settlement = {(r["settlement_id"], r["event"], r["fund"]): D(r["amount"]) for r in rows}
    # a settlement reversed inside the period appears twice: positive, then negative
    assert by_settlement[(march["reversed_inside"], "settlement", "basic-insurance")] == D("800.00")
    assert by_settlement[(march["reversed_inside"], "reversal", "basic-insurance")] == D("-800.00")
    assert by_settlement[(march["reversed_from_feb"], "reversal", "critical-illness")] == D("-10.10")
    assert (march["reversed_from_feb"], "settlement", "basic-insurance") not in by_settlement
    assert (march["reversed_in_april"], "settlement", "basic-insurance") in by_settlement
    assert not any(r["settlement_id"] in (march["april"], march["february"]) for r in rows)
    reversal = next(
        r for r in rows if r["event"] == "reversal" and r["settlement_id"] == march["reversed_inside"]
    )
    assert reversal["total"] == "-1000.00" and reversal["patient_pay"] == "-200.00"
    assert reversal["event_time"] == "2026-03-20 10:00:00"  # Asia/Shanghai wall clock
    first = next(r for r in rows if r["settlement_id"] == march["first"])
    assert first["event_time"] == "2026-03-01 00:30:00"
    # zero shares are left out: the reversed-inside settlement pays nothing from the other funds
    assert {r["fund"] for r in rows if r["settlement_id"] == march["reversed_inside"]} == {"basic-insurance"}


def test_xlsx_opens_with_openpyxl_and_its_sums_match(march: dict[str, str], tmp_path: Path) -> None:
    result = run_export(tmp_path, formats=("xlsx",))
    expected = ledger_totals(*MARCH)
    details = list(xlsx_details(result.files[0]))
    assert len(details) == result.manifest["rows"]
    for fund in FUNDS:
        total = sum((D(str(r["amount"])) for r in details if r["fund"] == fund), D("0"))
        assert total.quantize(D("0.01")) == expected[fund]
    book = load_workbook(result.files[0], read_only=True)
    summary = list(book["汇总"].iter_rows(values_only=True))
    book.close()
    fund_lines = {
        row[0]: row
        for row in summary
        if row and row[0] in FUNDS and len(row) > 3 and row[3] is not None and not isinstance(row[2], str)
    }
    for fund in FUNDS:
        assert D(str(fund_lines[fund][3])).quantize(D("0.01")) == expected[fund]
    # the per-hospital table sums to the same totals
    hospital_rows = [row for row in summary if row and row[0] in FUNDS and isinstance(row[2], str)]
    for fund in FUNDS:
        got = sum((D(str(r[4])) for r in hospital_rows if r[0] == fund), D("0")).quantize(D("0.01"))
        assert got == expected[fund]


def test_csv_starts_with_a_bom_and_parses(march: dict[str, str], tmp_path: Path) -> None:
    result = run_export(tmp_path, fund="basic-insurance")
    path = result.files[0]
    assert path.name == "settlements_basic-insurance_all_2026-03-01_2026-03-31.csv"
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
    assert path.read_bytes().count(b"\n") == len(csv_rows(path)) + 1  # LF records, as COPY writes
    rows = csv_rows(path)
    assert {r["fund"] for r in rows} == {"basic-insurance"}
    assert "青山县人民医院" in {r["hospital_name"] for r in rows}


def test_identity_numbers_are_masked_unless_the_role_allows_them(
    march: dict[str, str], tmp_path: Path
) -> None:
    masked = csv_rows(run_export(tmp_path / "m").files[0])
    ids = {r["resident_id"] for r in masked}
    assert ids == {"620421********002X", ""}
    full = csv_rows(run_export(tmp_path / "f", identity="full").files[0])
    assert {r["resident_id"] for r in full} == {"62042119900307002X", ""}
    with pytest.raises(Forbidden):
        run_export(tmp_path / "x", recipient=MONITOR, identity="full")
    with database.unit_of_work() as session:
        logged = session.scalars(select(ExportLog.identity).order_by(ExportLog.created_at)).all()
    assert logged == ["masked", "full"]
    assert mask_identity("62042119900307002X") == "620421********002X"
    assert mask_identity("12345") == "*****"


def test_formula_cells_are_neutralised_in_csv_and_xlsx(march: dict[str, str], tmp_path: Path) -> None:
    result = run_export(tmp_path, formats=("csv", "xlsx"))
    rows = csv_rows(result.files[0])
    names = {r["hospital_name"] for r in rows}
    assert '\'=HYPERLINK("http://evil")' in names
    patients = {r["patient_name"] for r in rows}
    assert patients == {"'@王芳", "'-李四"}
    # numbers are not text: a negative amount stays a number
    assert any(r["amount"].startswith("-") for r in rows)
    book = load_workbook(result.files[1])  # full mode: formulas would be kept as formulas
    sheet = book["明细"]
    texts = [c for row in sheet.iter_rows(min_row=2) for c in row if isinstance(c.value, str)]
    assert texts and all(c.data_type == "s" for c in texts)
    assert not any(c.value[0] in "=+-@" for c in texts)
    amounts = [row[KEYS.index("amount")].value for row in sheet.iter_rows(min_row=2)]
    assert any(isinstance(a, int | float | Decimal) and a < 0 for a in amounts)
    book.close()
    assert neutralise("=1+2") == "'=1+2" and neutralise("+1") == "'+1" and neutralise("\tx") == "'\tx"
    assert neutralise("正常") == "正常" and neutralise("") == ""


def test_manifest_checksums_match_the_files_and_the_export_log(march: dict[str, str], tmp_path: Path) -> None:
    result = run_export(tmp_path, formats=("csv", "xlsx"), hospital_id="county-hosp")
    manifest = orjson.loads(result.manifest_path.read_bytes())
    assert manifest == result.manifest
    assert manifest["parameters"]["hospital"] == "county-hosp"
    assert {h["hospital_id"] for h in manifest["totals_by_hospital"]} == {"county-hosp"}
    for entry in manifest["files"]:
        data = (tmp_path / entry["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert len(data) == entry["bytes"]
    with database.unit_of_work() as session:
        log = session.get(ExportLog, result.export_id)
        assert log is not None
        assert log.actor_name == "insurer" and log.role == "insurer" and log.kind == "settlements"
        assert log.parameters["from"] == "2026-03-01"
        assert [f["sha256"] for f in log.files if "sha256" in f] == [f["sha256"] for f in manifest["files"]]
        assert log.totals == manifest["totals"]


def test_empty_period_gives_header_only_files_and_zero_totals(march: dict[str, str], tmp_path: Path) -> None:
    result = run_export(tmp_path, period=(date(2025, 1, 1), date(2025, 1, 31)), formats=("csv", "xlsx"))
    assert result.manifest["rows"] == 0
    assert set(result.manifest["totals"].values()) == {"0.00"}
    assert csv_rows(result.files[0]) == []
    assert list(xlsx_details(result.files[1])) == []


def test_bad_parameters_are_refused(app: Flask, tmp_path: Path) -> None:
    with pytest.raises(BadRequest):
        run_export(tmp_path, period=(date(2026, 3, 2), date(2026, 3, 1)))
    with pytest.raises(BadRequest):
        run_export(tmp_path, fund="dental")
    with pytest.raises(BadRequest):
        run_export(tmp_path, formats=("pdf",))


def test_monthly_export_writes_every_fund(march: dict[str, str], tmp_path: Path) -> None:
    with database.unit_of_work() as session:  # the run on 1 April exports March
        paths = monthly_export(session, date(2026, 4, 1), settings={"EXPORT_DIR": str(tmp_path)})
    folder = tmp_path / "monthly" / "2026-03"
    bureau = folder / "bureau-insurer-org"  # the county's insurance bureau: its own set, recorded for it
    assert {p.parent for p in paths} == {folder, bureau}
    assert len(paths) == 2 * 3 * len(FUNDS)  # CSV, XLSX, manifest per fund, the network's and the bureau's
    expected = ledger_totals(*MARCH)
    for fund in FUNDS:
        for where in (folder, bureau):  # one county: the bureau sees every settlement of the ledger
            manifest = orjson.loads(
                (where / f"settlements_{fund}_all_2026-03-01_2026-03-31.manifest.json").read_bytes()
            )
            assert D(manifest["totals"][fund]) == expected[fund]
    with database.unit_of_work() as session:
        owners = session.execute(
            select(ExportLog.organization_id, func.count()).group_by(ExportLog.organization_id)
        ).all()
        assert dict(owners) == {None: len(FUNDS), "insurer-org": len(FUNDS)}


def _manifest_total(folder: Path, fund: str, start: date, end: date) -> Decimal:
    name = f"settlements_{fund}_all_{start.isoformat()}_{end.isoformat()}.manifest.json"
    return D(orjson.loads((folder / name).read_bytes())["totals"][fund])


def test_the_scheduled_run_exports_the_month_that_has_just_ended(
    march: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job as scheduled (config/jobs.toml, argument `today`): 1 April 03:00 in Asia/Shanghai, which is
    still 31 March in UTC, exports March, not April (nor February)."""
    monkeypatch.setenv("EXPORT_DIR", str(tmp_path))
    config = load_jobs(PROJECT_ROOT / "config" / "jobs.toml")
    spec = config.get("monthly-export")
    assert spec is not None
    run_at = datetime(2026, 3, 31, 19, 0, tzinfo=UTC)  # 2026-04-01 03:00 Asia/Shanghai
    result = run_job(database, spec, config.timezone, trigger="manual", now=run_at)
    assert result.outcome == "success", result.error
    assert sorted(p.name for p in (tmp_path / "monthly").iterdir()) == ["2026-03"]
    expected = ledger_totals(*MARCH)
    for fund in FUNDS:
        assert _manifest_total(tmp_path / "monthly" / "2026-03", fund, *MARCH) == expected[fund]


def test_the_january_run_exports_december_of_the_year_before(ledger: LedgerFactory, tmp_path: Path) -> None:
    hospital = ledger.org("county-hosp", "青山县人民医院")
    patient = ledger.patient("p1", "62042119900307002X")
    ledger.settlement(hospital, patient, local("2025-12-01T00:05:00"), basic="100.01")
    ledger.settlement(hospital, patient, local("2025-12-31T23:59:00"), basic="200.02")
    ledger.settlement(hospital, patient, local("2026-01-01T00:01:00"), basic="999.99")  # January: not yet
    ledger.settlement(hospital, patient, local("2025-11-30T23:59:00"), basic="555.55")  # November: done
    with database.unit_of_work() as session:
        paths = monthly_export(session, date(2026, 1, 1), settings={"EXPORT_DIR": str(tmp_path)})
    folder = tmp_path / "monthly" / "2025-12"
    assert paths and all(p.parent == folder for p in paths)
    december = (date(2025, 12, 1), date(2025, 12, 31))
    assert _manifest_total(folder, "basic-insurance", *december) == D("300.03")
    # An aware instant is read on the Asia/Shanghai calendar: 31 Dec 16:30 UTC is already 1 January there.
    with database.unit_of_work() as session:
        again = monthly_export(
            session, datetime(2025, 12, 31, 16, 30, tzinfo=UTC), out_dir=tmp_path / "again"
        )
    assert {p.name for p in again} == {p.name for p in paths}


def test_cli_export_with_progress(march: dict[str, str], app: Flask, tmp_path: Path) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=[
            "export",
            "settlements",
            "--fund",
            "critical-illness",
            "--from",
            "2026-03-01",
            "--to",
            "2026-03-31",
            "--format",
            "xlsx",
            "--out",
            str(tmp_path),
        ]
    )
    assert result.exit_code == 0, result.output
    assert "critical-illness: 2 rows, 189.95 yuan" in result.output
    assert (tmp_path / "settlements_critical-illness_all_2026-03-01_2026-03-31.xlsx").is_file()
    bad = runner.invoke(
        args=[
            "export",
            "settlements",
            "--fund",
            "basic-insurance",
            "--from",
            "2026-03-31",
            "--to",
            "2026-03-01",
            "--out",
            str(tmp_path),
        ]
    )
    assert bad.exit_code != 0 and "before it starts" in bad.output


def test_cli_export_for_one_bureau(
    march: dict[str, str], ledger: LedgerFactory, app: Flask, tmp_path: Path
) -> None:
    """`--bureau`: the files hold what that bureau may see and are recorded for it (so it lists and
    downloads them); a bureau of another county, whose residents none of these are, gets no rows."""
    ledger.org("city-insurer", "云州市医疗保障局", level=None, kind="insurer", district="云州市")
    runner = app.test_cli_runner()
    base = ["export", "settlements", "--fund", "basic-insurance",
            "--from", "2026-03-01", "--to", "2026-03-31"]
    expected = ledger_totals(*MARCH)["basic-insurance"]
    for bureau, total in (("insurer-org", expected), ("city-insurer", D("0.00"))):
        out = tmp_path / bureau
        result = runner.invoke(args=[*base, "--bureau", bureau, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert _manifest_total(out, "basic-insurance", *MARCH) == total, bureau
    with database.unit_of_work() as session:
        owners = session.scalars(select(ExportLog.organization_id).order_by(ExportLog.organization_id)).all()
    assert owners == ["city-insurer", "insurer-org"]
    for wrong in ("county-hosp", "nobody"):  # a hospital is no bureau
        refused = runner.invoke(args=[*base, "--bureau", wrong, "--out", str(tmp_path / "x")])
        assert refused.exit_code != 0 and "no active insurance bureau" in refused.output


def test_cli_monthly_exports_the_month_asked_for(
    march: dict[str, str], app: Flask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPORT_DIR", str(tmp_path))
    app.config["EXPORT_DIR"] = str(tmp_path)
    result = app.test_cli_runner().invoke(args=["export", "monthly", "--month", "2026-03-15"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "monthly").iterdir()) == ["2026-03"]
    result = app.test_cli_runner().invoke(args=["export", "monthly", "--month", "2026-02"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "monthly").iterdir()) == ["2026-02", "2026-03"]


@pytest.mark.parametrize(
    "args",
    [
        ["export", "monthly", "--month", "9999-12-31"],
        ["export", "monthly", "--month", "0001-01-01"],
        ["export", "monthly", "--month", "March"],
        ["export", "settlements", "--fund", "basic-insurance", "--from", "0001-01-01", "--to", "2026-12-31"],
        ["export", "settlements", "--fund", "basic-insurance", "--from", "2026-03-31", "--to", "2026-03-01"],
        ["export", "settlements", "--fund", "all", "--from", "2026-03-01", "--to", "2026-03-31",
         "--hospital", "nope"],
    ],
)
def test_cli_exports_refuse_bad_periods_and_hospitals_with_a_message(
    app: Flask, tmp_path: Path, args: list[str]
) -> None:
    out = ["--out", str(tmp_path)] if "settlements" in args else []
    result = app.test_cli_runner().invoke(args=[*args, *out])
    assert result.exit_code in (1, 2)  # click's usage error or its ClickException, not a traceback
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Error" in result.output


SAMPLES = [
    "62042119900307002X",
    "620421900307002",
    "1234567890",
    "12345678901",
    "=cmd",
    "+1",
    "-2",
    "@x",
    "\tt",
    "\rr",
    "'=already",
    "正常",
    "",
    None,
]


def test_sql_forms_of_masking_and_neutralisation_agree_with_python(app: Flask) -> None:
    from sqlalchemy import literal

    from referral_service.domain.exports import mask_identity_sql
    from referral_service.exports.writer import neutralise_sql

    with database.unit_of_work() as session:
        for sample in SAMPLES:
            value = literal(sample, String)
            masked, neutral = session.execute(select(mask_identity_sql(value), neutralise_sql(value))).one()
            assert (masked or "") == mask_identity(sample), sample
            assert neutral == ((neutralise(sample) or None) if sample is not None else None), sample


def test_streamed_csv_equals_the_csv_written_from_values(march: dict[str, str], tmp_path: Path) -> None:
    """On PostgreSQL a CSV-only export streams COPY's records; with XLSX it goes through the writer."""
    streamed = run_export(tmp_path / "a", formats=("csv",))
    written = run_export(tmp_path / "b", formats=("csv", "xlsx"))
    assert streamed.files[0].read_bytes() == written.files[0].read_bytes()
    assert streamed.manifest["totals"] == written.manifest["totals"]
    assert streamed.manifest["totals_by_hospital"] == written.manifest["totals_by_hospital"]


def test_csv_fields_with_a_carriage_return_are_quoted_as_copy_quotes_them(app: Flask, tmp_path: Path) -> None:
    """A lone CR split records in spreadsheets: quoted, like every line break, on both paths."""
    from referral_service.exports.writer import Column, CsvSheet

    columns = [Column(k, k) for k in ("a", "b", "c", "d")] + [Column("e", "e", "money")]
    sheet = CsvSheet(tmp_path / "x.csv", columns)
    sheet.extend([["G\rH", "c\nd", 'e"f', None, Decimal("1.50")], ["plain", "x,y", "", None, Decimal("2")]])
    sheet.close()
    raw = (tmp_path / "x.csv").read_bytes()[3:].decode("utf-8")
    body = raw.split("\n", 1)[1]
    assert body == '"G\rH","c\nd","e""f",,1.50\nplain,"x,y",,,2\n'
    with (tmp_path / "x.csv").open(newline="", encoding="utf-8-sig") as fh:
        records = list(csv.reader(fh))[1:]
    assert records == [["G\rH", "c\nd", 'e"f', "", "1.50"], ["plain", "x,y", "", "", "2"]]
    with database.engine.connect() as connection:  # the PostgreSQL path writes what COPY writes
        if connection.dialect.name == "postgresql":
            copied = io.BytesIO()
            cursor = connection.connection.driver_connection.cursor()
            sql = "COPY (SELECT E'G\\rH', E'c\\nd', 'e\"f', NULL, 1.50::numeric) TO STDOUT WITH (FORMAT csv)"
            with cursor.copy(sql) as copy:
                for block in copy:
                    copied.write(block)
            assert copied.getvalue().decode() == body.split("plain")[0]
