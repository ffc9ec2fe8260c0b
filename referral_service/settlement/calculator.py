"""One-stop settlement calculator (一站式结算), DESIGN.md section 5: pure, exact Decimal arithmetic."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import (
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    localcontext,
)
from functools import cached_property
from types import MappingProxyType
from typing import Any, Final, NamedTuple, NoReturn

from referral_service.settlement.errors import ClaimRefused
from referral_service.settlement.policy import FACILITY_LEVELS, Policy

CLAIM_TYPES: Final[tuple[str, ...]] = ("inpatient", "outpatient")
CHARGE_CLASSES: Final[tuple[str, ...]] = ("A", "B", "C")
#: ClaimResponse.total[].category codes ({base}/CodeSystem/settlement-component), in contract order.
COMPONENT_CODES: Final[tuple[str, ...]] = (
    "total",
    "eligible",
    "basic-deductible",
    "basic-insurance",
    "critical-illness",
    "medical-assistance",
    "poverty-safety-net",
    "class-b-self-pay",
    "out-of-list",
    "patient-pay",
)
#: Who pays what of the total: the four funds in their fixed order, then the patient.
PAYER_CODES: Final[tuple[str, ...]] = (
    "basic-insurance",
    "critical-illness",
    "medical-assistance",
    "poverty-safety-net",
    "patient",
)
#: Claims totalling this or more are refused: keeps every product far inside the exact precision.
MAX_CLAIM_TOTAL: Final = Decimal("1000000000000")

_ZERO: Final = Decimal("0.00")
_ONE: Final = Decimal(1)
_CENT: Final = Decimal("0.01")
_HALF_UP: Final = ROUND_HALF_UP
# Own context: results never depend on what other code did to the thread's decimal context, and
# 60 digits keep products of money and policy ratios exact before the explicit rounding.
_CONTEXT: Final = Context(prec=60, rounding=ROUND_HALF_UP, traps=[InvalidOperation, DivisionByZero, Overflow])


class ClaimItem(NamedTuple):
    """One charge line (费用明细): amount in yuan (whole fen) and charge class A, B or C (甲/乙/丙类)."""

    amount: Decimal
    charge_class: str


@dataclass(frozen=True, slots=True)
class ClaimInput:
    """What the calculator needs of one claim, gathered by the caller before computing."""

    claim_type: str
    facility_level: str
    items: Sequence[tuple[Decimal, str]]
    registered_poor: bool = False
    unreferred_out_of_county: bool = False
    episode_deductible_borne: Decimal = _ZERO

    def __post_init__(self) -> None:
        if not isinstance(self.items, tuple):
            object.__setattr__(self, "items", tuple(self.items))


@dataclass(frozen=True, slots=True)
class YearAccumulators:
    """One person's yearly accumulators (年度累计) from earlier non-reversed settlements, or deltas."""

    inpatient_basic_paid: Decimal = _ZERO
    outpatient_basic_paid: Decimal = _ZERO
    critical_illness_cumulative_r1: Decimal = _ZERO
    critical_illness_paid: Decimal = _ZERO
    assistance_paid: Decimal = _ZERO

    def to_dict(self) -> dict[str, str]:
        """Exact decimal strings by field name."""
        return {
            "inpatient_basic_paid": str(self.inpatient_basic_paid),
            "outpatient_basic_paid": str(self.outpatient_basic_paid),
            "critical_illness_cumulative_r1": str(self.critical_illness_cumulative_r1),
            "critical_illness_paid": str(self.critical_illness_paid),
            "assistance_paid": str(self.assistance_paid),
        }


