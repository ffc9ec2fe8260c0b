"""Fund payments to hospitals (拨付) as FHIR PaymentReconciliation batches over the ledger's payables.

Mapping (one batch = one fund paying one hospital for settlements of one period):

- `paymentIssuer` = the medical insurance bureau paying (the recording client's organisation);
- `requestor` = the hospital paid (Organization); `detail[].payee` repeats it when present;
- `period` = the settlement period covered (dates, Asia/Shanghai); every listed settlement must
  have been settled inside it;
- `paymentAmount` (CNY) and `paymentDate`; `created` = when it was recorded;
- `detail[]`, one per settlement: `identifier` = `{base}/sid/settlement` | settlement id, and/or
  `request` = Claim/{id} (its active settlement); `response` = its ClaimResponse; `type` = the fund
  as a `settlement-component` coding (every detail of a batch names the same fund); `amount` = what
  this batch pays on that settlement;
- `outcome` = `complete` when the batch pays every listed payable in full, `partial` (with the
  reason in `disposition`) when it pays less; `status` = `active`.

A batch whose amount differs from what the listed payables still owe is refused (422) unless it is
marked partial with a reason, and a batch never pays more than is owed. The rules run as hooks of
the generic FHIR create, so `POST /fhir/PaymentReconciliation` and `record_payment` behave the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..domain.actor import Actor
from ..domain.base import utcnow
from ..domain.errors import Forbidden, Problem, Unprocessable
from ..domain.ledger import FUNDS, ZERO, Payable, Settlement
from ..domain.registry import Organization
from ..fhir.codes import BASE, SETTLEMENT_COMPONENT_SYSTEM
from ..fhir.search_params import shanghai_date
from ..fhir.store import ResourceStore, Stored, instant
from . import resources as service
from .ledger_scope import settlement_seen

RESOURCE_TYPE = "PaymentReconciliation"
SETTLEMENT_SID = f"{BASE}/sid/settlement"
PAYMENT_BATCH_SID = f"{BASE}/sid/payment-batch"
PAYMENT_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/payment-type"
LOCAL_TZ = ZoneInfo("Asia/Shanghai")
CENT = Decimal("0.01")
OPEN_STATES = ("unpaid", "partial")


@dataclass(frozen=True)
class PaymentLine:
    """One detail: which settlement (by id or by Claim) and what the batch pays on it."""

    index: int
    settlement_id: str | None
    claim_id: str | None
    amount: Decimal


@dataclass(frozen=True)
class PaymentBatch:
    """A PaymentReconciliation read into the terms of the ledger."""

    fund: str
    hospital_id: str
    issuer_id: str
    period_start: date
    period_end: date
    amount: Decimal
    payment_date: date
    partial: bool
    reason: str | None
    lines: tuple[PaymentLine, ...]


def configure() -> None:
    """Register the payment rules on FHIR writes of PaymentReconciliation."""
    service.on_before_write(RESOURCE_TYPE, check_payment)
    service.on_write(RESOURCE_TYPE, apply_payment)


def record_payment(
    session: Session,
    actor: Actor,
    *,
    fund: str,
    hospital_id: str,
    period_start: date,
    period_end: date,
    amount: Decimal,
    settlement_ids: Sequence[str],
    partial: bool = False,
    reason: str | None = None,
    payment_date: date | None = None,
    identifier: str | None = None,
    request_id: str | None = None,
) -> str:
    """Record a fund's payment batch to a hospital; returns the PaymentReconciliation id."""
    # A full batch pays what each listed payable still owes; a partial one pays the listed
    # settlements in order until its amount runs out.
    if isinstance(amount, float):
        raise TypeError("amount must be Decimal, not float")
    owed = _owed(session, fund, settlement_ids)
    remaining = Decimal(amount)
    details = []
    for sid in settlement_ids:
        due = owed.get(sid, ZERO)
        pay = due if not partial else max(ZERO, min(due, remaining))
        remaining -= pay
        details.append(_detail(session, sid, fund, hospital_id, pay))
    body: dict[str, Any] = {
        "resourceType": RESOURCE_TYPE,
        "status": "active",
        "period": {"start": period_start.isoformat(), "end": period_end.isoformat()},
        "created": instant(utcnow()),
        "paymentIssuer": {"reference": f"Organization/{actor.organization_id}"},
        "requestor": {"reference": f"Organization/{hospital_id}"},
        "outcome": "partial" if partial else "complete",
        "paymentDate": (payment_date or datetime.now(LOCAL_TZ).date()).isoformat(),
        "paymentAmount": {"value": _json_number(Decimal(amount)), "currency": "CNY"},
        "detail": details,
    }
    if reason:
        body["disposition"] = reason
    if identifier:
        body["identifier"] = [{"system": PAYMENT_BATCH_SID, "value": identifier}]
    result = service.create(session, actor, RESOURCE_TYPE, body, request_id=request_id)
    return result.stored.res_id


