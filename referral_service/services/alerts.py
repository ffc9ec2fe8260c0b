"""Monitoring alerts: raised by scans, one per subject and reason, acknowledged and resolved by the offices.

Every scan finds the subjects that meet its conditions now (services/indicators.py) and reconciles
them with the stored alerts of its reasons: new ones are raised, known ones get their figures
updated (never a duplicate), and alerts whose condition no longer holds are resolved by the system
with a note. A resolved alert is reopened only when its condition returns after having cleared.
Each alert is mirrored as a FHIR Flag (status active/inactive, period) in the resource store.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Protocol

import orjson
import psycopg
from psycopg import sql as psql
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.orm import Session

from ..domain.actor import SYSTEM, Actor
from ..domain.base import utcnow
from ..domain.errors import BadRequest, Conflict, Forbidden, NotFound
from ..domain.fhir_store import (
    DateIndex,
    QuantityIndex,
    ReferenceIndex,
    ResourceVersion,
    StoredResource,
    StringIndex,
    TokenIndex,
)
from ..domain.ledger import FUNDS
from ..domain.monitoring import ALERT_STATUSES, Alert, AlertEvent
from ..domain.registry import Household, Organization, Patient
from ..fhir import jsonio
from ..fhir.codes import BASE, SETTLEMENT_COMPONENT_SYSTEM, code_system_url
from ..fhir.resources import RESOURCES
from ..fhir.search_params import extract
from ..fhir.store import ResourceStore, instant, now_ms
from . import indicators
from .indicators import plain

log = logging.getLogger(__name__)

REASON_SYSTEM = code_system_url("monitoring-alert-reason")
CATEGORY_SYSTEM = code_system_url("monitoring-category")
FLAG_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/flag-category"
ALERT_ID_SYSTEM = f"{BASE}/sid/monitoring-alert"
CHUNK = 5000


@dataclass(frozen=True)
class Reason:
    """Why an alert is raised: its code, category and wording (English, Chinese)."""

    code: str
    category: str  # poverty, payment, referral, follow-up
    en: str
    zh: str


REASONS: dict[str, Reason] = {
    r.code: r
    for r in (
        Reason("catastrophic-health-expenditure", "poverty",
               "Catastrophic health expenditure: out-of-pocket spending above the share of income",
               "灾难性卫生支出"),
        Reason("impoverishing-health-expenditure", "poverty",
               "Illness-induced poverty: out-of-pocket spending pushed income below the poverty line",
               "因病致贫"),
        Reason("deepening-poverty", "poverty",
               "Out-of-pocket spending deepened the poverty of a household below the line", "因病加深贫困"),
        Reason("return-to-poverty-watch", "poverty",
               "Return-to-poverty watch: income after out-of-pocket spending near the line, or high spending",
               "防返贫监测"),
        Reason("payment-overdue", "payment", "A fund's payments to the hospital are overdue",
               "医保基金拨付逾期"),
        Reason("unsettled-discharge", "payment", "Inpatient discharged but not settled", "出院未结算"),
        Reason("referral-timeout", "referral", "Referral not accepted in time", "转诊超时未接收"),
        Reason("missed-follow-up", "follow-up", "Down-referral follow-up missed", "康复随访逾期"),
    )
}
POVERTY_REASONS = ("catastrophic-health-expenditure", "impoverishing-health-expenditure", "deepening-poverty",
                   "return-to-poverty-watch")
PAYMENT_REASONS = ("payment-overdue", "unsettled-discharge")
CATEGORIES = tuple(sorted({r.category for r in REASONS.values()}))


# ------------------------------------------------------------------------------ findings, results


@dataclass(frozen=True)
class Finding:
    """A subject that meets a reason's condition now, with the figures that show it."""

    reason: str
    subject_type: str
    subject_id: str
    figures: dict[str, Any]
    scope: str = ""
    patient_id: str | None = None
    household_id: str | None = None
    organization_id: str | None = None
    district: str | None = None
    township: str | None = None

    @property
    def key(self) -> tuple[str, str, str, str]:
        """The alert's identity: subject, reason and scope."""
        return self.subject_type, self.subject_id, self.reason, self.scope