class Workings(NamedTuple):
    """Every number of one settlement (结算过程), kept for the trace, the slip and audits."""

    claim_type: str
    facility_level: str
    registered_poor: bool
    unreferred_out_of_county: bool
    total: Decimal  # T
    class_a: Decimal
    class_b: Decimal
    out_of_list: Decimal  # N
    self_pay_share: Decimal
    class_b_self_pay: Decimal  # S
    eligible: Decimal  # E
    deductible_level: Decimal  # D_level
    episode_deductible_borne: Decimal
    deductible_due: Decimal  # d
    deductible_borne: Decimal  # min(d, E)
    ratio_level: Decimal
    penalty: Decimal  # subtracted from the ratio (0 unless unreferred out of county)
    ratio: Decimal  # r
    basic_raw: Decimal
    basic_cap: Decimal | None
    basic_paid_before: Decimal
    basic: Decimal  # B1
    r1: Decimal
    ci_threshold: Decimal
    ci_bonus: Decimal
    ci_before: Decimal
    ci_after: Decimal
    f_before: Decimal
    f_after: Decimal
    ci_raw: Decimal
    ci_cap: Decimal | None
    ci_paid_before: Decimal
    critical_illness: Decimal  # B2
    r2: Decimal
    assistance_ratio: Decimal
    assistance_cap: Decimal | None
    assistance_paid_before: Decimal
    assistance_raw: Decimal
    medical_assistance: Decimal  # B3
    r3: Decimal
    safety_net_applies: bool
    oop_ceiling: Decimal
    target_reimbursement_ratio: Decimal
    target_raw: Decimal
    target: Decimal
    safety_net: Decimal  # B4
    patient: Decimal  # P


@dataclass(frozen=True, slots=True)
class TraceStep:
    """One step of the settlement slip (结算单): code, Chinese and English label, formula with numbers."""

    code: str
    zh: str
    en: str
    formula: str
    values: Mapping[str, Decimal | None]

    def to_dict(self) -> dict[str, Any]:
        """Plain data, decimals as exact strings."""
        return {
            "code": self.code,
            "zh": self.zh,
            "en": self.en,
            "formula": self.formula,
            "values": {k: None if v is None else str(v) for k, v in self.values.items()},
        }


@dataclass(frozen=True)
class SettlementResult:
    """Outcome of one settlement: components, payers, accumulator changes and the trace."""

    policy_id: str
    policy_version: str
    components: Mapping[str, Decimal]  # the ten settlement-component codes, in COMPONENT_CODES order
    payers: Mapping[str, Decimal]  # PAYER_CODES -> amount; they add up to components["total"]
    deductible_borne: Decimal  # min(d, E): counted as borne in the episode (inpatient only)
    episode_deductible_borne_after: Decimal
    accumulator_deltas: YearAccumulators
    accumulators_after: YearAccumulators
    workings: Workings

    @property
    def total(self) -> Decimal:
        """T, the claim total."""
        return self.workings.total

    @property
    def patient_pay(self) -> Decimal:
        """P, what the patient pays at the desk (个人自付)."""
        return self.workings.patient

    @property
    def funds_total(self) -> Decimal:
        """B1 + B2 + B3 + B4, what the funds owe the hospital."""
        w = self.workings
        return w.basic + w.critical_illness + w.medical_assistance + w.safety_net

    @cached_property
    def trace(self) -> tuple[TraceStep, ...]:
        """The steps with their formulas and numbers, rendered on first use."""
        return render_trace(self.workings)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for storage and the slip, decimals as exact strings."""
        return {
            "policy": {"id": self.policy_id, "version": self.policy_version},
            "components": {code: str(v) for code, v in self.components.items()},
            "payers": {code: str(v) for code, v in self.payers.items()},
            "deductible_borne": str(self.deductible_borne),
            "episode_deductible_borne_after": str(self.episode_deductible_borne_after),
            "accumulator_deltas": self.accumulator_deltas.to_dict(),
            "accumulators_after": self.accumulators_after.to_dict(),
            "trace": [step.to_dict() for step in self.trace],
        }


# --- the policy, precomputed once ----------------------------------------------------------


_BandRow = tuple[Decimal, Decimal | None, Decimal, Decimal]  # lower, upper, ratio+bonus, F(lower)


@dataclass(frozen=True, slots=True)
class _Curve:
    """Critical-illness schedule for one status: threshold, bands with their ratios and F at each lower."""

    threshold: Decimal
    bonus: Decimal
    bands: tuple[_BandRow, ...]
    cap: Decimal | None


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A policy's numbers, ready for the hot path."""

    policy: Policy
    self_pay_share: Decimal
    # (level, unreferred out of county) -> (D_level, r_level, penalty applied, r)
    inpatient: Mapping[tuple[str, bool], tuple[Decimal, Decimal, Decimal, Decimal]]
    # (level, unreferred out of county) -> (r_level, penalty applied, r)
    outpatient: Mapping[tuple[str, bool], tuple[Decimal, Decimal, Decimal]]
    inpatient_cap: Decimal | None
    outpatient_cap: Decimal | None
    curve: _Curve
    curve_poor: _Curve
    assistance_ratio: Decimal
    assistance_cap: Decimal | None
    oop_ceiling: Decimal
    target_reimbursement_ratio: Decimal
    patient_share_target: Decimal  # 1 - target_reimbursement_ratio


