"""Settlement detail for the insurance office per fund, period and hospital: CSV / XLSX plus a manifest.

A row is one fund's share of one ledger event: a settlement settled in the period (positive), or a
reversal (冲销) made in the period (the same amounts, negative). Per fund the file total therefore
equals what the ledger says the fund owes for the period: settled in the period minus reversed in
the period. Zero shares are left out (a fund that pays nothing on a settlement has no row for it).
Periods are calendar dates in Asia/Shanghai, both ends inclusive. Rows are streamed (PostgreSQL
`COPY ... TO STDOUT`, or a cursor fetching in batches) and written as they arrive, so memory stays
flat whatever the row count; a CSV on PostgreSQL is written as COPY renders it (masking and
formula neutralisation happen in the query) and only the fund, hospital and amount are read back
to total it.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import (
    Numeric,
    Select,
    String,
    case,
    cast,
    func,
    literal,
    literal_column,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from ..domain.actor import SYSTEM, Actor
from ..domain.base import new_id, utcnow
from ..domain.days import DayOutOfRange, check_day
from ..domain.errors import BadRequest, Forbidden
from ..domain.exports import ExportLog, Recipient, mask_identity_sql, may_receive_full_identity
from ..domain.ledger import FUNDS, Settlement
from ..domain.registry import Organization, Patient
from ..services.ledger_scope import recipient_actor, settlements_seen
from ..services.resources import audit
from .writer import Column, CsvSheet, FileInfo, XlsxBook, neutralise_sql

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
FORMATS = ("csv", "xlsx")
FETCH_BATCH = 5000
FUND_COLUMNS = {
    "basic-insurance": "basic_insurance",  # 基本医保
    "critical-illness": "critical_illness",  # 大病保险
    "medical-assistance": "medical_assistance",  # 医疗救助
    "poverty-safety-net": "poverty_safety_net",  # 兜底保障
}
FUND_TITLES = {
    "basic-insurance": "基本医保", "critical-illness": "大病保险",
    "medical-assistance": "医疗救助", "poverty-safety-net": "兜底保障",
}

# The first five columns never hold a comma or a quote, so the streamed CSV path reads them by splitting.
COLUMNS: tuple[Column, ...] = (
    Column("event", "业务类型"),  # settlement | reversal
    Column("event_time", "发生时间"),  # Asia/Shanghai
    Column("fund", "基金"),
    Column("hospital_id", "医院编码"),
    Column("amount", "基金支付", "money"),
    Column("hospital_name", "医院名称"),
    Column("settlement_id", "结算单号"),
    Column("claim_id", "申报单号"),
    Column("patient_name", "患者姓名"),
    Column("resident_id", "身份证号"),
    Column("claim_type", "就诊类型"),
    Column("discharge_date", "出院日期", "date"),
    Column("registered_poor", "建档立卡"),
    Column("total", "医疗总费用", "money"),
    Column("patient_pay", "个人负担", "money"),
    Column("policy", "政策版本"),
)
KEYS = tuple(c.key for c in COLUMNS)
FUND, HOSPITAL, AMOUNT = KEYS.index("fund"), KEYS.index("hospital_id"), KEYS.index("amount")
HOSPITAL_NAME = KEYS.index("hospital_name")
LEADING = AMOUNT + 1  # columns read from a streamed record

SUMMARY_COLUMNS = (
    Column("fund", "基金"),
    Column("hospital_id", "医院编码"),
    Column("hospital_name", "医院名称"),
    Column("rows", "明细行数", "int"),
    Column("amount", "基金支付合计", "money"),
)


@dataclass(frozen=True)
class SettlementExportRequest:
    """What to export: a period (local dates, inclusive), one fund or all, one hospital or all."""

    period_start: date
    period_end: date
    fund: str | None = None
    hospital_id: str | None = None
    formats: tuple[str, ...] = ("csv",)
    identity: str = "masked"  # masked | full

    def check(self) -> None:
        """400 for parameters that make no export."""
        for day in (self.period_start, self.period_end):
            try:
                check_day(day)  # (local midnights in UTC and the day after stay in the calendar)
            except DayOutOfRange as exc:
                raise BadRequest(f"the period is out of range: {exc}") from None
        if self.period_end < self.period_start:
            raise BadRequest(f"the period ends ({self.period_end}) before it starts ({self.period_start})")
        if self.fund is not None and self.fund not in FUNDS:
            raise BadRequest(f"unknown fund {self.fund!r}; known: {', '.join(FUNDS)}")
        if not self.formats or any(f not in FORMATS for f in self.formats):
            raise BadRequest(f"format must be one of {', '.join(FORMATS)}")
        if self.identity not in ("masked", "full"):
            raise BadRequest("identity must be masked or full")

    @property
    def funds(self) -> tuple[str, ...]:
        """The funds exported."""
        return (self.fund,) if self.fund else FUNDS

    def parameters(self) -> dict[str, Any]:
        """The parameters as recorded in the manifest and the export log."""
        return {
            "fund": self.fund or "all", "hospital": self.hospital_id or "all",
            "from": self.period_start.isoformat(), "to": self.period_end.isoformat(),
            "formats": list(self.formats), "identity": self.identity, "timezone": "Asia/Shanghai",
        }

    def stem(self) -> str:
        """The file name without extension, e.g. settlements_basic-insurance_all_2026-03-01_2026-03-31."""
        hospital = re.sub(r"[^A-Za-z0-9_.-]", "_", self.hospital_id) if self.hospital_id else "all"
        return (f"settlements_{self.fund or 'all-funds'}_{hospital}_"
                f"{self.period_start.isoformat()}_{self.period_end.isoformat()}")


@dataclass
class ExportResult:
    """What an export wrote: its log id, the data files, the manifest."""

    export_id: str
    directory: Path
    files: list[Path]
    manifest_path: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def paths(self) -> list[Path]:
        """Data files and the manifest."""
        return [*self.files, self.manifest_path]


@dataclass
class _Totals:
    """Row counts and sums (in fen, exact) per fund and per (fund, hospital)."""

    rows: int = 0
    per_fund: dict[str, list[int]] = field(default_factory=dict)  # fund -> [rows, fen]
    per_hospital: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)

    def amounts(self) -> dict[str, Decimal]:
        """Yuan per fund."""
        return {f: _yuan(fen) for f, (_, fen) in self.per_fund.items()}

    def summary_rows(self) -> Iterator[tuple[Any, ...]]:
        """(fund, hospital, name, rows, yuan) per fund and hospital."""
        for (fund, hospital), (rows, fen) in sorted(self.per_hospital.items()):
            yield (fund, hospital, self.names.get(hospital, ""), rows, _yuan(fen))


def _yuan(fen: int) -> Decimal:
    return Decimal(fen).scaleb(-2)


def _fen(amount: Any) -> int:
    """Whole fen of an amount given as Decimal or as text with exactly two decimals (as COPY writes it)."""
    if isinstance(amount, Decimal):
        return int(amount.scaleb(2))
    return int(str(amount).replace(".", ""))


def local_bounds(start: date, end: date) -> tuple[datetime, datetime]:
    """UTC instants of [start 00:00, end+1 00:00) in Asia/Shanghai."""
    lo = datetime.combine(start, time.min, LOCAL_TZ).astimezone(UTC)
    hi = datetime.combine(end + timedelta(days=1), time.min, LOCAL_TZ).astimezone(UTC)
    return lo, hi


def _local_text(ts: Any, dialect: str) -> ColumnElement[str]:
    """A UTC timestamp as local Asia/Shanghai text 'YYYY-MM-DD HH:MM:SS', computed by the database."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("Asia/Shanghai", ts), "YYYY-MM-DD HH24:MI:SS")
    # SQLite keeps naive UTC text; China has had no daylight saving since 1991, so +8 hours is exact.
    return func.strftime("%Y-%m-%d %H:%M:%S", ts, "+8 hours")