@dataclass
class ScanResult:
    """What one scan found and changed."""

    scan: str
    as_of: str
    found: int = 0
    raised: int = 0
    reopened: int = 0
    updated: int = 0
    cleared: int = 0

    def __str__(self) -> str:
        return (f"{self.scan} as of {self.as_of}: {self.found} found, {self.raised} raised, "
                f"{self.reopened} reopened, {self.updated} updated, {self.cleared} cleared")


class AlertLike(Protocol):
    """The alert columns a Flag is built from (an Alert, or a row selected with those columns)."""

    id: int
    reason: str
    scope: str
    status: str
    subject_type: str
    subject_id: str
    patient_id: str | None
    organization_id: str | None
    raised_at: datetime
    resolved_at: datetime | None


# ------------------------------------------------------------------------------ FHIR Flag


def flag_subject(alert: AlertLike) -> str:
    """Flag.subject: the patient, household (Group) or hospital the alert is about."""
    if alert.subject_type in ("Patient", "Group", "Organization"):
        return f"{alert.subject_type}/{alert.subject_id}"
    if alert.patient_id:
        return f"Patient/{alert.patient_id}"
    return f"Organization/{alert.organization_id}"


def flag_resource(alert: AlertLike) -> dict[str, Any]:
    """The FHIR Flag mirroring an alert: code = reason, status active until resolved, period."""
    reason = REASONS[alert.reason]
    codings = [{"system": REASON_SYSTEM, "code": reason.code, "display": reason.en}]
    if alert.scope in FUNDS:
        codings.append({"system": SETTLEMENT_COMPONENT_SYSTEM, "code": alert.scope})
    period = {"start": instant(alert.raised_at)}
    if alert.status == "resolved" and alert.resolved_at is not None:
        period["end"] = instant(alert.resolved_at)
    return {
        "resourceType": "Flag",
        "id": f"alert-{alert.id}",
        "identifier": [{"system": ALERT_ID_SYSTEM, "value": str(alert.id)}],
        "status": "inactive" if alert.status == "resolved" else "active",
        "category": [{"coding": [
            {"system": FLAG_CATEGORY_SYSTEM, "code": "admin", "display": "Administrative"},
            {"system": CATEGORY_SYSTEM, "code": reason.category},
        ]}],
        "code": {"coding": codings, "text": f"{reason.zh} / {reason.en}"},
        "subject": {"reference": flag_subject(alert)},
        "period": period,
    }


def publish_flag(session: Session, alert: AlertLike) -> None:
    """Store the alert's Flag (a new version when it exists); the facility concerned owns it."""
    store = ResourceStore(session)
    body = flag_resource(alert)
    existing = store.current("Flag", body["id"], for_update=True)
    store.save("Flag", body, method="PUT" if existing else "POST", owner_org_id=alert.organization_id,
               existing=existing)


_FLAG_COLUMNS = (Alert.id, Alert.reason, Alert.scope, Alert.status, Alert.subject_type, Alert.subject_id,
                 Alert.patient_id, Alert.organization_id, Alert.raised_at, Alert.resolved_at)


def _publish_flags(session: Session, ids: Sequence[int]) -> None:
    """Store a new version of the Flags of changed alerts (few per scan: one at a time)."""
    for chunk in _chunks(ids, CHUNK):
        for row in session.execute(select(*_FLAG_COLUMNS).where(Alert.id.in_(chunk))).all():
            publish_flag(session, row)