def _json_number(value: Decimal) -> int | float:
    """A money value for JSON (orjson has no Decimal); two decimals survive the float round trip."""
    return int(value) if value == value.to_integral_value() else float(value)


def _owed(session: Session, fund: str, settlement_ids: Sequence[str]) -> dict[str, Decimal]:
    rows = session.execute(
        select(Payable.settlement_id, Payable.amount, Payable.paid_amount).where(
            Payable.settlement_id.in_(list(settlement_ids)), Payable.fund == fund,
            Payable.status.in_(OPEN_STATES),
        )
    ).all()
    return {r.settlement_id: r.amount - r.paid_amount for r in rows}


def _detail(
    session: Session, settlement_id: str, fund: str, hospital_id: str, amount: Decimal
) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "identifier": {"system": SETTLEMENT_SID, "value": settlement_id},
        "type": {"coding": [{"system": SETTLEMENT_COMPONENT_SYSTEM, "code": fund}]},
        "payee": {"reference": f"Organization/{hospital_id}"},
        "amount": {"value": _json_number(amount), "currency": "CNY"},
    }
    settlement = session.get(Settlement, settlement_id)
    if settlement is not None:
        store = ResourceStore(session)
        # Link the Claim and ClaimResponse when they are stored (they are, for settlements made by $submit).
        if store.current("Claim", settlement.claim_id) is not None:
            detail["request"] = {"reference": f"Claim/{settlement.claim_id}"}
        if store.current("ClaimResponse", settlement.claim_response_id) is not None:
            detail["response"] = {"reference": f"ClaimResponse/{settlement.claim_response_id}"}
    return detail


# ----------------------------------------------------------------------------------- the rules


def check_payment(
    session: Session, actor: Actor, new: dict[str, Any], previous: dict[str, Any] | None
) -> None:
    """Before a PaymentReconciliation is stored: who may record it, and that its amounts add up."""
    if previous is not None:
        raise Unprocessable("a payment batch cannot be changed once recorded; record a new batch instead")
    _allocate(session, actor, new)


def apply_payment(session: Session, actor: Actor, stored: Stored, result: service.WriteResult) -> None:
    """After it is stored: mark the payables paid or partly paid by this batch (checked again first)."""
    if result.matched_existing or result.previous is not None:
        return
    batch, allocation = _allocate(session, actor, stored.as_dict())
    paid_at = _paid_at(batch.payment_date)
    for payable, amount in allocation:
        if amount <= 0:
            continue
        payable.paid_amount = payable.paid_amount + amount
        payable.status = "paid" if payable.paid_amount >= payable.amount else "partial"
        payable.paid_at = paid_at
        payable.payment_id = stored.res_id
    session.flush()


def _paid_at(day: date) -> datetime:
    """When the money moved: now for a payment dated today, else the start of that day in Asia/Shanghai."""
    now = utcnow()
    if day >= now.astimezone(LOCAL_TZ).date():
        return now
    return datetime.combine(day, time.min, LOCAL_TZ).astimezone(UTC)


