"""Insurance office (role insurer): settlement totals, payment batches and overdue payables, exports.

Every page shows the settlements the signed-in user's organisation may see, by the API's access
policy (`services.ledger_scope`: an insurance bureau, the residents of its county wherever they
were treated), and the exports recorded for that organisation; totals follow the export's rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from flask import abort, current_app, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from sqlalchemy import BigInteger, and_, cast, func, literal, or_, select, union_all
from sqlalchemy.orm import Session

from ..domain.actor import Actor
from ..domain.base import new_id
from ..domain.errors import BadRequest
from ..domain.exports import ExportLog, Recipient
from ..domain.ledger import FUNDS, Payable, Settlement
from ..domain.registry import Organization, Patient
from ..services import indicators
from ..services.indicators import Dialect, day_start, local_today
from ..services.ledger_scope import exports_seen, payables_seen, settlements_seen
from .auth import current, role_required, work
from .blueprint import bp
from .formatting import component_label
from .forms import FormState, read_day

EXPORTS_KEY = "settlement_exports"  # where create_app keeps the settlement exporter (app.extensions)
FORMATS = ("csv", "xlsx")
FUND_COLUMNS = {
    "basic-insurance": Settlement.basic_insurance,
    "critical-illness": Settlement.critical_illness,
    "medical-assistance": Settlement.medical_assistance,
    "poverty-safety-net": Settlement.poverty_safety_net,
}


def _yuan(fen: Any) -> Decimal:
    return (Decimal(int(fen or 0)) / 100).quantize(Decimal("0.01"))


def _month_of(day: date) -> tuple[date, date]:
    first = day.replace(day=1)
    last = (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    return first, last


@dataclass
class PeriodForm:
    """The period and filters typed on a page, checked, with errors beside the fields."""

    start: date
    end: date
    fund: str | None
    hospital: str | None
    form: FormState = field(default_factory=FormState)


def _period_form(args: Any) -> PeriodForm:
    first, last = _month_of(local_today())
    values = {k: args.get(k, "").strip() for k in ("from", "to", "fund", "hospital", "format")}
    form = FormState(values=dict(values))
    errors: dict[str, list[str]] = {}
    days: dict[str, date] = {}
    for name, default in (("from", first), ("to", last)):
        raw = values[name]
        if not raw:
            days[name] = default
            form.values[name] = default.isoformat()
            continue
        day, problems = read_day(raw)
        if day is None:
            errors[name] = problems
        days[name] = day or default
    if not errors and days["to"] < days["from"]:
        errors["to"] = [_("The period must end on or after its first day.")]
    fund = values["fund"] or None
    if fund is not None and fund not in FUNDS:
        errors["fund"] = [_("Choose one of the funds.")]
        fund = None
    form.errors = errors
    return PeriodForm(days["from"], days["to"], fund, values["hospital"] or None, form)


def _fund_options() -> list[tuple[str, str]]:
    return [(f, component_label(f)) for f in FUNDS]


def _hospitals(db: Session, actor: Actor) -> list[tuple[str, str]]:
    """Hospitals with settlements the actor may see (the choices of the hospital filter)."""
    rows = db.execute(
        select(Organization.id, Organization.name)
        .where(Organization.id.in_(
            select(Settlement.provider_id).join(Patient, Patient.id == Settlement.patient_id)
            .where(settlements_seen(actor, patient=Patient)).distinct()
        ))
        .order_by(Organization.name)
    ).all()
    return [(r[0], r[1]) for r in rows]


def settlement_totals(db: Session, actor: Actor, start: date, end: date, fund: str | None = None,
                      hospital: str | None = None) -> list[dict[str, Any]]:
    """Per fund and hospital: settlements in the period minus reversals in the period (the export's rule),
    of the settlements the actor may see (the export's too).

    One UNION ALL of SQL aggregates; amounts are summed in whole fen, so the totals match the export files.
    For an actor that does not see everything, the settlements of the period it may see are picked once
    (a CTE joining each settlement's patient, the access condition read from that row) and the fund
    parts read them, rather than each part testing the condition again.
    """
    lo, hi = day_start(start), day_start(end + timedelta(days=1))
    source: Any = Settlement.__table__
    if not actor.sees_everything:
        source = (
            select(Settlement.provider_id, Settlement.settled_at, Settlement.reversed_at, Settlement.total,
                   *FUND_COLUMNS.values())
            .join(Patient, Patient.id == Settlement.patient_id)
            .where(or_(and_(Settlement.settled_at >= lo, Settlement.settled_at < hi),
                       and_(Settlement.reversed_at >= lo, Settlement.reversed_at < hi)),
                   settlements_seen(actor, patient=Patient))
            .cte("seen")
        )
    c = source.c
    parts: list[Any] = []
    for fund_code in (fund,) if fund else FUNDS:
        column = c[FUND_COLUMNS[fund_code].key]
        for ts, sign in ((c.settled_at, 1), (c.reversed_at, -1)):
            stmt = select(
                literal(fund_code).label("fund"),
                c.provider_id.label("hospital"),
                literal(1 if sign > 0 else 0).label("settled"),
                literal(0 if sign > 0 else 1).label("reversed"),
                (Dialect.fen(column) * sign).label("fen"),
                (Dialect.fen(c.total) * sign).label("total_fen"),
            ).where(ts >= lo, ts < hi, column != 0)
            if hospital:
                stmt = stmt.where(c.provider_id == hospital)
            parts.append(stmt)
    detail = union_all(*parts).subquery("detail")
    rows = db.execute(
        select(
            detail.c.fund, detail.c.hospital, Organization.name,
            func.sum(detail.c.settled), func.sum(detail.c.reversed),
            cast(func.sum(detail.c.fen), BigInteger), cast(func.sum(detail.c.total_fen), BigInteger),
        )
        .join(Organization, Organization.id == detail.c.hospital)
        .group_by(detail.c.fund, detail.c.hospital, Organization.name)
        .order_by(detail.c.fund, detail.c.hospital)
    ).all()
    return [
        {"fund": r[0], "hospital_id": r[1], "hospital": r[2], "settled": int(r[3] or 0),
         "reversed": int(r[4] or 0), "amount": _yuan(r[5]), "total": _yuan(r[6])}
        for r in rows
    ]


def _fund_totals(rows: list[dict[str, Any]], funds: tuple[str, ...]) -> dict[str, Decimal]:
    out = {f: Decimal("0.00") for f in funds}
    for row in rows:
        out[row["fund"]] += row["amount"]
    return out


@bp.get("/insurer/settlements")
@role_required("insurer")
def insurer_settlements() -> ResponseReturnValue:
    """Settlement totals by fund and hospital for a period (settled minus reversed in the period)."""
    chosen = _period_form(request.args)
    rows: list[dict[str, Any]] = []
    with work() as (db, actor):
        hospitals = _hospitals(db, actor)
        if not chosen.form.invalid:
            rows = settlement_totals(db, actor, chosen.start, chosen.end, chosen.fund, chosen.hospital)
    funds = (chosen.fund,) if chosen.fund else FUNDS
    by_fund = _fund_totals(rows, funds)
    status = 422 if chosen.form.invalid else 200
    return render_template(
        "web/insurer/settlements.html", chosen=chosen, form=chosen.form, rows=rows, by_fund=by_fund,
        grand=sum(by_fund.values(), Decimal("0.00")), hospitals=hospitals, funds=_fund_options(),
    ), status


def _payment_batches(db: Session, actor: Actor, limit: int = 50) -> list[dict[str, Any]]:
    """Payment batches as the payables they paid, of the settlements the actor may see."""
    rows = db.execute(
        select(
            Payable.payment_id, Payable.hospital_id, Organization.name, func.count(),
            cast(func.sum(Dialect.fen(Payable.paid_amount)), BigInteger), func.max(Payable.paid_at),
            func.group_concat(Payable.fund.distinct()) if db.get_bind().dialect.name == "sqlite"
            else func.string_agg(Payable.fund.distinct(), ","),
        )
        .join(Organization, Organization.id == Payable.hospital_id)
        .where(Payable.payment_id.is_not(None), payables_seen(actor))
        .group_by(Payable.payment_id, Payable.hospital_id, Organization.name)
        .order_by(func.max(Payable.paid_at).desc())
        .limit(limit)
    ).all()
    return [
        {"payment_id": r[0], "hospital_id": r[1], "hospital": r[2], "payables": int(r[3]),
         "paid": _yuan(r[4]), "paid_at": r[5], "funds": sorted(str(r[6] or "").split(","))}
        for r in rows
    ]


def _overdue_payables(db: Session, actor: Actor, as_of: date, overdue_days: int,
                      limit: int = 100) -> list[dict[str, Any]]:
    cutoff = day_start(as_of - timedelta(days=overdue_days))
    rows = db.execute(
        select(Payable, Organization.name, Settlement.discharge_date)
        .join(Organization, Organization.id == Payable.hospital_id)
        .join(Settlement, Settlement.id == Payable.settlement_id)
        .where(Payable.status.in_(("unpaid", "partial")), Payable.created_at < cutoff,
               settlements_seen(actor))
        .order_by(Payable.created_at, Payable.id)
        .limit(limit)
    ).all()
    return [
        {"payable": p, "hospital": name, "discharge_date": discharged,
         "outstanding": p.amount - (p.paid_amount or Decimal("0.00")),
         "days": (as_of - p.created_at.date()).days}
        for p, name, discharged in rows
    ]


@bp.get("/insurer/payments")
@role_required("insurer")
def insurer_payments() -> ResponseReturnValue:
    """Unpaid balances by age band, payment batches received, payables overdue."""
    as_of = local_today()
    raw = request.args.get("as_of", "").strip()
    form = FormState(values={"as_of": raw or as_of.isoformat()})
    if raw:
        day, problems = read_day(raw)
        if day is None:
            form.errors = {"as_of": problems}
        else:
            as_of = day
    overdue_days = indicators.thresholds().payments.overdue_days
    with work() as (db, actor):
        names = {r[0]: r[1] for r in db.execute(select(Organization.id, Organization.name)).all()}
        unpaid = indicators.unpaid_balances(db, as_of, actor=actor)
        batches = _payment_batches(db, actor)
        overdue = _overdue_payables(db, actor, as_of, overdue_days)
    bands = list(unpaid[-1].by_age) if unpaid else []
    return render_template(
        "web/insurer/payments.html", form=form, as_of=as_of, unpaid=unpaid, bands=bands, names=names,
        batches=batches, overdue=overdue, overdue_days=overdue_days,
    ), 422 if form.invalid else 200


def _history(db: Session, actor: Actor, limit: int = 50) -> list[ExportLog]:
    """The settlement exports recorded for the actor's organisation, newest first."""
    return list(db.scalars(
        select(ExportLog).where(ExportLog.kind == "settlements", exports_seen(actor.organization_id))
        .order_by(ExportLog.created_at.desc()).limit(limit)
    ).all())


def _exports_page(chosen: PeriodForm, result: ExportLog | None = None,
                  status: int = 200) -> ResponseReturnValue:
    with work() as (db, actor):
        hospitals = _hospitals(db, actor)
        history = _history(db, actor)
        expected: dict[str, Decimal] | None = None
        if result is not None:
            funds = (chosen.fund,) if chosen.fund else FUNDS
            rows = settlement_totals(db, actor, chosen.start, chosen.end, chosen.fund, chosen.hospital)
            expected = _fund_totals(rows, funds)
    return render_template(
        "web/insurer/exports.html", form=chosen.form, chosen=chosen, hospitals=hospitals,
        funds=_fund_options(),
        formats=FORMATS, history=history, result=result, expected=expected,
    ), status


@bp.get("/insurer/exports")
@role_required("insurer")
def insurer_exports() -> ResponseReturnValue:
    """The export form and the export history (from the export log)."""
    chosen = _period_form(request.args)
    chosen.form.errors = {}
    if not chosen.form.value("format"):
        chosen.form.values["format"] = "csv"
    return _exports_page(chosen)


@bp.post("/insurer/exports")
@role_required("insurer")
def insurer_export_run() -> ResponseReturnValue:
    """Run a settlement export now (synchronously) and show its files, manifest and totals."""
    chosen = _period_form(request.form)
    fmt = chosen.form.value("format") or "csv"
    if fmt not in FORMATS:
        chosen.form.errors["format"] = [_("Choose CSV or Excel (xlsx).")]
    if chosen.form.invalid:
        return _exports_page(chosen, status=422)
    wiring = current_app.extensions[EXPORTS_KEY]
    user = current()
    recipient = Recipient(user.username, "user", user.role, user.organization_id)
    export_request = wiring["request"](
        chosen.start, chosen.end, fund=chosen.fund, hospital_id=chosen.hospital, formats=(fmt,),
        identity="masked",
    )
    out_dir = wiring["root"](current_app.config) / "downloads" / new_id()
    try:
        with work() as (db, _actor):
            result = wiring["export"](db, recipient, export_request, out_dir, request_id=g.get("request_id"))
            export_id = result.export_id
    except BadRequest as exc:
        chosen.form.errors["_schema"] = [exc.message]
        return _exports_page(chosen, status=422)
    # Post/Redirect/Get: the result has an address of its own, so reloading it shows the files again
    # rather than running the export a second time.
    return redirect(url_for("web.insurer_export_result", export_id=export_id), 303)


@bp.get("/insurer/exports/<export_id>")
@role_required("insurer")
def insurer_export_result(export_id: str) -> ResponseReturnValue:
    """One settlement export's files, manifest and totals, with the form set to its parameters."""
    with work() as (db, actor):
        record = db.scalars(select(ExportLog).where(
            ExportLog.id == export_id, ExportLog.kind == "settlements", exports_seen(actor.organization_id),
        )).first()
        if record is None:  # none, or another organisation's: the same answer
            abort(404)
        db.expunge(record)
    asked = record.parameters
    chosen = _period_form({
        "from": asked.get("from", ""), "to": asked.get("to", ""),
        "fund": "" if asked.get("fund") in (None, "all") else asked["fund"],
        "hospital": "" if asked.get("hospital") in (None, "all") else asked["hospital"],
        "format": (asked.get("formats") or ["csv"])[0],
    })
    return _exports_page(chosen, record)