def _fen(value: Decimal | None) -> Decimal | None:
    return None if value is None else value.quantize(_CENT)


def _curve(policy: Policy, *, poor: bool) -> _Curve:
    ci = policy.critical_illness
    bonus = ci.poor_bonus if poor else _ZERO
    rows: list[_BandRow] = []
    at_lower = Decimal(0)
    for band in ci.bands:
        ratio = band.ratio + bonus
        rows.append((band.lower, band.upper, ratio, at_lower))
        if band.upper is not None:
            at_lower += ratio * (band.upper - band.lower)
    threshold = ci.threshold_poor if poor else ci.threshold
    cap = ci.yearly_cap_poor if poor else ci.yearly_cap
    return _Curve(threshold.quantize(_CENT), bonus, tuple(rows), _fen(cap))


def compile_policy(policy: Policy) -> _Compiled:
    """Precompute a policy's numbers for `settle` (done once per policy object and cached)."""
    with localcontext(_CONTEXT):
        basic = policy.basic_insurance
        penalty = basic.unreferred_out_of_county_penalty
        inpatient: dict[tuple[str, bool], tuple[Decimal, Decimal, Decimal, Decimal]] = {}
        outpatient: dict[tuple[str, bool], tuple[Decimal, Decimal, Decimal]] = {}
        for level in FACILITY_LEVELS:
            d_level = basic.inpatient.deductible.get(level)
            r_level = basic.inpatient.ratio.get(level)
            if d_level is not None and r_level is not None:
                inpatient[(level, False)] = (d_level.quantize(_CENT), r_level, _ZERO, r_level)
                lowered = max(Decimal(0), r_level - penalty)
                inpatient[(level, True)] = (d_level.quantize(_CENT), r_level, penalty, lowered)
            o_level = basic.outpatient.ratio.get(level)
            if o_level is None:
                o_level = Decimal(0)
            outpatient[(level, False)] = (o_level, _ZERO, o_level)
            outpatient[(level, True)] = (o_level, penalty, max(Decimal(0), o_level - penalty))
        target_ratio = policy.poverty_safety_net.target_reimbursement_ratio
        return _Compiled(
            policy=policy,
            self_pay_share=policy.class_b.self_pay_share,
            inpatient=MappingProxyType(inpatient),
            outpatient=MappingProxyType(outpatient),
            inpatient_cap=_fen(basic.inpatient.yearly_cap),
            outpatient_cap=_fen(basic.outpatient.yearly_cap),
            curve=_curve(policy, poor=False),
            curve_poor=_curve(policy, poor=True),
            assistance_ratio=policy.medical_assistance.ratio,
            assistance_cap=_fen(policy.medical_assistance.yearly_cap),
            oop_ceiling=policy.poverty_safety_net.oop_ceiling_per_stay.quantize(_CENT),
            target_reimbursement_ratio=target_ratio,
            patient_share_target=_ONE - target_ratio,
        )


# Keyed by id(); the entry keeps the policy alive, so an id is never reused while it is cached.
_COMPILED: dict[int, _Compiled] = {}
_COMPILED_MAX: Final = 64


def _compiled(policy: Policy) -> _Compiled:
    entry = _COMPILED.get(id(policy))
    if entry is not None and entry.policy is policy:
        return entry
    compiled = compile_policy(policy)
    if len(_COMPILED) >= _COMPILED_MAX:
        _COMPILED.clear()
    _COMPILED[id(policy)] = compiled
    return compiled


def _f(curve: _Curve, cumulative: Decimal) -> Decimal:
    """F(x): critical-illness benefit owed on a cumulative R1 of x, unrounded."""
    above = cumulative - curve.threshold
    if above <= 0:
        return Decimal(0)
    for lower, upper, ratio, at_lower in curve.bands:
        if upper is None or above <= upper:
            return at_lower + ratio * (above - lower)
    raise AssertionError("policy bands end with an open band")  # the loader guarantees it


# --- validation -----------------------------------------------------------------------------