def _create_flags(session: Session, alerts: Sequence[AlertLike]) -> None:
    """Store version 1 of the Flags of new alerts in bulk: a first scan may raise a hundred thousand.

    Writes what ResourceStore.save writes for a create (the JSON, a version row, the search
    indexes), with one bulk insert per table instead of several statements per resource.
    """
    rdef = RESOURCES["Flag"]
    params = list(rdef.params)
    for chunk in _chunks(alerts, CHUNK):
        ts = now_ms()
        pks = _allocate_ids(session, StoredResource.__table__.c.pk, len(chunk))
        resources, versions = [], []
        indexes: dict[Any, list[dict[str, Any]]] = {
            TokenIndex: [], StringIndex: [], DateIndex: [], ReferenceIndex: [], QuantityIndex: []}
        for pk, alert in zip(pks, chunk, strict=True):
            flag = flag_resource(alert)
            meta = {"versionId": "1", "lastUpdated": instant(ts)}
            body = {"resourceType": "Flag", "id": flag["id"], "meta": meta,
                    **{k: v for k, v in flag.items() if k not in ("resourceType", "id")}}
            content = jsonio.dumps(body)
            resources.append({"pk": pk, "res_type": "Flag", "res_id": body["id"], "version_id": 1,
                              "last_updated": ts, "deleted": False, "content": content,
                              "owner_org_id": alert.organization_id,
                              "patient_id": rdef.compartment_patient(body)})
            versions.append({"resource_pk": pk, "version_id": 1, "res_type": "Flag", "last_updated": ts,
                             "method": "POST", "deleted": False, "content": content})
            base = {"resource_pk": pk, "res_type": "Flag"}
            idx = extract(body, params)
            indexes[TokenIndex] += [{**base, "param": p, "system": sy, "code": c} for p, sy, c in idx.tokens]
            # (the texts of its codes, which `code:text=` searches)
            indexes[StringIndex] += [{**base, "param": p, "value": v, "exact": e} for p, v, e in idx.strings]
            indexes[DateIndex] += [{**base, "param": p, "low": lo, "high": hi} for p, lo, hi in idx.dates]
            indexes[ReferenceIndex] += [{**base, "param": p, "target_type": t, "target_id": i}
                                        for p, t, i in idx.references]
            indexes[QuantityIndex] += [{**base, "param": p, "system": sy, "code": c, "unit": u, "value": v}
                                       for p, sy, c, u, v in idx.quantities]
        _bulk_insert(session, StoredResource.__table__, resources)
        _bulk_insert(session, ResourceVersion.__table__, versions)
        for model, rows in indexes.items():
            _bulk_insert(session, model.__table__, rows)


def _allocate_ids(session: Session, column: Any, count: int) -> list[int]:
    """`count` fresh values of an auto-increment key, so related rows can be written in bulk."""
    if not count:
        return []
    if session.get_bind().dialect.name == "postgresql":
        sequence = session.scalar(text("SELECT pg_get_serial_sequence(:t, :c)"),
                                  {"t": column.table.name, "c": column.name})
        return list(session.scalars(text("SELECT nextval(:s) FROM generate_series(1, :n)"),
                                    {"s": sequence, "n": count}))
    # SQLite: every transaction holds the write lock (BEGIN IMMEDIATE), so nobody else takes these.
    first = int(session.scalar(select(func.coalesce(func.max(column), 0))) or 0) + 1
    return list(range(first, first + count))


def _bulk_insert(session: Session, table: Any, rows: list[dict[str, Any]]) -> None:
    """Insert rows fast: COPY on PostgreSQL, a Core executemany elsewhere."""
    if not rows:
        return
    connection = session.connection()
    raw: Any = connection.connection.dbapi_connection
    if connection.dialect.name != "postgresql" or not isinstance(raw, psycopg.Connection):
        connection.execute(table.insert(), rows)
        return
    columns = list(rows[0])
    statement = psql.SQL("COPY {} ({}) FROM STDIN").format(
        psql.Identifier(table.name), psql.SQL(", ").join(map(psql.Identifier, columns)))
    with raw.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row([orjson.dumps(v).decode() if isinstance(v, dict | list) else v
                            for v in (row[c] for c in columns)])


# ------------------------------------------------------------------------------ reconciliation


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


def _event(alert_id: int, action: str, actor: Actor, when: datetime,
           note: str | None = None) -> dict[str, Any]:
    return {"alert_id": alert_id, "at": when, "action": action, "actor": actor.name, "actor_kind": actor.kind,
            "organization_id": actor.organization_id, "note": note}


