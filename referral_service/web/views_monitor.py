"""Poverty-alleviation office (role monitor): dashboard with SVG charts, alerts, acknowledge and resolve."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from flask import flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy import BigInteger, cast, func, select
from sqlalchemy.orm import Session

from ..domain.base import int_key
from ..domain.ledger import Settlement
from ..domain.monitoring import ALERT_STATUSES, Alert
from ..services import alerts, indicators
from ..services.indicators import Dialect, day_start, local_today, months_before
from . import charts, formatting
from .auth import language, role_required, work
from .blueprint import bp
from .forms import FormState

MONTHS = 12
OPEN = ("open", "acknowledged")
STATUS_LABELS = {
    "open": _l("awaiting acknowledgement"), "acknowledged": _l("acknowledged"), "resolved": _l("resolved"),
}
EVENT_LABELS = {
    "raised": _l("raised"), "reopened": _l("reopened"), "acknowledged": _l("acknowledged"),
    "resolved": _l("resolved"), "cleared": _l("condition cleared"), "updated": _l("figures updated"),
}
FIGURE_LABELS = {
    "members": _l("Household members"),
    "annual_income": _l("Annual household income (yuan)"),
    "oop": _l("Out-of-pocket spending in the window (yuan)"),
    "oop_share": _l("Out-of-pocket share of income"),
    "shares_over": _l("Share thresholds exceeded"),
    "per_capita_before": _l("Income per person before spending (yuan)"),
    "per_capita_after": _l("Income per person after spending (yuan)"),
    "poverty_line": _l("Poverty line per person (yuan)"),
    "window_months": _l("Window (months)"),
    # payment delays, unsettled discharges, referral timeouts, missed follow-ups
    "fund": _l("Fund"),
    "overdue_days": _l("Payment limit (days)"),
    "overdue": _l("Overdue"),
    "overdue_amount": _l("Overdue amount"),
    "unpaid": _l("Unpaid"),
    "outstanding": _l("Outstanding"),
    "by_age": _l("Unpaid by age (days since settlement)"),
    "oldest_since": _l("Oldest unpaid since"),
    "oldest_days": _l("Oldest unpaid (days)"),
    "discharge_date": _l("Discharged"),
    "days": _l("Days since discharge"),
    "priority": _l("Urgency"),
    "status": _l("Status"),
    "requested_at": _l("Sent"),
    "waited_hours": _l("Waited (hours)"),
    "limit_hours": _l("Limit (hours)"),
    "missed_dates": _l("Follow-ups missed"),
    "days_overdue": _l("Days overdue"),
}
MONEY_FIGURES = frozenset(("overdue_amount", "unpaid", "outstanding"))
DAY_FIGURES = frozenset(("oldest_since", "discharge_date"))


def _figure_text(key: str, value: Any) -> str:
    """One figure of an alert as the office reads it (money in yuan, days and times in Asia/Shanghai)."""
    if value is None or value == "" or value == []:
        return "—"
    if key in MONEY_FIGURES:
        return formatting.money(value)
    if key in DAY_FIGURES:
        return formatting.day(date.fromisoformat(str(value)))
    if key == "missed_dates":
        return "、".join(formatting.day(date.fromisoformat(str(d))) for d in value)
    if key == "by_age" and isinstance(value, dict):
        return "; ".join(f"{band}: {formatting.money(amount)}" for band, amount in value.items())
    if key == "requested_at":
        return formatting.when(iso(str(value).replace("Z", "+00:00")))
    if key == "fund":
        return formatting.component_label(str(value))
    if key == "priority":
        return formatting.label("priority", value)
    if key == "status":
        return formatting.label("task_status", value)
    if isinstance(value, bool):
        return _("yes") if value else _("no")
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def figure_rows(figures: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) of each figure behind an alert; a figure with no label keeps its key."""
    return [(str(FIGURE_LABELS.get(key, key)), _figure_text(key, value)) for key, value in figures.items()]