def _refuse_items(items: Sequence[tuple[Decimal, str]]) -> NoReturn:
    """Find the first bad item and raise the matching refusal (slow path, runs only on bad input)."""
    for number, item in enumerate(items, start=1):
        if not isinstance(item, tuple) or len(item) != 2:
            raise TypeError(f"item {number}: expected (amount, charge_class), got {item!r}")
        amount, charge_class = item
        if not isinstance(amount, Decimal):
            raise TypeError(f"item {number}: amount must be a Decimal, got {type(amount).__name__}")
        if not amount.is_finite():
            raise ClaimRefused("invalid-amount", f"item {number}: amount {amount} is not a number")
        if amount < 0:
            raise ClaimRefused("invalid-amount", f"item {number}: amount {amount} is negative")
        if amount >= MAX_CLAIM_TOTAL:
            raise ClaimRefused("invalid-amount", f"item {number}: amount {amount} is out of range")
        if amount % _CENT != 0:
            raise ClaimRefused(
                "invalid-amount",
                f"item {number}: amount {amount} is not whole fen (more than 2 decimals)",
            )
        if charge_class not in CHARGE_CLASSES:
            raise ClaimRefused(
                "invalid-charge-class",
                f"item {number}: charge class {charge_class!r} is not one of A, B, C",
            )
    total = sum((amount for amount, _ in items), Decimal(0))
    if total >= MAX_CLAIM_TOTAL:
        raise ClaimRefused("invalid-amount", f"claim total {total} is out of range")
    raise AssertionError("an item was rejected but no problem was found")


_STATE_NAMES: Final = (
    "episode_deductible_borne",
    "inpatient_basic_paid",
    "outpatient_basic_paid",
    "critical_illness_cumulative_r1",
    "critical_illness_paid",
    "assistance_paid",
)


def _state(claim: ClaimInput, acc: YearAccumulators) -> tuple[Decimal, ...]:
    """Episode deductible and accumulators, checked and to the fen (they come from our ledger: bad = bug)."""
    values = (
        claim.episode_deductible_borne,
        acc.inpatient_basic_paid,
        acc.outpatient_basic_paid,
        acc.critical_illness_cumulative_r1,
        acc.critical_illness_paid,
        acc.assistance_paid,
    )
    try:
        fen = tuple([value.quantize(_CENT) for value in values])
        if fen == values and min(fen) >= 0:
            return fen
    except (AttributeError, InvalidOperation):
        pass
    for name, value in zip(_STATE_NAMES, values, strict=True):
        if not isinstance(value, Decimal):
            raise TypeError(f"{name} must be a Decimal, got {type(value).__name__}")
        if not value.is_finite() or value < 0 or value >= MAX_CLAIM_TOTAL or value % _CENT != 0:
            raise ValueError(f"{name} must be a non-negative whole-fen amount, got {value}")
    raise AssertionError("a state value was rejected but no problem was found")


def _refuse_claim_kind(compiled: _Compiled, claim: ClaimInput) -> NoReturn:
    if claim.claim_type not in CLAIM_TYPES:
        raise ClaimRefused(
            "invalid-claim-type",
            f"claim type {claim.claim_type!r} is not one of {', '.join(CLAIM_TYPES)}",
        )
    if claim.facility_level not in FACILITY_LEVELS:
        raise ClaimRefused(
            "invalid-facility-level",
            f"facility level {claim.facility_level!r} is not one of {', '.join(FACILITY_LEVELS)}",
        )
    policy = compiled.policy
    raise ClaimRefused(
        "inpatient-not-covered-at-level",
        f"inpatient care at {claim.facility_level} level is not covered by policy"
        f" {policy.id} version {policy.version} (该级别机构不能住院结算)",
    )


# --- the calculation ------------------------------------------------------------------------


def _within_cap(raw: Decimal, cap: Decimal | None, paid: Decimal) -> Decimal:
    """A payment under a yearly cap: min(raw, max(0, cap − paid)), or raw when there is no cap."""
    if cap is None:
        return raw
    room = cap - paid
    if room < raw:
        return room if room > 0 else _ZERO
    return raw


def settle(policy: Policy, claim: ClaimInput, accumulators: YearAccumulators) -> SettlementResult:
    """Settle one claim under `policy` given this year's earlier accumulators; ClaimRefused if invalid."""
    compiled = _compiled(policy)
    with localcontext(_CONTEXT):
        return _settle(compiled, claim, accumulators)