def reconcile(session: Session, scan: str, reasons: Iterable[str], findings: Sequence[Finding], *,
              as_of: date | datetime, when: datetime | None = None) -> ScanResult:
    """Make the stored alerts of the reasons match what a scan found (no duplicates; figures updated)."""
    when = when or utcnow()
    reasons = tuple(reasons)
    result = ScanResult(scan, as_of.isoformat(), found=len(findings))
    known = {
        (r.subject_type, r.subject_id, r.reason, r.scope): r
        for r in session.execute(
            select(Alert.id, Alert.subject_type, Alert.subject_id, Alert.reason, Alert.scope, Alert.status,
                   Alert.condition_holds, Alert.figures).where(Alert.reason.in_(reasons))
        ).all()
    }
    new: list[tuple[Finding, dict[str, Any]]] = []
    changed: list[dict[str, Any]] = []
    seen: list[int] = []
    reopened: list[int] = []
    events: list[dict[str, Any]] = []
    found_keys = set()
    for finding in findings:
        if finding.key in found_keys:
            continue  # a scan may name a subject twice; one alert still
        found_keys.add(finding.key)
        figures = plain(finding.figures)
        row = known.get(finding.key)
        if row is None:
            new.append((finding, figures))
        elif row.status == "resolved" and not row.condition_holds:
            reopened.append(row.id)
            changed.append({"id": row.id, "status": "open", "condition_holds": True, "figures": figures,
                            "raised_at": when, "last_seen_at": when, "acknowledged_at": None,
                            "acknowledged_by": None, "resolved_at": None, "resolved_by": None,
                            "resolution_note": None})
            events.append(_event(row.id, "reopened", SYSTEM, when, "the condition holds again"))
        elif row.figures != figures or not row.condition_holds:
            result.updated += 1
            changed.append({"id": row.id, "condition_holds": True, "figures": figures, "last_seen_at": when})
        else:
            seen.append(row.id)
    if changed:
        session.execute(update(Alert), changed)
    for chunk in _chunks(seen, CHUNK):
        session.execute(update(Alert).where(Alert.id.in_(chunk)).values(last_seen_at=when))

    created = _insert(session, new, when)
    raised = [a.id for a in created]
    events += [_event(i, "raised", SYSTEM, when) for i in raised]

    gone = [r for k, r in known.items() if k not in found_keys and r.condition_holds]
    for chunk in _chunks([r.id for r in gone], CHUNK):
        session.execute(update(Alert).where(Alert.id.in_(chunk)).values(condition_holds=False))
    note = f"cleared: the condition no longer holds ({scan} as of {as_of.isoformat()})"
    cleared: list[int] = []
    for chunk in _chunks([r.id for r in gone if r.status != "resolved"], CHUNK):
        # Only those still unresolved now: someone may have resolved one since the scan read it.
        cleared += session.scalars(
            update(Alert).where(Alert.id.in_(chunk), Alert.status != "resolved")
            .values(status="resolved", resolved_at=when, resolved_by=SYSTEM.name, resolution_note=note)
            .returning(Alert.id)
        ).all()
    events += [_event(i, "resolved", SYSTEM, when, note) for i in cleared]
    _bulk_insert(session, AlertEvent.__table__, events)
    _create_flags(session, created)
    _publish_flags(session, [*reopened, *cleared])
    result.raised, result.reopened, result.cleared = len(raised), len(reopened), len(cleared)
    log.info("%s", result)
    return result


@dataclass
class _NewAlert:
    """The columns of a just-raised alert its Flag needs (see AlertLike)."""

    id: int
    reason: str
    scope: str
    subject_type: str
    subject_id: str
    patient_id: str | None
    organization_id: str | None
    raised_at: datetime
    status: str = "open"
    resolved_at: datetime | None = None


def _insert(session: Session, new: Sequence[tuple[Finding, dict[str, Any]]],
            when: datetime) -> list[_NewAlert]:
    """Raise alerts in bulk (ids taken first, then one COPY or executemany per chunk)."""
    created: list[_NewAlert] = []
    for chunk in _chunks(new, CHUNK):
        ids = _allocate_ids(session, Alert.__table__.c.id, len(chunk))
        rows = [
            {"id": i, "reason": f.reason, "category": REASONS[f.reason].category,
             "subject_type": f.subject_type, "subject_id": f.subject_id, "scope": f.scope, "status": "open",
             "condition_holds": True,
             "figures": figures, "patient_id": f.patient_id, "household_id": f.household_id,
             "organization_id": f.organization_id, "district": f.district, "township": f.township,
             "raised_at": when, "last_seen_at": when}
            for i, (f, figures) in zip(ids, chunk, strict=True)
        ]
        _bulk_insert(session, Alert.__table__, rows)
        created += [_NewAlert(i, f.reason, f.scope, f.subject_type, f.subject_id, f.patient_id,
                              f.organization_id, when) for i, (f, _) in zip(ids, chunk, strict=True)]
    return created