def _money(expr: Any) -> ColumnElement[Decimal]:
    return type_coerce(expr, Numeric(16, 2, asdecimal=True))


def detail_query(
    request: SettlementExportRequest, dialect: str, *, masked: bool = True, actor: Actor = SYSTEM
) -> Select[Any]:
    """One SELECT over the ledger giving every detail row in file order (time, settlement, fund), of
    the settlements `actor` may see (`services.ledger_scope`: an insurer, its county's residents)."""
    # Text columns are neutralised and identity numbers masked by the database, so its rendering
    # of a row can go to the file unchanged. The access condition reads the joined patient row
    # (no second look-up per settlement) and probes `patient_access` for the organisation's links.
    s, p, o = Settlement.__table__, Patient.__table__, Organization.__table__
    seen = settlements_seen(actor, s, patient=p)
    lo, hi = local_bounds(request.period_start, request.period_end)
    parts = []
    for event, ts, sign in (("settlement", s.c.settled_at, 1), ("reversal", s.c.reversed_at, -1)):
        for fund in request.funds:
            amount = s.c[FUND_COLUMNS[fund]]

            def signed(col: Any, sign: int = sign) -> ColumnElement[Decimal]:
                return _money(col if sign > 0 else literal(0) - col)

            values: dict[str, Any] = {
                "event": literal_column(f"'{event}'", String),
                "event_time": _local_text(ts, dialect),
                "fund": literal_column(f"'{fund}'", String),
                "hospital_id": s.c.provider_id,
                "amount": signed(amount),
                "hospital_name": o.c.name,
                "settlement_id": s.c.id,
                "claim_id": s.c.claim_id,
                "patient_name": p.c.family_name + p.c.given_name,
                "resident_id": mask_identity_sql(p.c.resident_id) if masked else p.c.resident_id,
                "claim_type": s.c.claim_type,
                "discharge_date": cast(s.c.discharge_date, String),  # ISO text on both engines
                "registered_poor": case((s.c.registered_poor, "1"), else_="0"),
                "total": signed(s.c.total),
                "patient_pay": signed(s.c.patient_pay),
                "policy": s.c.policy_id + "@" + s.c.policy_version,
            }
            stmt = (
                select(
                    *[(neutralise_sql(values[c.key]) if c.kind == "text" else values[c.key]).label(c.key)
                      for c in COLUMNS],
                    ts.label("sort_ts"),
                    literal_column("0" if event == "settlement" else "1").label("sort_event"),
                    literal_column(str(FUNDS.index(fund))).label("sort_fund"),
                )
                .select_from(s.join(p, p.c.id == s.c.patient_id).join(o, o.c.id == s.c.provider_id))
                .where(ts >= lo, ts < hi, amount != 0, seen)
            )
            if request.hospital_id:
                stmt = stmt.where(s.c.provider_id == request.hospital_id)
            parts.append(stmt)
    union = union_all(*parts).subquery("detail")
    return select(*[union.c[k] for k in KEYS]).order_by(
        union.c.sort_ts, union.c.settlement_id, union.c.sort_event, union.c.sort_fund
    )