def _settle(c: _Compiled, claim: ClaimInput, acc: YearAccumulators) -> SettlementResult:
    zero = _ZERO
    cent = _CENT
    half_up = _HALF_UP
    inpatient = claim.claim_type == "inpatient"
    ooc = bool(claim.unreferred_out_of_county)
    poor = bool(claim.registered_poor)
    key = (claim.facility_level, ooc)
    if inpatient:
        in_rates = c.inpatient.get(key)
        if in_rates is None:
            _refuse_claim_kind(c, claim)
        d_level, r_level, penalty, ratio = in_rates
    else:
        out_rates = c.outpatient.get(key)
        if out_rates is None or claim.claim_type != "outpatient":
            _refuse_claim_kind(c, claim)
        r_level, penalty, ratio = out_rates
        d_level = zero
    borne_before, ip_paid, op_paid, ci_before, ci_paid, assistance_paid = _state(claim, acc)

    # Items: T, class sums; anything odd goes to the slow path that names the item. Amounts are
    # non-negative, so bounding the total bounds every item.
    sum_a = sum_b = sum_c = zero
    bad = True
    try:
        for amount, charge_class in claim.items:
            if not isinstance(amount, Decimal) or amount < 0 or amount % cent:
                break
            if charge_class == "A":
                sum_a += amount
            elif charge_class == "B":
                sum_b += amount
            elif charge_class == "C":
                sum_c += amount
            else:
                break
        else:
            bad = False
    except (InvalidOperation, TypeError, ValueError):
        pass  # NaN compared, not a pair, ...: the slow path says which item and why
    if bad or sum_a + sum_b + sum_c >= MAX_CLAIM_TOTAL:
        _refuse_items(claim.items)
    # Every amount from here on has exactly 2 decimals (policy money is compiled to the fen).
    sum_a = sum_a.quantize(cent)
    sum_b = sum_b.quantize(cent)
    out_of_list = sum_c.quantize(cent)
    total = sum_a + sum_b + out_of_list
    share = c.self_pay_share
    self_pay = (sum_b * share).quantize(cent, half_up)  # S: once per claim
    eligible = total - out_of_list - self_pay  # E

    if inpatient:
        due = d_level - borne_before
        if due < 0:
            due = zero
        deductible = due if due < eligible else eligible  # min(d, E)
        base = eligible - due
        if base < 0:
            base = zero
        basic_raw = (base * ratio).quantize(cent, half_up)
        basic_cap = c.inpatient_cap
        basic_paid = ip_paid
    else:
        due = deductible = zero
        basic_raw = (eligible * ratio).quantize(cent, half_up)
        basic_cap = c.outpatient_cap
        basic_paid = op_paid
    basic = _within_cap(basic_raw, basic_cap, basic_paid)
    r1 = eligible - basic

    curve = c.curve_poor if poor else c.curve
    ci_cap = curve.cap
    assistance_cap = c.assistance_cap
    safety_net_applies = False
    if inpatient:
        ci_after = ci_before + r1
        f_before = _f(curve, ci_before)
        f_after = _f(curve, ci_after)
        ci_raw = (f_after - f_before).quantize(cent, half_up)  # round the difference, not each F
        critical = _within_cap(ci_raw, ci_cap, ci_paid)
        r2 = r1 - critical
        if poor:
            assistance_raw = (r2 * c.assistance_ratio).quantize(cent, half_up)
            assistance = _within_cap(assistance_raw, assistance_cap, assistance_paid)
            r3 = r2 - assistance
            safety_net_applies = not ooc
        else:
            assistance_raw = assistance = zero
            r3 = r2
        if safety_net_applies:
            target_raw = (total * c.patient_share_target).quantize(cent, half_up)
            target = c.oop_ceiling if c.oop_ceiling < target_raw else target_raw
            excess = r3 + self_pay + out_of_list - target
            safety_net = r3 if r3 < excess else (excess if excess > 0 else zero)
        else:
            target_raw = target = safety_net = zero
    else:
        ci_after = ci_before
        f_before = f_after = ci_raw = critical = assistance_raw = assistance = zero
        target_raw = target = safety_net = zero
        r2 = r3 = r1
    patient = r3 - safety_net + self_pay + out_of_list

    if basic + critical + assistance + safety_net + patient != total or patient < 0:
        raise AssertionError(
            f"settlement does not add up: {basic} + {critical} + {assistance} + {safety_net}"
            f" + {patient} != {total}"
        )

    if inpatient:
        deltas = YearAccumulators(basic, zero, r1, critical, assistance)
        after = YearAccumulators(
            ip_paid + basic, op_paid, ci_after, ci_paid + critical, assistance_paid + assistance
        )
    else:
        deltas = YearAccumulators(zero, basic, zero, zero, zero)
        after = YearAccumulators(ip_paid, op_paid + basic, ci_before, ci_paid, assistance_paid)

    workings = Workings(
        claim.claim_type,
        claim.facility_level,
        poor,
        ooc,
        total,
        sum_a,
        sum_b,
        out_of_list,
        share,
        self_pay,
        eligible,
        d_level,
        borne_before,
        due,
        deductible,
        r_level,
        penalty,
        ratio,
        basic_raw,
        basic_cap,
        basic_paid,
        basic,
        r1,
        curve.threshold,
        curve.bonus,
        ci_before,
        ci_after,
        f_before,
        f_after,
        ci_raw,
        ci_cap,
        ci_paid,
        critical,
        r2,
        c.assistance_ratio,
        assistance_cap,
        assistance_paid,
        assistance_raw,
        assistance,
        r3,
        safety_net_applies,
        c.oop_ceiling,
        c.target_reimbursement_ratio,
        target_raw,
        target,
        safety_net,
        patient,
    )
    policy = c.policy
    return SettlementResult(
        policy_id=policy.id,
        policy_version=policy.version,
        components=MappingProxyType(
            {
                "total": total,
                "eligible": eligible,
                "basic-deductible": deductible,
                "basic-insurance": basic,
                "critical-illness": critical,
                "medical-assistance": assistance,
                "poverty-safety-net": safety_net,
                "class-b-self-pay": self_pay,
                "out-of-list": out_of_list,
                "patient-pay": patient,
            }
        ),
        payers=MappingProxyType(
            {
                "basic-insurance": basic,
                "critical-illness": critical,
                "medical-assistance": assistance,
                "poverty-safety-net": safety_net,
                "patient": patient,
            }
        ),
        deductible_borne=deductible,
        episode_deductible_borne_after=borne_before + deductible,
        accumulator_deltas=deltas,
        accumulators_after=after,
        workings=workings,
    )