def _places(session: Session, model: type[Patient] | type[Organization], ids: Iterable[str | None]) -> dict[
        str, tuple[str | None, str | None]]:
    """(district, township) of patients or organisations by id."""
    wanted = sorted({i for i in ids if i})
    places: dict[str, tuple[str | None, str | None]] = {}
    for chunk in _chunks(wanted, CHUNK):
        for rid, district, township in session.execute(
            select(model.id, model.district, model.township).where(model.id.in_(chunk))
        ).all():
            places[rid] = (district, township)
    return places


# ------------------------------------------------------------------------------ the scans


def scan_poverty_risk(session: Session, as_of: date) -> ScanResult:
    """Households at risk of illness-induced poverty over the rolling window ending `as_of` (因病致贫返贫)."""
    th = indicators.thresholds().poverty
    findings: list[Finding] = []
    for h in indicators.households_at_risk(session, as_of):
        figures = {
            "members": h.members, "annual_income": h.annual_income, "oop": h.oop, "oop_share": h.oop_share,
            "shares_over": list(h.shares_over), "per_capita_before": h.per_capita_before,
            "per_capita_after": h.per_capita_after, "poverty_line": th.poverty_line,
            "window_months": th.window_months,
        }
        for reason, hit in (("catastrophic-health-expenditure", h.catastrophic),
                            ("impoverishing-health-expenditure", h.impoverishing),
                            ("deepening-poverty", h.deepening),
                            ("return-to-poverty-watch", h.return_to_poverty_watch)):
            if hit:
                findings.append(Finding(reason, "Group", h.household_id, figures, household_id=h.household_id,
                                        district=h.district, township=h.township))
    return reconcile(session, "poverty-risk", POVERTY_REASONS, findings, as_of=as_of)


def scan_payment_delays(session: Session, as_of: date) -> ScanResult:
    """Funds owing hospitals payments older than the limit, and discharges left unsettled."""
    th = indicators.thresholds().payments
    findings: list[Finding] = []
    balances = [r for r in indicators.unpaid_balances(session, as_of) if r.hospital_id and r.overdue]
    hospitals = _places(session, Organization, (r.hospital_id for r in balances))
    for r in balances:
        assert r.hospital_id is not None and r.fund is not None
        district, township = hospitals.get(r.hospital_id, (None, None))
        figures = {"fund": r.fund, "overdue_days": th.overdue_days, "overdue": r.overdue,
                   "overdue_amount": r.overdue_amount, "unpaid": r.unpaid, "outstanding": r.outstanding,
                   "by_age": r.by_age, "oldest_since": r.oldest_since, "oldest_days": r.oldest_days}
        findings.append(Finding("payment-overdue", "Organization", r.hospital_id, figures, scope=r.fund,
                                organization_id=r.hospital_id, district=district, township=township))
    stays = indicators.unsettled_discharges(session, as_of)
    patients = _places(session, Patient, (s.patient_id for s in stays))
    for s in stays:
        district, township = patients.get(s.patient_id or "", (None, None))
        findings.append(Finding("unsettled-discharge", "Encounter", s.encounter_id,
                                {"discharge_date": s.discharge_date, "days": s.days}, patient_id=s.patient_id,
                                organization_id=s.hospital_id, district=district, township=township))
    return reconcile(session, "payment-delays", PAYMENT_REASONS, findings, as_of=as_of)


def scan_referral_timeouts(session: Session, now: datetime) -> ScanResult:
    """Referral Tasks still waiting for acceptance past their limit (24 h; urgent and stat 2 h)."""
    tasks = indicators.waiting_tasks(session, now)
    patients = _places(session, Patient, (t.patient_id for t in tasks))
    findings = []
    for t in tasks:
        district, township = patients.get(t.patient_id or "", (None, None))
        figures = {"priority": t.priority, "status": t.status, "requested_at": t.requested_at,
                   "waited_hours": t.waited_hours, "limit_hours": t.limit_hours}
        findings.append(Finding("referral-timeout", "Task", t.task_id, figures, patient_id=t.patient_id,
                                organization_id=t.owner_id, district=district, township=township))
    return reconcile(session, "referral-timeouts", ("referral-timeout",), findings, as_of=now.astimezone(UTC))