def count_rows(session: Session, request: SettlementExportRequest, actor: Actor = SYSTEM) -> int:
    """How many detail rows the export will have for the actor (for a progress bar)."""
    dialect = session.get_bind().dialect.name
    inner = detail_query(request, dialect, actor=actor).order_by(None).subquery()
    return int(session.scalar(select(func.count()).select_from(inner)) or 0)


def stream_batches(
    session: Session, request: SettlementExportRequest, actor: Actor = SYSTEM
) -> Iterator[list[list[Any]]]:
    """The detail rows the actor may see as values, in batches as they arrive, never all at once."""
    # PostgreSQL streams the query through COPY ... TO STDOUT (CSV) inside the session's transaction
    # and each batch is parsed as its bytes arrive (values are text); SQLite fetches batches from a
    # cursor (values are typed).
    dialect = session.get_bind().dialect
    stmt = detail_query(request, dialect.name, masked=request.identity == "masked", actor=actor)
    if dialect.name == "postgresql":
        for records in _copy_records(session, stmt):
            yield list(csv.reader(io.StringIO(b"".join(records).decode("utf-8"), newline="")))
        return
    result = session.execute(stmt, execution_options={"yield_per": FETCH_BATCH})
    try:
        for batch in result.partitions():
            yield [list(row) for row in batch]
    finally:
        result.close()


