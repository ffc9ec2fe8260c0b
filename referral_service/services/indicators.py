"""Monitoring indicators (DESIGN section 6), each computed by SQL aggregates on SQLite and PostgreSQL.

Money is compared and summed as whole fen (integers) inside SQL so that thresholds hold exactly on
both engines; ratios from the configuration are exact fractions. Days are calendar days in
Asia/Shanghai. Only aggregates, or the rows that meet a condition, leave the database.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_FLOOR, Decimal
from fractions import Fraction
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Date,
    Float,
    Integer,
    Select,
    Text,
    and_,
    case,
    cast,
    extract,
    false,
    func,
    literal,
    null,
    or_,
    select,
    true,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from ..config import PROJECT_ROOT
from ..domain.actor import Actor
from ..domain.base import UTCDateTime
from ..domain.days import DayOutOfRange, check_day
from ..domain.errors import BadRequest
from ..domain.fhir_store import DateIndex, ReferenceIndex, ResourceVersion, StoredResource, TokenIndex
from ..domain.ledger import FUNDS, Payable, Settlement
from ..domain.registry import Household, Patient
from .ledger_scope import payables_seen

SHANGHAI = ZoneInfo("Asia/Shanghai")
OPEN_TASK_STATES = ("requested", "received")
ACCEPTED_TASK_STATES = ("accepted", "in-progress", "completed")
CLOSED_TASK_STATES = ("rejected", "cancelled", "failed")
URGENT_PRIORITIES = ("urgent", "stat", "asap")
DEFAULT_CONFIG = PROJECT_ROOT / "config" / "monitoring.toml"
MAX_LISTED = 200  # rows listed beside an aggregate (the failing stays, the late Tasks)


# ------------------------------------------------------------------------------ configuration


class MonitoringConfigError(ValueError):
    """The monitoring thresholds file is invalid (names the file, section and key)."""


@dataclass(frozen=True)
class PaymentThresholds:
    """Discharge, settlement and payment delays."""

    unsettled_discharge_days: int = 1
    overdue_days: int = 30
    age_bands: tuple[int, ...] = (30, 60, 90)
    lookback_days: int = 365


@dataclass(frozen=True)
class PovertyCheckThresholds:
    """Gansu 2018 checks on registered-poor inpatient stays."""

    min_reimbursement_ratio: Decimal = Decimal("0.85")
    max_patient_pay: Decimal = Decimal("3000")


@dataclass(frozen=True)
class ReferralThresholds:
    """How long a referral Task may wait for acceptance."""

    accept_within_hours: int = 24
    accept_within_hours_urgent: int = 2

    def hours_for(self, priority: str | None) -> int:
        """The limit for a Task of the priority."""
        return self.accept_within_hours_urgent if priority in URGENT_PRIORITIES else self.accept_within_hours


@dataclass(frozen=True)
class FollowUpThresholds:
    """When a scheduled down-referral follow-up counts as missed."""

    grace_days: int = 0


@dataclass(frozen=True)
class PovertyThresholds:
    """Illness-induced poverty (因病致贫) of a household over a rolling window."""

    window_months: int = 12
    oop_share_thresholds: tuple[Decimal, ...] = (Decimal("0.10"), Decimal("0.25"), Decimal("0.40"))
    catastrophic_share: Decimal = Decimal("0.40")
    poverty_line: Decimal = Decimal("4000")
    watch_line_multiple: Decimal = Decimal("1.5")
    watch_oop: Decimal = Decimal("10000")


@dataclass(frozen=True)
class Thresholds:
    """Every monitoring threshold (config/monitoring.toml)."""

    payments: PaymentThresholds = field(default_factory=PaymentThresholds)
    poverty_checks: PovertyCheckThresholds = field(default_factory=PovertyCheckThresholds)
    referrals: ReferralThresholds = field(default_factory=ReferralThresholds)
    follow_ups: FollowUpThresholds = field(default_factory=FollowUpThresholds)
    poverty: PovertyThresholds = field(default_factory=PovertyThresholds)


SECTION_TYPES: dict[str, type] = {
    "payments": PaymentThresholds,
    "poverty_checks": PovertyCheckThresholds,
    "referrals": ReferralThresholds,
    "follow_ups": FollowUpThresholds,
    "poverty": PovertyThresholds,
}


def _convert(where: str, kind: Any, raw: Any) -> Any:
    if kind in (int, "int"):
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
            raise MonitoringConfigError(f"{where}: expected a whole number >= 0, got {raw!r}")
        return raw
    if kind in (Decimal, "Decimal"):
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise MonitoringConfigError(f"{where}: expected a decimal number, got {raw!r}")
        try:
            value = Decimal(str(raw))
        except ArithmeticError:
            raise MonitoringConfigError(f"{where}: expected a decimal number, got {raw!r}") from None
        if not value.is_finite() or value < 0:
            raise MonitoringConfigError(f"{where}: expected a decimal number >= 0, got {raw!r}")
        return value
    item = "int" if "int" in str(kind) else "Decimal"
    if not isinstance(raw, list) or not raw:
        raise MonitoringConfigError(f"{where}: expected a non-empty list, got {raw!r}")
    values = tuple(_convert(f"{where}[{i}]", item, v) for i, v in enumerate(raw))
    if list(values) != sorted(set(values)):
        raise MonitoringConfigError(f"{where}: values must be distinct and ascending, got {raw!r}")
    return values


def parse_thresholds(data: Mapping[str, Any], source: str = "monitoring config") -> Thresholds:
    """Thresholds from parsed TOML; unknown sections or keys and wrong types raise MonitoringConfigError."""
    sections: dict[str, Any] = {}
    for name, values in data.items():
        if name not in SECTION_TYPES:
            raise MonitoringConfigError(
                f"{source}: unknown section [{name}] (known: {', '.join(SECTION_TYPES)})")
        if not isinstance(values, dict):
            raise MonitoringConfigError(f"{source}: [{name}] must be a table")
        section_type = SECTION_TYPES[name]
        fields = {f.name: f for f in dataclasses.fields(section_type)}
        kwargs = {}
        for key, raw in values.items():
            if key not in fields:
                raise MonitoringConfigError(
                    f"{source}: unknown key {name}.{key} (known: {', '.join(fields)})")
            kwargs[key] = _convert(f"{source}: {name}.{key}", fields[key].type, raw)
        sections[name] = section_type(**kwargs)
    result = Thresholds(**sections)
    if result.poverty.window_months < 1:
        raise MonitoringConfigError(f"{source}: poverty.window_months must be at least 1")
    return result


def load_thresholds(path: Path) -> Thresholds:
    """Read and check a thresholds file."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise MonitoringConfigError(f"{path}: no such monitoring configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise MonitoringConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_thresholds(data, str(path))