# --- the trace ------------------------------------------------------------------------------


def _m(value: Decimal | None) -> str:
    """Money for the slip, 2 decimals."""
    return "none" if value is None else f"{value:.2f}"


def _capped(raw: Decimal, cap: Decimal | None, paid: Decimal, result: Decimal) -> str:
    """The `min(raw, max(0, cap − paid)) = result` tail of a capped payment (∞: no cap).

    Formulas are shared by the Chinese and English trace, so they hold symbols and numbers only;
    words belong in the step's zh and en labels.
    """
    if cap is None:
        return f"min({_m(raw)}, ∞) = {_m(result)}"
    room = max(_ZERO, cap - paid)
    return f"min({_m(raw)}, max(0, {_m(cap)} − {_m(paid)})) = min({_m(raw)}, {_m(room)}) = {_m(result)}"


def _step(code: str, zh: str, en: str, formula: str, **values: Decimal | None) -> TraceStep:
    return TraceStep(code, zh, en, formula, MappingProxyType(values))


def render_trace(w: Workings) -> tuple[TraceStep, ...]:
    """Steps of the settlement, each formula filled in with the numbers used."""
    with localcontext(_CONTEXT):
        steps = [*_claim_steps(w)]
        if w.claim_type == "inpatient":
            steps.extend(_inpatient_steps(w))
        else:
            steps.extend(_outpatient_steps(w))
        steps.append(
            _step(
                "check",
                "合计核对",
                "every yuan is paid by someone",
                f"B1 + B2 + B3 + B4 + P = {_m(w.basic)} + {_m(w.critical_illness)}"
                f" + {_m(w.medical_assistance)} + {_m(w.safety_net)} + {_m(w.patient)}"
                f" = {_m(w.total)} = T",
                T=w.total,
            )
        )
        return tuple(steps)


_CLAIM_TYPE_ZH = {"inpatient": "住院", "outpatient": "门诊"}
_LEVEL_ZH = {"village": "村级", "township": "乡镇级", "county": "县级", "city": "市级", "province": "省级"}