def iso(value: str | None) -> datetime | None:
    """A service's ISO instant text as a datetime (for the `when` filter)."""
    return datetime.fromisoformat(value) if value else None


def reason_text(code: str) -> str:
    """The alert reason in the page's language."""
    reason = alerts.REASONS.get(code)
    if reason is None:
        return code
    return reason.zh if language() == "zh" else reason.en


def monthly_oop(db: Session, start: date, end: date) -> list[dict[str, Any]]:
    """Per local month of settlement: settlements, total, patient pay (OOP) and the reimbursement ratio."""
    if db.get_bind().dialect.name == "postgresql":
        month = func.to_char(func.timezone("Asia/Shanghai", Settlement.settled_at), "YYYY-MM")
    else:
        month = func.strftime("%Y-%m", func.substr(Settlement.settled_at, 1, 19), "+8 hours")
    rows = db.execute(
        select(month.label("month"), func.count(),
               cast(func.sum(Dialect.fen(Settlement.total)), BigInteger),
               cast(func.sum(Dialect.fen(Settlement.patient_pay)), BigInteger))
        .where(Settlement.status == "active", Settlement.settled_at >= day_start(start),
               Settlement.settled_at < day_start(end + timedelta(days=1)))
        .group_by(month).order_by(month)
    ).all()
    found = {r[0]: r for r in rows}
    out = []
    cursor = start.replace(day=1)
    while cursor <= end:
        key = cursor.strftime("%Y-%m")
        r = found.get(key)
        total, oop = (int(r[2] or 0), int(r[3] or 0)) if r else (0, 0)
        out.append({
            "month": key, "settlements": int(r[1]) if r else 0,
            "total": Decimal(total) / 100, "oop": Decimal(oop) / 100,
            "ratio": round(100 * (total - oop) / total, 1) if total else None,
        })
        cursor = (cursor + timedelta(days=32)).replace(day=1)
    return out


def alerts_by_township(db: Session) -> list[tuple[str, int, int]]:
    """(township, open, acknowledged) for alerts not yet resolved."""
    rows = db.execute(
        select(Alert.township, Alert.status, func.count())
        .where(Alert.status.in_(OPEN))
        .group_by(Alert.township, Alert.status)
    ).all()
    counts: dict[str, list[int]] = {}
    for township, status, n in rows:
        counts.setdefault(township or "—", [0, 0])[OPEN.index(status)] += int(n)
    return sorted(((t, c[0], c[1]) for t, c in counts.items()), key=lambda r: (-(r[1] + r[2]), r[0]))


@bp.get("/monitor")
@role_required("monitor")
def monitor_dashboard() -> ResponseReturnValue:
    """Monthly OOP and reimbursement ratio, unpaid balances by age, open alerts by township."""
    today = local_today()
    start = months_before(today, MONTHS - 1).replace(day=1)
    with work() as (db, actor):
        alerts.ensure_may_monitor(actor)
        months = monthly_oop(db, start, today)
        unpaid = indicators.unpaid_balances(db, today)[-1]
        townships = alerts_by_township(db)
        summary = indicators.household_summary(db, today)
    labels = [m["month"][2:] for m in months]
    oop_chart = charts.bar_chart(
        "chart-oop", _("Out-of-pocket spending per month (yuan)"), labels,
        [charts.Series(_("Out-of-pocket"), [float(m["oop"]) for m in months])],
    )
    ratio_chart = charts.line_chart(
        "chart-ratio", _("Reimbursement ratio per month"), labels,
        [charts.Series(_("Reimbursed share of the total"), [m["ratio"] for m in months])], percent=True,
    )
    bands = list(unpaid.by_age)
    band_chart = charts.bar_chart(
        "chart-bands", _("Unpaid fund payments by days since settlement (yuan)"), bands,
        [charts.Series(_("Unpaid"), [float(unpaid.by_age[b]) for b in bands])],
    )
    township_chart = charts.bar_chart(
        "chart-townships", _("Alerts not yet resolved, by township"), [t[0] for t in townships],
        [charts.Series(_("awaiting acknowledgement"), [float(t[1]) for t in townships]),
         charts.Series(_("acknowledged"), [float(t[2]) for t in townships])],
    )
    return render_template(
        "web/monitor/dashboard.html", months=months, unpaid=unpaid, bands=bands, townships=townships,
        summary=summary, oop_chart=oop_chart, ratio_chart=ratio_chart, band_chart=band_chart,
        township_chart=township_chart, today=today, reason_label=reason_text,
    )