Allocation = list[tuple[Payable, Decimal]]


def _allocate(session: Session, actor: Actor, resource: dict[str, Any]) -> tuple[PaymentBatch, Allocation]:
    """The batch and the payables it pays (locked), or 403/422 with every problem found."""
    if not (actor.is_insurer or actor.sees_everything):
        raise Forbidden("only the medical insurance bureau records fund payments")
    batch = parse_batch(resource)
    if not actor.sees_everything and batch.issuer_id != actor.organization_id:
        raise Forbidden("paymentIssuer must be the organisation recording the payment")
    problems: list[Problem] = []
    issuer = session.get(Organization, batch.issuer_id)
    if issuer is None or issuer.kind != "insurer":
        problems.append(_rule(
            f"paymentIssuer Organization/{batch.issuer_id} is not a medical insurance bureau",
            "PaymentReconciliation.paymentIssuer"))
    hospital = session.get(Organization, batch.hospital_id)
    if hospital is None or not hospital.is_facility:
        problems.append(Problem(f"requestor Organization/{batch.hospital_id} is not a health facility",
                                "PaymentReconciliation.requestor", "business-rule"))
    if batch.payment_date > datetime.now(LOCAL_TZ).date():
        problems.append(Problem("paymentDate is in the future", "PaymentReconciliation.paymentDate",
                                "business-rule"))
    allocation = _payables(session, actor, batch, problems)
    owed = sum((p.amount - p.paid_amount for p, _ in allocation), ZERO)
    if not problems:
        if batch.amount > owed:
            problems.append(Problem(
                f"paymentAmount {batch.amount} is {batch.amount - owed} more than the listed payables owe "
                f"({owed}); a batch never pays more than is owed",
                "PaymentReconciliation.paymentAmount", "business-rule"))
        elif batch.amount < owed and not batch.partial:
            problems.append(Problem(
                f"paymentAmount {batch.amount} is {owed - batch.amount} less than the listed payables owe "
                f"({owed}); mark the batch partial (outcome = partial) with a reason (disposition)",
                "PaymentReconciliation.paymentAmount", "business-rule"))
        elif batch.amount == owed and batch.partial:
            problems.append(Problem(
                "the batch pays every listed payable in full: its outcome is complete, not partial",
                "PaymentReconciliation.outcome", "business-rule"))
    detail_sum = sum((line.amount for line in batch.lines), ZERO)
    if not problems and detail_sum != batch.amount:
        problems.append(_rule(
            f"the detail amounts add up to {detail_sum}, not to paymentAmount {batch.amount}",
            "PaymentReconciliation.detail"))
    if problems:
        raise Unprocessable(problems[0].message, problems)
    return batch, allocation