def _copy_records(session: Session, stmt: Select[Any]) -> Iterator[list[bytes]]:
    """PostgreSQL: the query's rows as CSV records (bytes), streamed by COPY in batches."""
    compiled = stmt.compile(dialect=session.get_bind().dialect, compile_kwargs={"render_postcompile": True})
    driver = session.connection().connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(
        f"COPY ({compiled}) TO STDOUT WITH (FORMAT csv)", compiled.params
    ) as copy:
        # PostgreSQL sends every row of COPY TO as one message, so a batch of messages never
        # splits a record (not even one with a line break inside a quoted field).
        blocks = iter(copy)
        while batch := [bytes(block) for block in islice(blocks, FETCH_BATCH)]:
            yield batch


def _stream_csv(session: Session, request: SettlementExportRequest, actor: Actor, sheet: CsvSheet,
                totals: _Totals, progress: Callable[[int], None] | None) -> None:
    """PostgreSQL, CSV only: COPY's records go to the file as rendered; only the leading columns are read."""
    stmt = detail_query(request, "postgresql", masked=request.identity == "masked", actor=actor)
    per_fund, per_hospital = totals.per_fund, totals.per_hospital
    for records in _copy_records(session, stmt):
        for record in records:
            _, _, fund_b, hospital_b, amount_b, _ = record.split(b",", LEADING)
            fen = int(amount_b.replace(b".", b""))
            key = (fund_b.decode(), hospital_b.decode())
            bucket = per_hospital.get(key)
            if bucket is None:
                bucket = per_hospital[key] = [0, 0]
            bucket[0] += 1
            bucket[1] += fen
        sheet.write_records(records)
        if progress is not None:
            progress(len(records))
    for (fund, _), (rows, fen) in per_hospital.items():
        per_fund[fund][0] += rows
        per_fund[fund][1] += fen
    totals.rows = sum(rows for rows, _ in per_fund.values())


def _write_rows(session: Session, request: SettlementExportRequest, actor: Actor,
                sheets: Sequence[CsvSheet | XlsxBook], totals: _Totals,
                progress: Callable[[int], None] | None) -> None:
    """Every other case: rows as values through the writers (XLSX needs typed cells anyway)."""
    per_fund, per_hospital, names = totals.per_fund, totals.per_hospital, totals.names
    for batch in stream_batches(session, request, actor):
        for row in batch:
            fund, hospital, fen = row[FUND], row[HOSPITAL], _fen(row[AMOUNT])
            entry = per_fund[fund]
            entry[0] += 1
            entry[1] += fen
            bucket = per_hospital.get((fund, hospital))
            if bucket is None:
                bucket = per_hospital[(fund, hospital)] = [0, 0]
                names[hospital] = row[HOSPITAL_NAME]
            bucket[0] += 1
            bucket[1] += fen
        for sheet in sheets:
            sheet.extend(batch)
        totals.rows += len(batch)
        if progress is not None:
            progress(len(batch))


def export_settlements(
    session: Session,
    recipient: Recipient,
    request: SettlementExportRequest,
    out_dir: Path,
    *,
    progress: Callable[[int], None] | None = None,
    request_id: str | None = None,
) -> ExportResult:
    """Write the export files and manifest into `out_dir` and record the export (caller commits).

    The files hold the settlements the recipient's organisation may see (`services.ledger_scope`);
    a system run without an organisation holds every settlement.
    """
    request.check()
    if request.hospital_id is not None and session.get(Organization, request.hospital_id) is None:
        raise BadRequest(f"unknown hospital {request.hospital_id!r} (give an Organization id)")
    full = request.identity == "full"
    if full and not may_receive_full_identity(recipient.role):
        raise Forbidden(f"role {recipient.role or '(none)'} may not receive full identity numbers")
    actor = recipient_actor(session, recipient)
    out_dir.mkdir(parents=True, exist_ok=True)
    export_id = new_id()
    stem = request.stem()
    sheets: list[CsvSheet | XlsxBook] = []
    csv_sheet = book = None
    if "csv" in request.formats:
        csv_sheet = CsvSheet(out_dir / f"{stem}.csv", COLUMNS)
        sheets.append(csv_sheet)
    if "xlsx" in request.formats:
        book = XlsxBook(out_dir / f"{stem}.xlsx", "汇总", "明细", COLUMNS)
        sheets.append(book)
    totals = _Totals()
    totals.per_fund = {f: [0, 0] for f in request.funds}
    dialect = session.get_bind().dialect.name
    try:
        if dialect == "postgresql" and csv_sheet is not None and book is None:
            _stream_csv(session, request, actor, csv_sheet, totals, progress)
        else:
            _write_rows(session, request, actor, sheets, totals, progress)
        if book is not None:
            book.write_summary(SUMMARY_COLUMNS, totals.summary_rows(), _summary_preamble(request, totals))
        infos = [sheet.close() for sheet in sheets]
    except BaseException:
        for sheet in sheets:
            sheet.discard()
        raise
    manifest = _manifest(export_id, recipient, actor, request, totals, infos)
    manifest_path = out_dir / f"{stem}.manifest.json"
    manifest_path.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    session.add(
        ExportLog(
            id=export_id, kind="settlements", actor_name=recipient.name, actor_kind=recipient.kind,
            role=recipient.role, organization_id=recipient.organization_id,
            parameters=request.parameters(), identity=request.identity, row_count=totals.rows,
            totals=manifest["totals"],
            files=[*manifest["files"], {"name": manifest_path.name, "role": "manifest"}],
            location=str(out_dir.resolve()), request_id=request_id,
        )
    )
    # Patient data left the system: the audit log (AuditEvent) says so too.
    audit(session, Actor(recipient.name, recipient.kind, recipient.organization_id), action="E",
          interaction="operation", entity_type="Settlement", entity_id=export_id,
          query=f"export settlements {orjson.dumps(request.parameters()).decode()}", request_id=request_id)
    session.flush()
    return ExportResult(export_id, out_dir, [i.path for i in infos], manifest_path, manifest)