def _claim_steps(w: Workings) -> list[TraceStep]:
    kind_zh = _CLAIM_TYPE_ZH.get(w.claim_type, w.claim_type)
    level_zh = _LEVEL_ZH.get(w.facility_level, w.facility_level)
    if w.penalty:
        ratio_formula = f"r = max(0, r_level − penalty) = max(0, {w.ratio_level} − {w.penalty}) = {w.ratio}"
        ratio_zh = f"报销比例（{level_zh}{kind_zh}，未经转诊县外就医）"
        ratio_en = f"{w.claim_type} ratio at {w.facility_level} level, unreferred out of county"
    else:
        ratio_formula = f"r = r_level = {w.ratio}"
        ratio_zh = f"报销比例（{level_zh}{kind_zh}）"
        ratio_en = f"{w.claim_type} ratio at {w.facility_level} level"
    return [
        _step(
            "T",
            "费用总额",
            "total of all items",
            f"T = A + B + C = {_m(w.class_a)} + {_m(w.class_b)} + {_m(w.out_of_list)} = {_m(w.total)}",
            T=w.total,
            A=w.class_a,
            B=w.class_b,
            C=w.out_of_list,
        ),
        _step(
            "S",
            "乙类先行自付（每次结算舍入一次）",
            "class B self-pay share, rounded once per claim",
            f"S = round(B × share) = round({_m(w.class_b)} × {w.self_pay_share}) = {_m(w.class_b_self_pay)}",
            S=w.class_b_self_pay,
            B=w.class_b,
            share=w.self_pay_share,
        ),
        _step(
            "N", "目录外(丙类)费用", "out-of-list (class C)", f"N = C = {_m(w.out_of_list)}", N=w.out_of_list
        ),
        _step(
            "E",
            "政策范围内费用",
            "eligible amount",
            f"E = T − N − S = {_m(w.total)} − {_m(w.out_of_list)} − {_m(w.class_b_self_pay)}"
            f" = {_m(w.eligible)}",
            E=w.eligible,
        ),
        _step(
            "r",
            ratio_zh,
            ratio_en,
            ratio_formula,
            r=w.ratio,
            r_level=w.ratio_level,
            penalty=w.penalty,
        ),
    ]


def _outpatient_steps(w: Workings) -> list[TraceStep]:
    return [
        _step(
            "B1",
            "门诊统筹（无起付线）",
            "basic insurance, outpatient (no deductible)",
            f"B1 = min(round(E × r), max(0, cap − paid)): round({_m(w.eligible)} × {w.ratio})"
            f" = {_m(w.basic_raw)}; " + _capped(w.basic_raw, w.basic_cap, w.basic_paid_before, w.basic),
            B1=w.basic,
            raw=w.basic_raw,
            cap=w.basic_cap,
            paid_before=w.basic_paid_before,
        ),
        _step(
            "P",
            "个人自付",
            "patient pays",
            f"P = T − B1 = {_m(w.total)} − {_m(w.basic)} = {_m(w.patient)}",
            P=w.patient,
        ),
    ]