def scan_missed_follow_ups(session: Session, today: date) -> ScanResult:
    """Down-referral care plans with follow-up visits still scheduled after their date."""
    plans = indicators.missed_follow_ups(session, today)
    patients = _places(session, Patient, (p.patient_id for p in plans))
    findings = []
    for p in plans:
        district, township = patients.get(p.patient_id or "", (None, None))
        figures = {"missed_dates": list(p.missed_dates), "days_overdue": p.days_overdue}
        findings.append(Finding("missed-follow-up", "CarePlan", p.care_plan_id, figures,
                                patient_id=p.patient_id,
                                organization_id=p.clinic_id, district=district, township=township))
    return reconcile(session, "follow-up-reminders", ("missed-follow-up",), findings, as_of=today)


# ------------------------------------------------------------------------------ lifecycle


def ensure_may_monitor(actor: Actor) -> None:
    """Only the poverty-alleviation office, the health commission and the insurer (or the platform) may."""
    if not actor.monitors:
        raise Forbidden("monitoring is for the poverty-alleviation office, the health commission and the "
                        "medical insurance bureau")


def _locked(session: Session, alert_id: int) -> Alert:
    alert = session.get(Alert, alert_id, with_for_update=True)
    if alert is None:
        raise NotFound(f"alert {alert_id} is not known")
    return alert


def acknowledge(session: Session, actor: Actor, alert_id: int, note: str | None = None) -> dict[str, Any]:
    """open -> acknowledged: someone has taken the alert in hand."""
    ensure_may_monitor(actor)
    alert = _locked(session, alert_id)
    if alert.status != "open":
        raise Conflict(f"alert {alert_id} is {alert.status}; only an open alert can be acknowledged")
    when = utcnow()
    alert.status, alert.acknowledged_at, alert.acknowledged_by = "acknowledged", when, actor.name
    note = (note or "").strip() or None
    session.execute(insert(AlertEvent), [_event(alert.id, "acknowledged", actor, when, note)])
    return alert_view(session, alert, events=True, label=subject_labels(session, [alert])[alert.id])


def resolve(session: Session, actor: Actor, alert_id: int, note: str) -> dict[str, Any]:
    """open or acknowledged -> resolved, with a note saying what was done; the Flag becomes inactive."""
    ensure_may_monitor(actor)
    note = (note or "").strip()
    if not note:
        raise BadRequest("resolving an alert needs a note saying what was done")
    alert = _locked(session, alert_id)
    if alert.status == "resolved":
        raise Conflict(f"alert {alert_id} is already resolved")
    when = utcnow()
    alert.status, alert.resolved_at, alert.resolved_by = "resolved", when, actor.name
    alert.resolution_note = note
    session.execute(insert(AlertEvent), [_event(alert.id, "resolved", actor, when, note)])
    session.flush()
    publish_flag(session, alert)
    return alert_view(session, alert, events=True, label=subject_labels(session, [alert])[alert.id])


@dataclass(frozen=True)
class AlertQuery:
    """Filters of the alert list, newest first, paged by id."""

    reason: str | None = None
    status: str | None = None
    category: str | None = None
    township: str | None = None
    organization_id: str | None = None
    household_id: str | None = None
    patient_id: str | None = None
    before_id: int | None = None
    limit: int = 50

    def __post_init__(self) -> None:
        if self.reason is not None and self.reason not in REASONS:
            raise BadRequest(f"unknown reason {self.reason!r}; one of {', '.join(REASONS)}")
        if self.status is not None and self.status not in ALERT_STATUSES:
            raise BadRequest(f"unknown status {self.status!r}; one of {', '.join(ALERT_STATUSES)}")
        if self.category is not None and self.category not in CATEGORIES:
            raise BadRequest(f"unknown category {self.category!r}; one of {', '.join(CATEGORIES)}")
        if not 1 <= self.limit <= 500:
            raise BadRequest("limit must be between 1 and 500")


def list_alerts(session: Session, actor: Actor, query: AlertQuery) -> tuple[list[dict[str, Any]], int | None]:
    """One page of alerts matching the filters, and the cursor of the next page (None: last page)."""
    ensure_may_monitor(actor)
    stmt = select(Alert)
    for column, value in ((Alert.reason, query.reason), (Alert.status, query.status),
                          (Alert.category, query.category), (Alert.township, query.township),
                          (Alert.organization_id, query.organization_id),
                          (Alert.household_id, query.household_id), (Alert.patient_id, query.patient_id)):
        if value is not None:
            stmt = stmt.where(column == value)
    if query.before_id is not None:
        stmt = stmt.where(Alert.id < query.before_id)
    rows = list(session.scalars(stmt.order_by(Alert.id.desc()).limit(query.limit + 1)))
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    labels = subject_labels(session, rows)
    return [alert_view(session, a, label=labels.get(a.id)) for a in rows], (rows[-1].id if more else None)