def _summary_preamble(request: SettlementExportRequest, totals: _Totals) -> list[list[Any]]:
    lines: list[list[Any]] = [
        ["结算明细汇总 settlement detail summary"],
        ["期间 period", f"{request.period_start.isoformat()} ~ {request.period_end.isoformat()}"],
        ["医院 hospital", request.hospital_id or "全部 all"],
        ["口径 rule", "期间内结算减期间内冲销 settled in the period minus reversed in the period"],
        [],
        ["基金 fund", "基金名称", "明细行数 rows", "合计 total"],
    ]
    amounts = totals.amounts()
    for fund, (rows, _) in totals.per_fund.items():
        lines.append([fund, FUND_TITLES[fund], rows, amounts[fund]])
    return lines


def _scope(actor: Actor) -> dict[str, Any]:
    """Whose settlements the files hold (the access policy of DESIGN section 8, as the API applies it)."""
    if actor.sees_everything:
        return {"settlements": "all"}
    return {"settlements": "of the patients the organisation may see (DESIGN section 8)",
            "organization": actor.organization_id, "district": actor.district}


def _manifest(export_id: str, recipient: Recipient, actor: Actor, request: SettlementExportRequest,
              totals: _Totals, infos: Sequence[FileInfo]) -> dict[str, Any]:
    return {
        "export_id": export_id,
        "kind": "settlement-detail",
        "generated_at": utcnow().isoformat(timespec="seconds"),
        "generated_by": {"name": recipient.name, "kind": recipient.kind, "role": recipient.role,
                         "organization": recipient.organization_id},
        "scope": _scope(actor),
        "parameters": request.parameters(),
        "rule": "rows = fund shares of settlements settled in the period (positive) and of reversals "
                "made in the period (negative); zero shares omitted",
        "formula_neutralisation": "text cells starting with = + - @ TAB or CR carry a leading apostrophe",
        "columns": [{"key": c.key, "title": c.title} for c in COLUMNS],
        "rows": totals.rows,
        "rows_by_fund": {f: v[0] for f, v in totals.per_fund.items()},
        "totals": {f: str(v) for f, v in totals.amounts().items()},
        "totals_by_hospital": [
            {"fund": f, "hospital_id": h, "rows": r, "amount": str(a)}
            for f, h, _, r, a in totals.summary_rows()
        ],
        "files": [i.as_manifest() for i in infos],
    }


def export_dir(settings: Mapping[str, Any] | None = None) -> Path:
    """The configured export folder (EXPORT_DIR, default instance/exports), made absolute."""
    from ..config import PROJECT_ROOT

    raw = (settings or {}).get("EXPORT_DIR") or os.environ.get("EXPORT_DIR") or "instance/exports"
    path = Path(str(raw))
    return path if path.is_absolute() else PROJECT_ROOT / path