def _payables(session: Session, actor: Actor, batch: PaymentBatch, problems: list[Problem]) -> Allocation:
    """Resolve each detail to its open payable (rows locked until the transaction ends)."""
    lo = datetime.combine(batch.period_start, time.min, LOCAL_TZ)
    hi = datetime.combine(batch.period_end, time.max, LOCAL_TZ)
    out: Allocation = []
    seen: set[str] = set()
    for line in batch.lines:
        where = f"PaymentReconciliation.detail[{line.index}]"
        settlement = _settlement(session, line)
        # A batch covers only settlements its insurer may see (its county's residents; the platform:
        # every one): the rule of every view of the ledger (ledger_scope), the API's own.
        if settlement is None or not settlement_seen(session, actor, settlement.id):
            label = line.settlement_id or f"Claim/{line.claim_id}"
            problems.append(Problem(f"{where}: no active settlement {label}", where, "not-found"))
            continue
        if settlement.id in seen:
            problems.append(_rule(f"{where}: settlement {settlement.id} is listed twice", where))
            continue
        seen.add(settlement.id)
        payable = session.scalars(
            select(Payable).where(Payable.settlement_id == settlement.id, Payable.fund == batch.fund)
            .with_for_update()
        ).first()
        if settlement.status != "active":
            problems.append(_rule(f"{where}: settlement {settlement.id} was reversed", where))
        elif payable is None:
            problems.append(_rule(
                f"{where}: the {batch.fund} fund owes nothing on settlement {settlement.id}", where))
        elif payable.hospital_id != batch.hospital_id:
            problems.append(Problem(
                f"{where}: settlement {settlement.id} is owed to Organization/{payable.hospital_id}, "
                f"not to the requestor Organization/{batch.hospital_id}", where, "business-rule"))
        elif payable.status not in OPEN_STATES:
            problems.append(Problem(f"{where}: the {batch.fund} payable of settlement {settlement.id} is "
                                    f"already {payable.status}", where, "business-rule"))
        elif not lo <= settlement.settled_at <= hi:
            settled = settlement.settled_at.astimezone(LOCAL_TZ).date()
            problems.append(Problem(f"{where}: settlement {settlement.id} was settled on {settled}, outside "
                                    f"the period {batch.period_start} to {batch.period_end}", where,
                                    "business-rule"))
        elif line.amount > payable.amount - payable.paid_amount:
            problems.append(Problem(
                f"{where}: amount {line.amount} is more than settlement {settlement.id} still owes "
                f"({payable.amount - payable.paid_amount})", f"{where}.amount", "business-rule"))
        else:
            out.append((payable, line.amount))
    return out


def _rule(message: str, where: str) -> Problem:
    return Problem(message, where, "business-rule")


def _settlement(session: Session, line: PaymentLine) -> Settlement | None:
    if line.settlement_id is not None:
        found = session.get(Settlement, line.settlement_id)
        if found is not None and line.claim_id is not None and found.claim_id != line.claim_id:
            return None
        return found
    return session.scalars(
        select(Settlement).where(Settlement.claim_id == line.claim_id).order_by(Settlement.status)
    ).first()  # "active" sorts before "reversed"


# --------------------------------------------------------------------------------- FHIR reading


def parse_batch(resource: Mapping[str, Any]) -> PaymentBatch:
    """Read a PaymentReconciliation into a PaymentBatch; 422 listing every problem at once."""
    problems: list[Problem] = []

    def need(path: str, message: str) -> None:
        problems.append(Problem(message, f"PaymentReconciliation.{path}", "required"))

    issuer = _org_ref(resource.get("paymentIssuer"))
    if issuer is None:
        need("paymentIssuer", "paymentIssuer (the insurance bureau, Organization/{id}) is required")
    hospital = _org_ref(resource.get("requestor"))
    if hospital is None:
        need("requestor", "requestor (the hospital paid, Organization/{id}) is required")
    period = resource.get("period") or {}
    start, end = _date(period.get("start")), _date(period.get("end"))
    if start is None or end is None:
        need("period", "period.start and period.end (dates) are required")
    elif end < start:
        problems.append(Problem("period ends before it starts", "PaymentReconciliation.period", "value"))
    amount = _money(resource.get("paymentAmount"), "paymentAmount", problems)
    payment_date = _date(resource.get("paymentDate"))
    if payment_date is None:
        need("paymentDate", "paymentDate is required")
    outcome = resource.get("outcome")
    partial = outcome == "partial"
    if outcome not in ("complete", "partial"):
        problems.append(Problem("outcome must be complete or partial (with a reason in disposition)",
                                "PaymentReconciliation.outcome", "value"))
    reason = (resource.get("disposition") or "").strip() or None
    if partial and reason is None:
        problems.append(Problem("a partial payment needs its reason in disposition",
                                "PaymentReconciliation.disposition", "required"))
    lines, funds = _lines(resource.get("detail") or [], hospital, problems)
    if not lines and not problems:
        need("detail", "the batch must list the settlements it pays in detail[]")
    if len(funds) > 1:
        problems.append(Problem(f"a batch pays one fund; its details name {', '.join(sorted(funds))}",
                                "PaymentReconciliation.detail", "business-rule"))
    if problems:
        raise Unprocessable(problems[0].message, problems)
    assert issuer and hospital and start and end and amount is not None and payment_date
    return PaymentBatch(
        next(iter(funds)), hospital, issuer, start, end, amount, payment_date, partial, reason, tuple(lines)
    )