MEMBERS_NAMED = 3  # a household is named by its eldest members


def subject_labels(session: Session, alerts: Sequence[Alert]) -> dict[int, str]:
    """What each alert concerns, in words, for people reading the list: a household by its village,
    code and eldest members; a patient by name; a hospital by name (three queries for a page)."""
    subjects = {a.id: flag_subject(a) for a in alerts}
    ids: dict[str, set[str]] = {"Group": set(), "Patient": set(), "Organization": set()}
    for subject in subjects.values():
        kind, _, ident = subject.partition("/")
        ids[kind].add(ident)
    names: dict[str, str] = {}
    if ids["Group"]:
        members: dict[str, list[str]] = {}
        for household_id, family, given in session.execute(
            select(Patient.household_id, Patient.family_name, Patient.given_name)
            .where(Patient.household_id.in_(ids["Group"]))
            .order_by(Patient.household_id, Patient.birth_date, Patient.id)
        ):
            members.setdefault(str(household_id), []).append(f"{family}{given}")
        for home in session.scalars(select(Household).where(Household.id.in_(ids["Group"]))):
            people = members.get(home.id, [])
            shown = "、".join(people[:MEMBERS_NAMED]) + ("…" if len(people) > MEMBERS_NAMED else "")
            place = " ".join(p for p in (home.township, home.village) if p)
            names[f"Group/{home.id}"] = " · ".join(p for p in (place, home.code or home.id, shown) if p)
    if ids["Patient"]:
        for pid, family, given in session.execute(
            select(Patient.id, Patient.family_name, Patient.given_name).where(Patient.id.in_(ids["Patient"]))
        ):
            names[f"Patient/{pid}"] = f"{family}{given}"
    if ids["Organization"]:
        for oid, name in session.execute(
            select(Organization.id, Organization.name).where(Organization.id.in_(ids["Organization"]))
        ):
            names[f"Organization/{oid}"] = name
    return {alert_id: names.get(subject, subject) for alert_id, subject in subjects.items()}


def get_alert(session: Session, actor: Actor, alert_id: int) -> dict[str, Any]:
    """One alert with its history."""
    ensure_may_monitor(actor)
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise NotFound(f"alert {alert_id} is not known")
    return alert_view(session, alert, events=True, label=subject_labels(session, [alert])[alert.id])


def alert_view(
    session: Session, alert: Alert, *, events: bool = False, label: str | None = None
) -> dict[str, Any]:
    """An alert as JSON-ready data (with its history when asked); `label`: its subject in words."""
    reason = REASONS[alert.reason]
    view: dict[str, Any] = {
        "id": alert.id, "reason": alert.reason, "reason_zh": reason.zh, "reason_en": reason.en,
        "category": alert.category, "status": alert.status, "condition_holds": alert.condition_holds,
        "subject": f"{alert.subject_type}/{alert.subject_id}", "scope": alert.scope or None,
        "flag": f"Flag/{alert.flag_id}", "flag_subject": flag_subject(alert),
        "subject_label": label or flag_subject(alert), "figures": alert.figures,
        "patient_id": alert.patient_id, "household_id": alert.household_id,
        "organization_id": alert.organization_id, "district": alert.district, "township": alert.township,
        "raised_at": alert.raised_at, "last_seen_at": alert.last_seen_at,
        "acknowledged_at": alert.acknowledged_at, "acknowledged_by": alert.acknowledged_by,
        "resolved_at": alert.resolved_at, "resolved_by": alert.resolved_by,
        "resolution_note": alert.resolution_note,
    }
    if events:
        rows = session.scalars(
            select(AlertEvent).where(AlertEvent.alert_id == alert.id).order_by(AlertEvent.id))
        view["events"] = [
            {"at": e.at, "action": e.action, "actor": e.actor, "actor_kind": e.actor_kind,
             "organization_id": e.organization_id, "note": e.note}
            for e in rows
        ]
    return plain(view)