def _townships(db: Session) -> list[str]:
    return [t for t in db.scalars(select(Alert.township).distinct().order_by(Alert.township)) if t]


@bp.get("/monitor/alerts")
@role_required("monitor")
def monitor_alerts() -> ResponseReturnValue:
    """Alerts, newest first, filtered by reason, status and township (paged)."""
    values = {k: request.args.get(k, "").strip() for k in ("reason", "status", "township", "before")}
    form = FormState(values=values)
    errors: dict[str, list[str]] = {}
    if values["reason"] and values["reason"] not in alerts.REASONS:
        errors["reason"] = [_("Choose one of the reasons.")]
    if values["status"] and values["status"] not in ALERT_STATUSES:
        errors["status"] = [_("Choose one of the states.")]
    before = int_key(values["before"])
    form.errors = errors
    rows: list[dict[str, Any]] = []
    more: int | None = None
    with work() as (db, actor):
        townships = _townships(db)
        if not errors:
            query = alerts.AlertQuery(reason=values["reason"] or None, status=values["status"] or None,
                                      township=values["township"] or None, before_id=before)
            rows, more = alerts.list_alerts(db, actor, query)
        else:
            alerts.ensure_may_monitor(actor)
    return render_template(
        "web/monitor/alerts.html", form=form, rows=rows, more=more, townships=[(t, t) for t in townships],
        reasons=[(code, reason_text(code)) for code in alerts.REASONS],
        statuses=[(s, str(STATUS_LABELS[s])) for s in ALERT_STATUSES], reason_text=reason_text,
        status_labels=STATUS_LABELS, iso=iso,
    ), 422 if errors else 200


def _alert_page(alert_id: int, form: FormState | None = None, status: int = 200) -> ResponseReturnValue:
    with work() as (db, actor):
        alert = alerts.get_alert(db, actor, alert_id)
    return render_template(
        "web/monitor/alert.html", alert=alert, form=form or FormState(), reason_text=reason_text,
        status_labels=STATUS_LABELS, figure_rows=figure_rows(alert["figures"]), iso=iso,
        event_labels=EVENT_LABELS,
    ), status


@bp.get("/monitor/alerts/<key:alert_id>")
@role_required("monitor")
def monitor_alert(alert_id: int) -> ResponseReturnValue:
    """One alert: the figures behind it, its history, and the acknowledge / resolve forms."""
    return _alert_page(alert_id)


@bp.post("/monitor/alerts/<key:alert_id>/acknowledge")
@role_required("monitor")
def monitor_acknowledge(alert_id: int) -> ResponseReturnValue:
    """Take the alert in hand (an optional note)."""
    with work() as (db, actor):
        alerts.acknowledge(db, actor, alert_id, request.form.get("ack_note", ""))
    flash(_("The alert is acknowledged."), "success")
    return redirect(url_for("web.monitor_alert", alert_id=alert_id))


@bp.post("/monitor/alerts/<key:alert_id>/resolve")
@role_required("monitor")
def monitor_resolve(alert_id: int) -> ResponseReturnValue:
    """Resolve the alert with a note saying what was done."""
    note = request.form.get("note", "").strip()
    if not note:
        form = FormState(values={"note": ""}, errors={"note": [_("Say what was done for this household.")]})
        return _alert_page(alert_id, form, 422)
    with work() as (db, actor):
        alerts.resolve(db, actor, alert_id, note)
    flash(_("The alert is resolved."), "success")
    return redirect(url_for("web.monitor_alert", alert_id=alert_id))