@dataclass
class _Configured:
    path: Path = DEFAULT_CONFIG
    value: Thresholds | None = None


_configured = _Configured()


def configure(path: Path) -> Thresholds:
    """Load the thresholds file once at start-up (a broken file stops start-up)."""
    _configured.value = load_thresholds(path)
    _configured.path = path
    return _configured.value


def thresholds() -> Thresholds:
    """The configured thresholds (config/monitoring.toml unless `configure` named another file)."""
    if _configured.value is None:
        _configured.value = load_thresholds(_configured.path)
    return _configured.value


# ------------------------------------------------------------------------------ query inputs


@dataclass(frozen=True)
class Filters:
    """Optional restrictions: one hospital (or clinic), one fund, one township of residence."""

    hospital_id: str | None = None
    fund: str | None = None
    township: str | None = None

    def __post_init__(self) -> None:
        if self.fund is not None and self.fund not in FUNDS:
            raise BadRequest(f"unknown fund {self.fund!r}; one of {', '.join(FUNDS)}")


@dataclass(frozen=True)
class Period:
    """Calendar dates from `start` to `end`, both inclusive (Asia/Shanghai)."""

    start: date
    end: date

    def __post_init__(self) -> None:
        for day in (self.start, self.end):
            try:
                check_day(day)  # (midnights in UTC and the day after stay in the calendar)
            except DayOutOfRange as exc:
                raise BadRequest(f"the period is out of range: {exc}") from None
        if self.start > self.end:
            raise BadRequest(f"the period starts ({self.start}) after it ends ({self.end})")

    @property
    def start_instant(self) -> datetime:
        """The first instant of the period."""
        return day_start(self.start)

    @property
    def end_instant(self) -> datetime:
        """The first instant after the period."""
        return day_start(self.end + timedelta(days=1))


def day_start(day: date) -> datetime:
    """Midnight of the day in Asia/Shanghai, as UTC."""
    return datetime.combine(day, time(), tzinfo=SHANGHAI).astimezone(UTC)


def months_before(day: date, months: int) -> date:
    """The same day `months` earlier (the month's last day when that day does not exist)."""
    index = day.year * 12 + day.month - 1 - months
    year, month = divmod(index, 12)
    month += 1
    last = (date(year + (month == 12), month % 12 + 1, 1) - timedelta(days=1)).day
    return date(year, month, min(day.day, last))


def local_today(now: datetime | None = None) -> date:
    """Today's date in Asia/Shanghai."""
    return (now or datetime.now(UTC)).astimezone(SHANGHAI).date()


# ------------------------------------------------------------------------------ SQL helpers


class Dialect:
    """The few expressions that differ between SQLite and PostgreSQL."""

    def __init__(self, session: Session) -> None:
        self.name = session.get_bind().dialect.name
        self.pg = self.name == "postgresql"

    @staticmethod
    def fen(amount: Any) -> ColumnElement[int]:
        """A Money column as whole fen (exact on both engines)."""
        return cast(func.round(amount * 100), BigInteger)

    def local_date(self, instant: Any) -> ColumnElement[date]:
        """The Asia/Shanghai calendar date of a UTC timestamp column."""
        if self.pg:
            return cast(func.timezone("Asia/Shanghai", instant), Date)
        # Whole seconds first: SQLite rounds to milliseconds, so 23:59:59.999999 would become tomorrow.
        return type_coerce(func.date(func.substr(instant, 1, 19), "+8 hours"), Date)

    def days_between(self, later: Any, earlier: Any) -> ColumnElement[int]:
        """Whole days from one date expression to another."""
        if self.pg:
            return cast(later - earlier, Integer)
        return cast(func.julianday(later) - func.julianday(earlier), Integer)

    def epoch(self, instant: Any) -> ColumnElement[float]:
        """Seconds since 1970 of a timestamp expression."""
        if self.pg:
            return cast(extract("epoch", instant), Float)
        return (func.julianday(instant) - 2440587.5) * 86400.0

    def json_doc(self, content: Any) -> Any:
        """The stored JSON bytes of a resource as a document the JSON functions accept."""
        if self.pg:
            return cast(func.convert_from(content, "UTF8"), JSONB)
        return cast(content, Text)

    def json_text(self, doc: Any, *path: str) -> ColumnElement[str]:
        """The text at a path of object keys."""
        if self.pg:
            return func.jsonb_extract_path_text(doc, *path)
        return func.json_extract(doc, "$." + ".".join(path))

    def json_elements(self, doc: Any, key: str) -> Any:
        """The elements of the array under `key`, as a table with one column `value`."""
        if self.pg:
            return func.jsonb_array_elements(func.jsonb_extract_path(doc, key)).table_valued("value")
        return func.json_each(doc, f"$.{key}").table_valued("value")

    def percentile(self, fraction: float, value: Any) -> Any:
        """percentile_cont aggregate (PostgreSQL only; see `_percentiles` for SQLite)."""
        return func.percentile_cont(fraction).within_group(value)


def _money(fen: Any) -> Decimal:
    return (Decimal(int(fen or 0)) / 100).quantize(Decimal("0.01"))


def _ratio(value: Decimal) -> tuple[int, int]:
    frac = Fraction(value)
    return frac.numerator, frac.denominator