def _lines(details: list[Any], hospital: str | None,
           problems: list[Problem]) -> tuple[list[PaymentLine], set[str]]:
    lines: list[PaymentLine] = []
    funds: set[str] = set()
    for i, detail in enumerate(details):
        where = f"PaymentReconciliation.detail[{i}]"
        if not isinstance(detail, dict):
            continue
        codes = [c.get("code") for c in (detail.get("type") or {}).get("coding") or []
                 if isinstance(c, dict) and c.get("system") == SETTLEMENT_COMPONENT_SYSTEM]
        fund_codes = [c for c in codes if c in FUNDS]
        if len(fund_codes) != 1:
            problems.append(Problem(
                f"{where}.type needs exactly one fund coding "
                f"({SETTLEMENT_COMPONENT_SYSTEM}: {', '.join(FUNDS)})",
                f"{where}.type", "required"))
        else:
            funds.add(fund_codes[0])
        ident = detail.get("identifier") or {}
        settlement_id = ident.get("value") if ident.get("system") == SETTLEMENT_SID else None
        claim_id = _ref(detail.get("request"), "Claim")
        if settlement_id is None and claim_id is None:
            problems.append(Problem(f"{where} must name its settlement: identifier ({SETTLEMENT_SID}) or "
                                    "request (Claim/{id})", where, "required"))
        payee = _org_ref(detail.get("payee"))
        if detail.get("payee") is not None and payee != hospital:
            problems.append(_rule(f"{where}.payee must be the requestor (the hospital paid)",
                                  f"{where}.payee"))
        amount = _money(detail.get("amount"), f"detail[{i}].amount", problems)
        if amount is not None and (settlement_id or claim_id):
            lines.append(PaymentLine(i, settlement_id, claim_id, amount))
    return lines, funds


def _ref(value: Any, resource_type: str) -> str | None:
    """The id of a reference to the type (relative or absolute URL), else None."""
    if not isinstance(value, dict) or not isinstance(value.get("reference"), str):
        return None
    parts = value["reference"].rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == resource_type and parts[-1]:
        return parts[-1]
    return None


def _org_ref(value: Any) -> str | None:
    return _ref(value, "Organization")


def _date(value: Any) -> date | None:
    """A date or dateTime as its day in Asia/Shanghai (an instant late in the UTC day is the next day
    there; date-only and zone-less values are Asia/Shanghai); None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return shanghai_date(value)
    except ValueError:
        return None


def _money(value: Any, path: str, problems: list[Problem]) -> Decimal | None:
    """A CNY amount with at most two decimals, not negative."""
    where = f"PaymentReconciliation.{path}"
    if not isinstance(value, dict) or value.get("value") is None:
        problems.append(Problem(f"{path} ({{value, currency: CNY}}) is required", where, "required"))
        return None
    if value.get("currency") != "CNY":
        problems.append(Problem(f"{path}.currency must be CNY", f"{where}.currency", "value"))
    raw = value["value"]
    try:
        amount = Decimal(str(raw)) if not isinstance(raw, bool) else None
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite():
        problems.append(Problem(f"{path}.value is not a number", f"{where}.value", "value"))
        return None
    if amount != amount.quantize(CENT):
        problems.append(Problem(f"{path}.value has more than two decimals (whole fen only)", f"{where}.value",
                                "value"))
        return None
    if amount < 0:
        problems.append(Problem(f"{path}.value is negative", f"{where}.value", "value"))
        return None
    return amount.quantize(CENT)