def _inpatient_steps(w: Workings) -> list[TraceStep]:
    status = "registered poor" if w.registered_poor else "not registered poor"
    status_zh = "建档立卡贫困人口" if w.registered_poor else "非建档立卡贫困人口"
    steps = [
        _step(
            "d",
            "起付线（本次住院尚需负担的部分；min(d, E) 计为已负担）",
            "deductible still due in this episode; min(d, E) is counted as borne",
            f"d = max(0, D_level − borne) = max(0, {_m(w.deductible_level)}"
            f" − {_m(w.episode_deductible_borne)}) = {_m(w.deductible_due)};"
            f" min(d, E) = {_m(w.deductible_borne)}",
            d=w.deductible_due,
            D_level=w.deductible_level,
            borne_before=w.episode_deductible_borne,
            borne=w.deductible_borne,
        ),
        _step(
            "B1",
            "基本医保",
            "basic insurance",
            f"B1 = min(round(max(0, E − d) × r), max(0, cap − paid)): round(max(0,"
            f" {_m(w.eligible)} − {_m(w.deductible_due)}) × {w.ratio}) = {_m(w.basic_raw)}; "
            + _capped(w.basic_raw, w.basic_cap, w.basic_paid_before, w.basic),
            B1=w.basic,
            raw=w.basic_raw,
            cap=w.basic_cap,
            paid_before=w.basic_paid_before,
        ),
        _step(
            "R1",
            "基本医保后剩余",
            "left after basic insurance",
            f"R1 = E − B1 = {_m(w.eligible)} − {_m(w.basic)} = {_m(w.r1)}",
            R1=w.r1,
        ),
        _step(
            "B2",
            f"大病保险（{status_zh}：起付线 {_m(w.ci_threshold)}，比例提高 {w.ci_bonus}）",
            f"critical illness insurance ({status}: threshold {_m(w.ci_threshold)}, bonus {w.ci_bonus})",
            f"B2 = min(round(F(after) − F(before)), max(0, cap − paid)):"
            f" round(F({_m(w.ci_after)}) − F({_m(w.ci_before)})) = round({w.f_after} − {w.f_before})"
            f" = {_m(w.ci_raw)}; " + _capped(w.ci_raw, w.ci_cap, w.ci_paid_before, w.critical_illness),
            B2=w.critical_illness,
            before=w.ci_before,
            after=w.ci_after,
            F_before=w.f_before,
            F_after=w.f_after,
            raw=w.ci_raw,
            cap=w.ci_cap,
            paid_before=w.ci_paid_before,
            threshold=w.ci_threshold,
            bonus=w.ci_bonus,
        ),
        _step(
            "R2",
            "大病保险后剩余",
            "left after critical illness",
            f"R2 = R1 − B2 = {_m(w.r1)} − {_m(w.critical_illness)} = {_m(w.r2)}",
            R2=w.r2,
        ),
    ]
    if w.registered_poor:
        steps.append(
            _step(
                "B3",
                "医疗救助",
                "medical assistance",
                f"B3 = min(round(R2 × ratio), max(0, cap − paid)): round({_m(w.r2)}"
                f" × {w.assistance_ratio}) = {_m(w.assistance_raw)}; "
                + _capped(
                    w.assistance_raw,
                    w.assistance_cap,
                    w.assistance_paid_before,
                    w.medical_assistance,
                ),
                B3=w.medical_assistance,
                raw=w.assistance_raw,
                cap=w.assistance_cap,
                paid_before=w.assistance_paid_before,
            )
        )
    else:
        steps.append(
            _step(
                "B3",
                "医疗救助（非建档立卡贫困人口）",
                "medical assistance: not registered poor",
                "B3 = 0",
                B3=_ZERO,
            )
        )
    steps.append(
        _step(
            "R3",
            "医疗救助后剩余",
            "left after medical assistance",
            f"R3 = R2 − B3 = {_m(w.r2)} − {_m(w.medical_assistance)} = {_m(w.r3)}",
            R3=w.r3,
        )
    )
    if w.safety_net_applies:
        steps.append(
            _step(
                "target",
                "兜底保障个人自付目标",
                "patient-share target of the safety net",
                f"target = min(ceiling, round(T × (1 − {w.target_reimbursement_ratio})))"
                f" = min({_m(w.oop_ceiling)}, {_m(w.target_raw)}) = {_m(w.target)}",
                target=w.target,
                raw=w.target_raw,
                ceiling=w.oop_ceiling,
            )
        )
        steps.append(
            _step(
                "B4",
                "兜底保障（只支付政策范围内费用）",
                "poverty safety net (pays eligible amounts only)",
                f"B4 = min(R3, max(0, R3 + S + N − target)) = min({_m(w.r3)}, max(0,"
                f" {_m(w.r3)} + {_m(w.class_b_self_pay)} + {_m(w.out_of_list)}"
                f" − {_m(w.target)})) = {_m(w.safety_net)}",
                B4=w.safety_net,
            )
        )
    else:
        why = "unreferred out-of-county care" if w.registered_poor else "not registered poor"
        why_zh = "未经转诊县外就医" if w.registered_poor else "非建档立卡贫困人口"
        steps.append(_step("B4", f"兜底保障（{why_zh}）", f"poverty safety net: {why}", "B4 = 0", B4=_ZERO))
    steps.append(
        _step(
            "P",
            "个人自付",
            "patient pays",
            f"P = R3 − B4 + S + N = {_m(w.r3)} − {_m(w.safety_net)} + {_m(w.class_b_self_pay)}"
            f" + {_m(w.out_of_list)} = {_m(w.patient)}",
            P=w.patient,
        )
    )
    return steps