def _round(value: Any, places: int = 2) -> float | None:
    return None if value is None else round(float(value), places)


def _fund_amount(fund: str) -> Any:
    return {
        "basic-insurance": Settlement.basic_insurance,
        "critical-illness": Settlement.critical_illness,
        "medical-assistance": Settlement.medical_assistance,
        "poverty-safety-net": Settlement.poverty_safety_net,
    }[fund]


def _township_patients(township: str) -> Select[Any]:
    return select(Patient.id).where(Patient.township == township)


def _settlement_filters(filters: Filters) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if filters.hospital_id:
        where.append(Settlement.provider_id == filters.hospital_id)
    if filters.fund:
        where.append(_fund_amount(filters.fund) > 0)
    if filters.township:
        where.append(Settlement.patient_id.in_(_township_patients(filters.township)))
    return where


def plain(value: Any) -> Any:
    """Dataclasses, Decimals, dates and tuples as JSON-ready values (money as strings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


# ------------------------------------------------------------------- discharge -> settlement


@dataclass(frozen=True)
class SettlementDelayRow:
    """Days from discharge to settlement for one hospital (None: all hospitals)."""

    hospital_id: str | None
    settlements: int
    same_day: int
    late: int  # settled after the discharge day (target: 0 days)
    mean_days: float | None
    max_days: int | None


def discharge_to_settlement(session: Session, period: Period, filters: Filters = Filters()) -> list[
        SettlementDelayRow]:
    """Per hospital, then a total row: settlements discharged in the period, by days to settlement."""
    sql = Dialect(session)
    days = sql.days_between(sql.local_date(Settlement.settled_at), Settlement.discharge_date)
    where = [
        Settlement.status == "active",
        Settlement.discharge_date >= period.start,
        Settlement.discharge_date <= period.end,
        *_settlement_filters(filters),
    ]

    def stats(*group: Any) -> Select[Any]:
        return select(
            *group,
            func.count(),
            func.sum(case((days <= 0, 1), else_=0)),
            func.avg(days),
            func.max(days),
        ).where(*where)

    rows = session.execute(
        stats(Settlement.provider_id).group_by(Settlement.provider_id).order_by(Settlement.provider_id)
    ).all()
    out = [
        SettlementDelayRow(r[0], r[1], int(r[2] or 0), r[1] - int(r[2] or 0), _round(r[3]), r[4])
        for r in rows
    ]
    t = session.execute(stats()).one()
    out.append(SettlementDelayRow(None, t[0], int(t[1] or 0), t[0] - int(t[1] or 0), _round(t[2]), t[3]))
    return out


@dataclass(frozen=True)
class UnsettledDischarge:
    """A finished inpatient stay with no active settlement."""

    encounter_id: str
    patient_id: str | None
    hospital_id: str | None
    discharge_date: date
    days: int


def unsettled_discharges(
    session: Session, as_of: date, filters: Filters = Filters(), *, since: date | None = None,
    older_than_days: int | None = None, limit: int | None = None,
) -> list[UnsettledDischarge]:
    """Finished IMP Encounters discharged more than N days before `as_of` without an active settlement.

    A stay counts as settled when an active inpatient settlement has the same patient, provider
    (the Encounter's serviceProvider) and discharge date (the end of Encounter.period in Shanghai).
    """
    th = thresholds().payments
    older = th.unsettled_discharge_days if older_than_days is None else older_than_days
    since = since or as_of - timedelta(days=th.lookback_days)
    sql = Dialect(session)

    def has_token(param: str, code: str) -> ColumnElement[bool]:
        return StoredResource.pk.in_(
            select(TokenIndex.resource_pk).where(
                TokenIndex.res_type == "Encounter", TokenIndex.param == param, TokenIndex.code == code
            )
        )

    doc = sql.json_doc(StoredResource.content)
    end_text = sql.json_text(doc, "period", "end")
    provider = (
        select(ReferenceIndex.resource_pk, ReferenceIndex.target_id.label("hospital_id"))
        .where(ReferenceIndex.res_type == "Encounter", ReferenceIndex.param == "service-provider",
               ReferenceIndex.target_type == "Organization")
        .subquery()
    )
    # The period's end instant as the search index parsed it at write time.
    ends = (
        select(DateIndex.resource_pk, func.max(DateIndex.high).label("high"))
        .where(DateIndex.res_type == "Encounter", DateIndex.param == "date")
        .group_by(DateIndex.resource_pk)
        .subquery()
    )
    discharge = sql.local_date(ends.c.high)
    stays = (
        select(
            StoredResource.res_id.label("encounter_id"),
            StoredResource.patient_id.label("patient_id"),
            provider.c.hospital_id,
            discharge.label("discharge_date"),
        )
        .join(ends, ends.c.resource_pk == StoredResource.pk)
        .outerjoin(provider, provider.c.resource_pk == StoredResource.pk)
        .where(
            StoredResource.res_type == "Encounter",
            StoredResource.deleted == false(),
            has_token("class", "IMP"),
            has_token("status", "finished"),
            end_text.is_not(None),
        )
        .subquery()
    )
    cutoff = as_of - timedelta(days=older)
    settled = (
        select(Settlement.id)
        .where(
            Settlement.patient_id == stays.c.patient_id,
            Settlement.provider_id == stays.c.hospital_id,
            Settlement.discharge_date == stays.c.discharge_date,
            Settlement.claim_type == "inpatient",
            Settlement.status == "active",
        )
        .exists()
    )
    where: list[ColumnElement[bool]] = [
        stays.c.discharge_date >= since,
        stays.c.discharge_date < cutoff,
        ~settled,
    ]
    if filters.hospital_id:
        where.append(stays.c.hospital_id == filters.hospital_id)
    if filters.township:
        where.append(stays.c.patient_id.in_(_township_patients(filters.township)))
    stmt = select(stays).where(*where).order_by(stays.c.discharge_date, stays.c.encounter_id)
    if limit is not None:
        stmt = stmt.limit(limit)
    out = []
    for r in session.execute(stmt).all():
        day = r.discharge_date if isinstance(r.discharge_date, date) else date.fromisoformat(r.discharge_date)
        out.append(UnsettledDischarge(r.encounter_id, r.patient_id, r.hospital_id, day, (as_of - day).days))
    return out


# ------------------------------------------------------------------- settlement -> payment


@dataclass(frozen=True)
class PaymentDelayRow:
    """Fund payments to one hospital (None: every hospital / fund) for settlements of the period."""

    hospital_id: str | None
    fund: str | None
    paid: int = 0
    median_days: float | None = None
    p90_days: float | None = None
    mean_days: float | None = None
    max_days: int | None = None


@dataclass(frozen=True)
class UnpaidRow:
    """What one fund still owes one hospital on a date, by age band (None: every hospital / fund)."""

    hospital_id: str | None
    fund: str | None
    unpaid: int
    outstanding: Decimal
    by_age: dict[str, Decimal]
    oldest_since: date | None
    oldest_days: int | None
    overdue: int
    overdue_amount: Decimal


@dataclass(frozen=True)
class PaymentDelays:
    """Settlement -> payment delays of a period, and the unpaid balance at its end."""

    as_of: date
    overdue_days: int
    paid: list[PaymentDelayRow]
    unpaid: list[UnpaidRow]


def _payable_where(filters: Filters) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [Payable.status != "cancelled"]
    if filters.hospital_id:
        where.append(Payable.hospital_id == filters.hospital_id)
    if filters.fund:
        where.append(Payable.fund == filters.fund)
    if filters.township:
        where.append(
            Payable.settlement_id.in_(
                select(Settlement.id).where(Settlement.patient_id.in_(_township_patients(filters.township)))
            )
        )
    return where


def _percentiles(
    session: Session, sql: Dialect, days: Any, where: Sequence[ColumnElement[bool]], group: Sequence[Any]
) -> list[Any]:
    """(group..., count, median, p90, mean, max) per group: percentile_cont on PostgreSQL; on SQLite
    the same linear interpolation between ranks, computed with window functions."""
    if sql.pg:
        stmt = select(
            *group, func.count(), sql.percentile(0.5, days), sql.percentile(0.9, days), func.avg(days),
            func.max(days),
        ).where(*where)
        return list(session.execute(stmt.group_by(*group).order_by(*group) if group else stmt).all())
    ranked = select(
        *[g.label(f"g{i}") for i, g in enumerate(group)],
        days.label("d"),
        func.row_number().over(partition_by=list(group) or None, order_by=days).label("rn"),
        func.count().over(partition_by=list(group) or None).label("n"),
    ).where(*where).subquery()
    keys = [ranked.c[f"g{i}"] for i in range(len(group))]

    def cont(fraction: float) -> Any:
        # percentile_cont: position 1 + f * (n - 1), interpolated between the two ranks around it.
        position = 1 + fraction * (ranked.c.n - 1)
        low = cast(position, Integer)
        weight = position - low
        return func.sum(
            case(
                (ranked.c.rn == low, ranked.c.d * (1 - weight)),
                (ranked.c.rn == low + 1, ranked.c.d * weight),
                else_=0,
            )
        )

    stmt = select(*keys, func.count(), cont(0.5), cont(0.9), func.avg(ranked.c.d), func.max(ranked.c.d))
    return list(session.execute(stmt.group_by(*keys).order_by(*keys) if keys else stmt).all())


def payment_delays(
    session: Session, period: Period, filters: Filters = Filters(), *, as_of: date | None = None
) -> PaymentDelays:
    """Days from settlement to fund payment (median, p90) per hospital and fund for payables created in
    the period, and the unpaid balance on `as_of` (default: the period's end)."""
    return PaymentDelays(as_of or period.end, thresholds().payments.overdue_days,
                         paid_delays(session, period, filters), unpaid_balances(session, as_of or period.end,
                                                                                filters))


def paid_delays(session: Session, period: Period, filters: Filters = Filters()) -> list[PaymentDelayRow]:
    """Per hospital and fund, then a total row: days from settlement to payment of payables created in the
    period and paid (median and p90 as percentile_cont)."""
    sql = Dialect(session)
    days = sql.days_between(sql.local_date(Payable.paid_at), sql.local_date(Payable.created_at))
    where = [
        *_payable_where(filters),
        Payable.status == "paid",
        Payable.paid_at.is_not(None),
        Payable.created_at >= period.start_instant,
        Payable.created_at < period.end_instant,
    ]
    out: list[PaymentDelayRow] = []
    for group in ([Payable.hospital_id, Payable.fund], []):
        k = len(group)
        for r in _percentiles(session, sql, days, where, group):
            head: list[Any] = list(r[:k]) or [None, None]
            out.append(PaymentDelayRow(head[0], head[1], int(r[k]), _round(r[k + 1]), _round(r[k + 2]),
                                       _round(r[k + 3]), None if r[k + 4] is None else int(r[k + 4])))
    return out


def unpaid_balances(
    session: Session, as_of: date, filters: Filters = Filters(), *, actor: Actor | None = None
) -> list[UnpaidRow]:
    """Per hospital and fund, then a total row: what is unpaid on `as_of`, by age band, oldest, overdue.

    A payable is unpaid on a day when it was created by then and not paid by then; a partial payment
    counts from its date; cancelled payables are left out. With an `actor`, only the payables of the
    settlements it may see (`ledger_scope`: an insurer, its county's residents).
    """
    th = thresholds().payments
    sql = Dialect(session)
    created = sql.local_date(Payable.created_at)
    end = day_start(as_of + timedelta(days=1))
    paid_by_then = and_(Payable.paid_at.is_not(None), Payable.paid_at < end)
    outstanding = sql.fen(Payable.amount) - case(
        (paid_by_then, sql.fen(Payable.paid_amount)), else_=literal(0, BigInteger)
    )
    age = sql.days_between(literal(as_of, Date), created)
    where = [
        *_payable_where(filters),
        Payable.created_at < end,
        or_(Payable.status.in_(("unpaid", "partial")), and_(Payable.status == "paid", ~paid_by_then)),
        outstanding > 0,
    ]
    if actor is not None:
        where.append(payables_seen(actor))
    bands = th.age_bands
    labels = [f"0-{bands[0]}", *(f"{a + 1}-{b}" for a, b in pairwise(bands)), f">{bands[-1]}"]
    edges: list[tuple[int | None, int | None]] = [(None, bands[0]), *pairwise(bands), (bands[-1], None)]

    def band(low: int | None, high: int | None) -> Any:
        cond = [age > low] if low is not None else []
        cond += [age <= high] if high is not None else []
        return func.sum(case((and_(*cond), outstanding), else_=0))

    def stmt(*group: Any) -> Select[Any]:
        return select(
            *group,
            func.count(),
            func.sum(outstanding),
            *[band(lo, hi) for lo, hi in edges],
            func.min(created),
            func.sum(case((age > th.overdue_days, 1), else_=0)),
            func.sum(case((age > th.overdue_days, outstanding), else_=0)),
        ).where(*where)

    grouped = stmt(Payable.hospital_id, Payable.fund).group_by(Payable.hospital_id, Payable.fund)
    out = [_unpaid_row(r[0], r[1], r[2:], labels, as_of)
           for r in session.execute(grouped.order_by(Payable.hospital_id, Payable.fund)).all()]
    out.append(_unpaid_row(None, None, session.execute(stmt()).one(), labels, as_of))
    return out


def _unpaid_row(hospital: str | None, fund: str | None, r: Sequence[Any], labels: list[str],
                as_of: date) -> UnpaidRow:
    n = len(labels)
    oldest = r[2 + n]
    if isinstance(oldest, str):
        oldest = date.fromisoformat(oldest)
    return UnpaidRow(
        hospital_id=hospital,
        fund=fund,
        unpaid=int(r[0] or 0),
        outstanding=_money(r[1]),
        by_age={label: _money(r[2 + i]) for i, label in enumerate(labels)},
        oldest_since=oldest,
        oldest_days=(as_of - oldest).days if oldest else None,
        overdue=int(r[3 + n] or 0),
        overdue_amount=_money(r[4 + n]),
    )


# ------------------------------------------------------------------- poverty checks (Gansu)


@dataclass(frozen=True)
class FailingStay:
    """A registered-poor inpatient stay that fails a Gansu check."""

    settlement_id: str
    patient_id: str
    hospital_id: str
    discharge_date: date
    total: Decimal
    patient_pay: Decimal
    reimbursement_ratio: Decimal
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class PovertyChecks:
    """Registered-poor inpatient stays discharged in the period, checked against the Gansu limits."""

    min_reimbursement_ratio: Decimal
    max_patient_pay: Decimal
    stays: int
    failing: int
    low_reimbursement: int
    high_patient_pay: int
    failing_stays: list[FailingStay]


def poverty_checks(session: Session, period: Period, filters: Filters = Filters(), *,
                   limit: int = MAX_LISTED) -> PovertyChecks:
    """Registered-poor stays reimbursed under the ratio, or whose patient pay is over the cap."""
    th = thresholds().poverty_checks
    sql = Dialect(session)
    total, pays = sql.fen(Settlement.total), sql.fen(Settlement.patient_pay)
    num, den = _ratio(th.min_reimbursement_ratio)
    low = (total - pays) * den < total * num
    high = pays > int(th.max_patient_pay * 100)
    where = [
        Settlement.status == "active",
        Settlement.registered_poor == true(),
        Settlement.claim_type == "inpatient",
        Settlement.total > 0,
        Settlement.discharge_date >= period.start,
        Settlement.discharge_date <= period.end,
        *_settlement_filters(filters),
    ]
    counts = session.execute(
        select(
            func.count(),
            func.sum(case((or_(low, high), 1), else_=0)),
            func.sum(case((low, 1), else_=0)),
            func.sum(case((high, 1), else_=0)),
        ).where(*where)
    ).one()
    rows = session.execute(
        select(Settlement.id, Settlement.patient_id, Settlement.provider_id, Settlement.discharge_date,
               Settlement.total, Settlement.patient_pay, low.label("low"), high.label("high"))
        .where(*where, or_(low, high))
        .order_by(Settlement.discharge_date, Settlement.id)
        .limit(limit)
    ).all()
    failing = [
        FailingStay(
            r.id, r.patient_id, r.provider_id, r.discharge_date, r.total, r.patient_pay,
            ((r.total - r.patient_pay) / r.total).quantize(Decimal("0.0001")),
            tuple(name for name, hit in (("reimbursement-below-minimum", r.low),
                                         ("patient-pay-above-cap", r.high)) if hit),
        )
        for r in rows
    ]
    return PovertyChecks(th.min_reimbursement_ratio, th.max_patient_pay, int(counts[0] or 0),
                         int(counts[1] or 0), int(counts[2] or 0), int(counts[3] or 0), failing)


# ------------------------------------------------------------------- referral Tasks


@dataclass(frozen=True)
class LateTask:
    """A referral Task accepted late, or still waiting past its limit."""

    task_id: str
    patient_id: str | None
    owner_id: str | None
    priority: str
    status: str
    requested_at: datetime
    accepted_at: datetime | None
    waited_hours: float
    limit_hours: int


@dataclass(frozen=True)
class ReferralRow:
    """Referral Tasks requested in the period, for one receiving organisation (None: all)."""

    owner_id: str | None
    requested: int
    accepted_in_time: int
    accepted_late: int
    waiting_in_time: int
    waiting_late: int
    closed_unaccepted: int

    @property
    def not_accepted_in_time(self) -> int:
        """Accepted late plus still waiting past the limit."""
        return self.accepted_late + self.waiting_late


def _task_timeline(session: Session, sql: Dialect, *, open_only: bool) -> Any:
    """Per Task: owner, priority, status now, and when it was first requested / accepted / closed
    (from the stored version history)."""
    version_doc = sql.json_doc(ResourceVersion.content)
    status_then = sql.json_text(version_doc, "status")

    def first_time(states: tuple[str, ...]) -> Any:
        return type_coerce(
            func.min(case((status_then.in_(states), ResourceVersion.last_updated), else_=null())),
            UTCDateTime(),
        )

    where: list[ColumnElement[bool]] = [
        ResourceVersion.res_type == "Task", ResourceVersion.deleted == false()
    ]
    if open_only:
        where.append(
            ResourceVersion.resource_pk.in_(
                select(TokenIndex.resource_pk).where(
                    TokenIndex.res_type == "Task", TokenIndex.param == "status",
                    TokenIndex.code.in_(OPEN_TASK_STATES),
                )
            )
        )
    history = (
        select(
            ResourceVersion.resource_pk.label("pk"),
            first_time(("requested",)).label("requested_at"),
            first_time(ACCEPTED_TASK_STATES).label("accepted_at"),
            first_time(CLOSED_TASK_STATES).label("closed_at"),
        )
        .where(*where)
        .group_by(ResourceVersion.resource_pk)
        .subquery()
    )
    doc = sql.json_doc(StoredResource.content)
    owner_ref = sql.json_text(doc, "owner", "reference")
    return (
        select(
            StoredResource.res_id.label("task_id"),
            StoredResource.patient_id.label("patient_id"),
            func.substr(owner_ref, len("Organization/") + 1).label("owner_id"),
            func.coalesce(sql.json_text(doc, "priority"), "routine").label("priority"),
            sql.json_text(doc, "status").label("status"),
            history.c.requested_at,
            history.c.accepted_at,
            history.c.closed_at,
        )
        .join(history, history.c.pk == StoredResource.pk)
        .where(StoredResource.deleted == false(), history.c.requested_at.is_not(None))
        .subquery()
    )


def _task_limits(sql: Dialect, tasks: Any, now: datetime, th: ReferralThresholds) -> tuple[Any, Any, Any]:
    limit_seconds = case(
        (tasks.c.priority.in_(URGENT_PRIORITIES), th.accept_within_hours_urgent * 3600),
        else_=th.accept_within_hours * 3600,
    )
    now_value = literal(now, UTCDateTime())
    waited = sql.epoch(func.coalesce(tasks.c.accepted_at, now_value)) - sql.epoch(tasks.c.requested_at)
    return limit_seconds, waited, now_value


def _task_filters(tasks: Any, filters: Filters) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if filters.hospital_id:
        where.append(tasks.c.owner_id == filters.hospital_id)
    if filters.township:
        where.append(tasks.c.patient_id.in_(_township_patients(filters.township)))
    return where


def referral_timeliness(
    session: Session, period: Period, filters: Filters = Filters(), *, now: datetime | None = None
) -> list[ReferralRow]:
    """Per receiving organisation, then a total row: Tasks first requested in the period, by whether they
    were accepted within the limit (24 h; urgent and stat 2 h), accepted late, still waiting, or closed."""
    th = thresholds().referrals
    now = now or datetime.now(UTC)
    sql = Dialect(session)
    tasks = _task_timeline(session, sql, open_only=False)
    limit_seconds, waited, _ = _task_limits(sql, tasks, now, th)
    accepted = tasks.c.accepted_at.is_not(None)
    waiting = and_(~accepted, tasks.c.status.in_(OPEN_TASK_STATES))
    where = [
        tasks.c.requested_at >= literal(period.start_instant, UTCDateTime()),
        tasks.c.requested_at < literal(period.end_instant, UTCDateTime()),
        *_task_filters(tasks, filters),
    ]

    def counts(*group: Any) -> Select[Any]:
        return select(
            *group,
            func.count(),
            func.sum(case((and_(accepted, waited <= limit_seconds), 1), else_=0)),
            func.sum(case((and_(accepted, waited > limit_seconds), 1), else_=0)),
            func.sum(case((and_(waiting, waited <= limit_seconds), 1), else_=0)),
            func.sum(case((and_(waiting, waited > limit_seconds), 1), else_=0)),
            func.sum(case((and_(~accepted, ~tasks.c.status.in_(OPEN_TASK_STATES)), 1), else_=0)),
        ).where(*where)

    def row(owner: str | None, r: Sequence[Any]) -> ReferralRow:
        return ReferralRow(owner, *(int(v or 0) for v in r))

    out = [row(r[0], r[1:]) for r in session.execute(
        counts(tasks.c.owner_id).group_by(tasks.c.owner_id).order_by(tasks.c.owner_id)).all()]
    out.append(row(None, session.execute(counts()).one()))
    return out


def waiting_tasks(session: Session, now: datetime, filters: Filters = Filters(), *,
                  late_only: bool = True) -> list[LateTask]:
    """Referral Tasks still requested or received, with how long they have waited (past the limit only)."""
    th = thresholds().referrals
    sql = Dialect(session)
    tasks = _task_timeline(session, sql, open_only=True)
    limit_seconds, waited, _ = _task_limits(sql, tasks, now, th)
    where = [tasks.c.status.in_(OPEN_TASK_STATES), *_task_filters(tasks, filters)]
    if late_only:
        where.append(waited > limit_seconds)
    rows = session.execute(
        select(tasks, waited.label("waited")).where(*where).order_by(tasks.c.requested_at, tasks.c.task_id)
    ).all()
    return [
        LateTask(r.task_id, r.patient_id, r.owner_id, r.priority, r.status, r.requested_at, r.accepted_at,
                 round(float(r.waited) / 3600, 2), th.hours_for(r.priority))
        for r in rows
    ]


# ------------------------------------------------------------------- down-referral follow-ups


@dataclass(frozen=True)
class FollowUpRow:
    """Down-referral follow-ups due in the period, for one clinic (None: all)."""

    clinic_id: str | None
    due: int
    completed: int
    missed: int  # still scheduled past the date (plus grace days)
    upcoming: int  # still scheduled, not yet missed


@dataclass(frozen=True)
class MissedFollowUp:
    """A care plan with follow-up visits still scheduled after their date."""

    care_plan_id: str
    patient_id: str | None
    clinic_id: str | None
    missed_dates: tuple[date, ...]
    days_overdue: int  # since the earliest missed date


def _activities(session: Session, sql: Dialect) -> Any:
    doc = sql.json_doc(StoredResource.content)
    items = sql.json_elements(doc, "activity")
    author = sql.json_text(doc, "author", "reference")
    due = sql.json_text(items.c.value, "detail", "scheduledPeriod", "start")
    return (
        select(
            StoredResource.res_id.label("care_plan_id"),
            StoredResource.patient_id.label("patient_id"),
            func.substr(author, len("Organization/") + 1).label("clinic_id"),
            sql.json_text(items.c.value, "detail", "status").label("status"),
            func.substr(due, 1, 10).label("due"),
        )
        .select_from(StoredResource)
        .join(items, true())
        .where(
            StoredResource.res_type == "CarePlan",
            StoredResource.deleted == false(),
            StoredResource.pk.in_(
                select(TokenIndex.resource_pk).where(
                    TokenIndex.res_type == "CarePlan", TokenIndex.param == "status",
                    TokenIndex.code == "active",
                )
            ),
        )
        .subquery()
    )


def _activity_filters(acts: Any, filters: Filters) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if filters.hospital_id:
        where.append(acts.c.clinic_id == filters.hospital_id)
    if filters.township:
        where.append(acts.c.patient_id.in_(_township_patients(filters.township)))
    return where


def follow_ups(session: Session, period: Period, today: date, filters: Filters = Filters()) -> list[
        FollowUpRow]:
    """Per clinic, then a total row: follow-ups of active care plans due in the period, done or missed."""
    grace = thresholds().follow_ups.grace_days
    sql = Dialect(session)
    acts = _activities(session, sql)
    missed_before = (today - timedelta(days=grace)).isoformat()
    scheduled = acts.c.status == "scheduled"
    where = [acts.c.due >= period.start.isoformat(), acts.c.due <= period.end.isoformat(),
             *_activity_filters(acts, filters)]

    def counts(*group: Any) -> Select[Any]:
        return select(
            *group,
            func.count(),
            func.sum(case((acts.c.status == "completed", 1), else_=0)),
            func.sum(case((and_(scheduled, acts.c.due < missed_before), 1), else_=0)),
            func.sum(case((and_(scheduled, acts.c.due >= missed_before), 1), else_=0)),
        ).where(*where)

    out = [FollowUpRow(r[0], *(int(v or 0) for v in r[1:])) for r in session.execute(
        counts(acts.c.clinic_id).group_by(acts.c.clinic_id).order_by(acts.c.clinic_id)).all()]
    out.append(FollowUpRow(None, *(int(v or 0) for v in session.execute(counts()).one())))
    return out


def missed_follow_ups(session: Session, today: date, filters: Filters = Filters()) -> list[MissedFollowUp]:
    """Active care plans with follow-ups still scheduled after their date (plus the grace days)."""
    grace = thresholds().follow_ups.grace_days
    sql = Dialect(session)
    acts = _activities(session, sql)
    missed_before = (today - timedelta(days=grace)).isoformat()
    rows = session.execute(
        select(acts.c.care_plan_id, acts.c.patient_id, acts.c.clinic_id, acts.c.due)
        .where(acts.c.status == "scheduled", acts.c.due < missed_before, *_activity_filters(acts, filters))
        .order_by(acts.c.care_plan_id, acts.c.due)
    ).all()
    plans: dict[str, MissedFollowUp] = {}
    for r in rows:
        due = date.fromisoformat(r.due)
        seen = plans.get(r.care_plan_id)
        dates = (*seen.missed_dates, due) if seen else (due,)
        plans[r.care_plan_id] = MissedFollowUp(r.care_plan_id, r.patient_id, r.clinic_id, dates,
                                               (today - dates[0]).days)
    return list(plans.values())


# ------------------------------------------------------------------- households (因病致贫)


@dataclass(frozen=True)
class HouseholdRisk:
    """One household's out-of-pocket spending over the window and what it means for its income."""

    household_id: str
    district: str | None
    township: str | None
    members: int
    annual_income: Decimal
    oop: Decimal
    oop_share: Decimal | None  # None when the income is 0
    shares_over: tuple[str, ...]  # the configured share thresholds the OOP exceeds
    per_capita_before: Decimal
    per_capita_after: Decimal
    catastrophic: bool
    impoverishing: bool
    deepening: bool
    return_to_poverty_watch: bool


@dataclass(frozen=True)
class HouseholdSummary:
    """Counts of households by illness-induced poverty indicator, over the window ending `as_of`."""

    as_of: date
    window_start: date  # exclusive
    poverty_line: Decimal
    with_oop: int
    oop_total: Decimal
    shares_over: dict[str, int]
    catastrophic: int
    impoverishing: int
    deepening: int
    return_to_poverty_watch: int


def window_start(as_of: date, months: int) -> date:
    """The day before the window's first day: discharges after it and up to `as_of` count."""
    return months_before(as_of, months)


def _household_conditions(session: Session, as_of: date, th: PovertyThresholds, township: str | None) -> Any:
    """Per household with OOP in the window: income, members, OOP (fen) and each indicator as 0/1."""
    sql = Dialect(session)
    end = day_start(as_of + timedelta(days=1))
    oop = (
        select(Patient.household_id.label("hid"), func.sum(sql.fen(Settlement.patient_pay)).label("oop"))
        .join(Patient, Patient.id == Settlement.patient_id)
        .where(
            Patient.household_id.is_not(None),
            Settlement.discharge_date > window_start(as_of, th.window_months),
            Settlement.discharge_date <= as_of,
            Settlement.settled_at < end,
            # Reversed after the day: it still counted on that day.
            or_(Settlement.status == "active", Settlement.reversed_at >= end),
        )
        .group_by(Patient.household_id)
        .subquery()
    )
    members = (
        select(Patient.household_id.label("hid"), func.count().label("n"))
        .where(Patient.household_id.in_(select(oop.c.hid)))
        .group_by(Patient.household_id)
        .subquery()
    )
    income = sql.fen(Household.annual_income)
    spent = cast(oop.c.oop, BigInteger)
    n = members.c.n
    line = int(th.poverty_line * 100)

    def over(share: Decimal) -> ColumnElement[bool]:
        num, den = _ratio(share)
        return spent * den > income * num

    mul_num, mul_den = _ratio(th.watch_line_multiple)
    flags = {
        "catastrophic": over(th.catastrophic_share),
        "impoverishing": and_(income >= line * n, income - spent < line * n),
        "deepening": and_(income < line * n, spent > 0),
        "watch": or_((income - spent) * mul_den < n * (line * mul_num), spent > int(th.watch_oop * 100)),
    }
    shares = {f"s{i}": over(s) for i, s in enumerate(th.oop_share_thresholds)}
    cols = [case((cond, 1), else_=0).label(name) for name, cond in {**flags, **shares}.items()]
    where = [spent > 0, n > 0]
    if township:
        where.append(Household.township == township)
    return (
        select(Household.id.label("hid"), Household.district, Household.township, n.label("n"),
               income.label("income"), spent.label("oop"), *cols)
        .select_from(oop)
        .join(Household, Household.id == oop.c.hid)
        .join(members, members.c.hid == oop.c.hid)
        .where(*where)
        .subquery()
    )


def household_summary(session: Session, as_of: date, township: str | None = None) -> HouseholdSummary:
    """How many households cross each illness-induced poverty threshold over the window ending `as_of`."""
    th = thresholds().poverty
    rows = _household_conditions(session, as_of, th, township)
    share_cols = [func.sum(rows.c[f"s{i}"]) for i in range(len(th.oop_share_thresholds))]
    r = session.execute(
        select(func.count(), func.sum(rows.c.oop), func.sum(rows.c.catastrophic),
               func.sum(rows.c.impoverishing), func.sum(rows.c.deepening), func.sum(rows.c.watch),
               *share_cols)
    ).one()
    return HouseholdSummary(
        as_of=as_of,
        window_start=window_start(as_of, th.window_months),
        poverty_line=th.poverty_line,
        with_oop=int(r[0] or 0),
        oop_total=_money(r[1]),
        shares_over={f">{s}": int(v or 0) for s, v in zip(th.oop_share_thresholds, r[6:], strict=True)},
        catastrophic=int(r[2] or 0),
        impoverishing=int(r[3] or 0),
        deepening=int(r[4] or 0),
        return_to_poverty_watch=int(r[5] or 0),
    )


def households_at_risk(session: Session, as_of: date, township: str | None = None) -> list[HouseholdRisk]:
    """Households meeting at least one illness-induced poverty condition over the window ending `as_of`."""
    th = thresholds().poverty
    rows = _household_conditions(session, as_of, th, township)
    stmt = select(rows).where(
        or_(rows.c.catastrophic == 1, rows.c.impoverishing == 1, rows.c.deepening == 1, rows.c.watch == 1)
    ).order_by(rows.c.hid)
    return [_risk(r, th) for r in session.execute(stmt)]


def _risk(r: Any, th: PovertyThresholds) -> HouseholdRisk:
    income, spent, n = _money(r.income), _money(r.oop), int(r.n)
    return HouseholdRisk(
        household_id=r.hid,
        district=r.district,
        township=r.township,
        members=n,
        annual_income=income,
        oop=spent,
        oop_share=(spent / income).quantize(Decimal("0.0001")) if income else None,
        shares_over=tuple(str(s) for i, s in enumerate(th.oop_share_thresholds) if r._mapping[f"s{i}"]),
        # Rounded down to the fen: never across a threshold the exact value does not cross.
        per_capita_before=(income / n).quantize(Decimal("0.01"), ROUND_FLOOR),
        per_capita_after=((income - spent) / n).quantize(Decimal("0.01"), ROUND_FLOOR),
        catastrophic=bool(r.catastrophic),
        impoverishing=bool(r.impoverishing),
        deepening=bool(r.deepening),
        return_to_poverty_watch=bool(r.watch),
    )


# ------------------------------------------------------------------- all at once (dashboard)


@dataclass(frozen=True)
class Indicators:
    """Every indicator for a period and filters (the dashboard's one call)."""

    period: Period
    filters: Filters
    discharge_to_settlement: list[SettlementDelayRow]
    unsettled_discharges: list[UnsettledDischarge]
    payment_delays: PaymentDelays
    poverty_checks: PovertyChecks
    referrals: list[ReferralRow]
    follow_ups: list[FollowUpRow]
    households: HouseholdSummary


SECTIONS = ("discharge-to-settlement", "unsettled-discharges", "payment-delays", "poverty-checks",
            "referrals", "follow-ups", "households")


def section(session: Session, name: str, period: Period, filters: Filters, now: datetime) -> Any:
    """One indicator section by name, as computed for the dashboard."""
    today = min(local_today(now), period.end)
    if name == "discharge-to-settlement":
        return discharge_to_settlement(session, period, filters)
    if name == "unsettled-discharges":
        return unsettled_discharges(session, today, filters, since=period.start, limit=MAX_LISTED)
    if name == "payment-delays":
        return payment_delays(session, period, filters, as_of=today)
    if name == "poverty-checks":
        return poverty_checks(session, period, filters)
    if name == "referrals":
        return referral_timeliness(session, period, filters, now=now)
    if name == "follow-ups":
        return follow_ups(session, period, local_today(now), filters)
    if name == "households":
        return household_summary(session, period.end, filters.township)
    raise BadRequest(f"unknown indicator section {name!r}; one of {', '.join(SECTIONS)}")


def all_indicators(session: Session, period: Period, filters: Filters = Filters(), *,
                   now: datetime | None = None) -> Indicators:
    """Every indicator section for the period and filters."""
    now = now or datetime.now(UTC)
    values = [section(session, name, period, filters, now) for name in SECTIONS]
    return Indicators(period, filters, *values)
