"""One-stop settlement at discharge (一站式结算): validate, decide facts, compute under row locks, store."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Date,
    Select,
    and_,
    bindparam,
    exists,
    func,
    literal,
    or_,
    select,
    true,
    union_all,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from ..domain.actor import SYSTEM, Actor
from ..domain.base import new_id, utcnow
from ..domain.errors import BadRequest, Conflict, Forbidden, NotFound, Problem, Unprocessable
from ..domain.fhir_store import ReferenceIndex, StoredResource
from ..domain.kept import kept_rows
from ..domain.ledger import FUNDS, EpisodeDeductible, Payable, Settlement, YearAccumulator
from ..domain.registry import Coverage, Organization, Patient, PovertyRegistration
from ..fhir import codes, jsonio
from ..fhir.mappers import settlement as shapes
from ..fhir.search_params import SHANGHAI, parse_date_range
from ..fhir.store import ResourceStore, instant, lock_digest, now_ms
from ..fhir.validation import json_shape_problems, structure_problems
from ..settlement import (
    ClaimInput,
    ClaimRefused,
    NoPolicyError,
    Policy,
    PolicyRegistry,
    SettlementResult,
    YearAccumulators,
    load_policy_dir,
    settle,
)
from ..settlement.allocation import allocate
from . import ledger_pg
from .resources import audit, audit_row, on_before_delete, on_before_write

CLAIM_TYPES = {"institutional": "inpatient", "professional": "outpatient"}
ZERO = Decimal("0.00")


@dataclass
class _Policies:
    registry: PolicyRegistry | None = None
    directory: Path | None = None


_policies = _Policies()


def configure(policies_dir: Path) -> None:
    """Load (and validate) the policy files once."""
    if _policies.directory != policies_dir or _policies.registry is None:
        _policies.registry = load_policy_dir(policies_dir)
        _policies.directory = policies_dir
    on_before_delete("Patient", _keep_settled_patient)
    on_before_delete("Coverage", _keep_settled_coverage)
    on_before_write("Claim", _keep_settled_claim)


def policies() -> PolicyRegistry:
    """The loaded policies."""
    if _policies.registry is None:
        raise RuntimeError("settlement policies are not configured")
    return _policies.registry


@dataclass(frozen=True)
class SubmitResult:
    """The ClaimResponse JSON and whether this submission created the settlement."""

    claim_response: bytes
    created: bool
    settlement_id: str


def _refuse(message: str, expression: str, code: str = "business-rule") -> Unprocessable:
    return Unprocessable(message, [Problem(message, expression=expression, code=code)])


def _ref_id(value: Any, kind: str) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("reference"), str):
        parts = value["reference"].rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2] == kind:
            return parts[-1]
    return None


def _load(session: Session, res_type: str, res_id: str) -> dict[str, Any] | None:
    return ResourceStore(session).load(res_type, res_id)


def discharge_date(claim: dict[str, Any]) -> date:
    """billablePeriod.end as a date in Asia/Shanghai (date-only or zone-less values are Shanghai)."""
    end = (claim.get("billablePeriod") or {}).get("end")
    if not end:
        raise _refuse(
            "Claim.billablePeriod.end (the discharge) is required", "Claim.billablePeriod.end", "required"
        )
    if len(end) == 10:
        return date.fromisoformat(end)
    try:
        return parse_date_range(end)[0].astimezone(SHANGHAI).date()
    except ValueError:
        raise _refuse(
            f"Claim.billablePeriod.end {end!r} is not a date", "Claim.billablePeriod.end", "value"
        ) from None


# How far past today (Asia/Shanghai) a discharge date may lie: a clock that is a little ahead, or a
# HIS and the server on either side of midnight. A settlement happens at or after the discharge.
DISCHARGE_AHEAD = timedelta(days=1)


def _today() -> date:
    """Today in Asia/Shanghai (the county's calendar)."""
    return datetime.now(SHANGHAI).date()


def _check_use_and_status(claim: dict[str, Any]) -> None:
    """Only a claim proper, in force, is settled (422 naming the element otherwise).

    DESIGN 9 requires `status` and `use` "as usual"; settling is adjudicating a claim for payment,
    so, as in any claims system, a `preauthorization` or `predetermination` (an estimate asked before
    care: nothing is paid) is not settled, and neither is a `draft` (not yet submitted by the
    provider), `cancelled` or `entered-in-error` claim.
    """
    use = claim.get("use")
    if use != "claim":
        raise _refuse(
            f"Claim.use is {use!r}: only a claim (use 'claim') is settled, not a preauthorization "
            "or predetermination",
            "Claim.use",
            "business-rule",
        )
    status = claim.get("status")
    if status != "active":
        raise _refuse(
            f"Claim.status is {status!r}: only an active claim is settled", "Claim.status", "business-rule"
        )


def _check_period(claim: dict[str, Any], discharge: date) -> None:
    """The stay's period must make sense (422 naming the element).

    `billablePeriod.end` may not come before `start` (compared as the widest reading of each: a
    date-only end is the whole day). DESIGN is silent on dates ahead; a settlement is made at
    discharge, so a discharge later than tomorrow in Asia/Shanghai (`DISCHARGE_AHEAD`) is refused
    rather than counted, ahead of time, into the accumulators of a year that may not have begun.
    """
    period = claim.get("billablePeriod") or {}
    start, end = period.get("start"), period.get("end")
    if isinstance(start, str) and isinstance(end, str):
        try:
            begins, ends = parse_date_range(start)[0], parse_date_range(end)[1]
        except ValueError:
            raise _refuse(
                f"Claim.billablePeriod.start {start!r} is not a date", "Claim.billablePeriod.start", "value"
            ) from None
        if begins > ends:
            raise _refuse(
                f"Claim.billablePeriod.end {end} is before its start {start}", "Claim.billablePeriod.end",
                "value",
            )
    latest = _today() + DISCHARGE_AHEAD
    if discharge > latest:
        raise _refuse(
            f"Claim.billablePeriod.end {discharge.isoformat()} is in the future: a claim is settled at "
            f"or after the discharge (at most {latest.isoformat()}, Asia/Shanghai)",
            "Claim.billablePeriod.end",
            "value",
        )


def _items(claim: dict[str, Any]) -> list[tuple[Decimal, str]]:
    items = claim.get("item") or []
    if not items:
        raise _refuse("a claim needs at least one item", "Claim.item", "required")
    out, problems = [], []
    for i, item in enumerate(items):
        where = f"Claim.item[{i}]"
        classes = [
            c.get("code")
            for c in (item.get("category") or {}).get("coding", [])
            if c.get("system") == codes.CHARGE_CLASS_SYSTEM
        ]
        if not classes or classes[0] not in ("A", "B", "C"):
            problems.append(
                Problem(
                    f"{where}.category needs a charge class A, B or C ({codes.CHARGE_CLASS_SYSTEM})",
                    expression=f"{where}.category",
                    code="required",
                )
            )
            continue
        amount: Decimal | None = None
        currency = None
        if item.get("net") is not None:
            # DESIGN 9: `net` wins over unitPrice x quantity (x factor), even where they differ.
            amount = _decimal(item["net"].get("value"))
            currency = item["net"].get("currency")
        elif item.get("unitPrice") is not None:
            # FHIR: net = quantity x unitPrice x factor (quantity and factor default to 1).
            price = _decimal(item["unitPrice"].get("value"))
            qty = _decimal((item.get("quantity") or {}).get("value", 1))
            factor = _decimal(item.get("factor", 1))
            currency = item["unitPrice"].get("currency")
            try:
                amount = (
                    price * qty * factor if price is not None and qty is not None and factor is not None
                    else None
                )
            except ArithmeticError:  # beyond the decimal context (1e999999 x 1e999999)
                problems.append(Problem(f"{where}: unitPrice x quantity x factor is out of range",
                                        expression=f"{where}.unitPrice.value", code="value"))
                continue
        if amount is None:
            problems.append(
                Problem(
                    f"{where} has no amount (net, or unitPrice x quantity x factor)",
                    expression=f"{where}.net",
                    code="required",
                )
            )
            continue
        if currency not in (None, "CNY"):
            problems.append(
                Problem(
                    f"{where}: amounts must be in CNY, not {currency}",
                    expression=f"{where}.net.currency",
                    code="value",
                )
            )
            continue
        if amount < 0:
            problems.append(
                Problem(
                    f"{where}: amount {amount} is negative", expression=f"{where}.net.value", code="value"
                )
            )
            continue
        try:
            whole_fen = amount.quantize(Decimal("0.01"))
        except ArithmeticError:  # more digits than the decimal context holds (1e999): no amount at all
            problems.append(
                Problem(f"{where}: amount {amount} is out of range", expression=f"{where}.net.value",
                        code="value")
            )
            continue
        if amount != whole_fen:
            problems.append(
                Problem(
                    f"{where}: amount {amount} is not whole fen",
                    expression=f"{where}.net.value",
                    code="value",
                )
            )
            continue
        out.append((whole_fen, classes[0]))
    if problems:
        raise Unprocessable(problems[0].message, problems)
    return out


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


# Not part of what was claimed: the server's id and metadata, the narrative, and when the HIS
# wrote the claim (a HIS retrying after a timeout may build it anew, with a new `created`).
NOT_CLAIMED = ("id", "meta", "text", "created")


def canonical(value: Any) -> Any:
    """A JSON value in one spelling: every number an exact normalised Decimal (27000, 27000.0 and
    2.7e4 alike; -0 is 0), arrays in their order; key order and white space go when it is written
    with sorted keys."""
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return value
    try:
        number = Decimal(str(value))
        return Decimal(0) if number.is_zero() else number.normalize()
    except ArithmeticError:  # beyond the decimal context: as written
        return str(value)


def content_hash(claim: dict[str, Any]) -> str:
    """Fingerprint of what was claimed, for idempotency (DESIGN 5: the same key with the same
    content is the same settlement; with other content, 409).

    "Same content" is the claim's meaning, not its bytes: it is hashed in `canonical` form (numbers
    normalised, keys sorted, no white space), without the elements of `NOT_CLAIMED`. So a HIS that
    re-sends `27000.00` as `27000`, re-serialises with another key order, or rebuilds the claim
    with a new `created` after a timeout gets its settlement back; a changed amount, item, patient,
    provider, coverage, period, referral or identifier is other content.
    """
    core = {k: v for k, v in claim.items() if k not in NOT_CLAIMED}
    return hashlib.sha256(jsonio.dumps(canonical(core), sort_keys=True)).hexdigest()


def _raw_content_hash(claim: dict[str, Any]) -> str:
    """The fingerprint settlements stored before `content_hash` was canonical (still recognised)."""
    core = {k: v for k, v in claim.items() if k not in ("id", "meta", "text")}
    return hashlib.sha256(jsonio.dumps(core, sort_keys=True)).hexdigest()


@dataclass(frozen=True)
class _Referral:
    referred: bool
    episode_id: str | None


def _check_referral(
    session: Session, claim: dict[str, Any], patient_id: str, provider_id: str, discharge: date
) -> _Referral:
    """DESIGN 5: a claim's referral must be a referral of this patient to this provider, in force."""
    ref = claim.get("referral")
    if not ref:
        return _Referral(False, None)
    sr_id = _ref_id(ref, "ServiceRequest")
    sr = _load(session, "ServiceRequest", sr_id) if sr_id else None
    if sr is None:
        raise _refuse("Claim.referral does not point to a known ServiceRequest", "Claim.referral")
    kind = next(
        (
            c.get("code")
            for c in (sr.get("code") or {}).get("coding", [])
            if c.get("system") == codes.REFERRAL_TYPE_SYSTEM
        ),
        None,
    )
    problems = []
    if kind not in ("up-referral", "down-referral"):
        problems.append("it is not an up-referral or down-referral")
    if _ref_id(sr.get("subject"), "Patient") != patient_id:
        problems.append("its subject is another patient")
    if provider_id not in {_ref_id(p, "Organization") for p in sr.get("performer") or []}:
        problems.append("its performer does not include the claim's provider")
    if sr.get("status") not in ("active", "completed"):
        problems.append(f"its status is {sr.get('status')}, not active or completed")
    authored = sr.get("authoredOn")
    if not authored or parse_date_range(authored)[0].astimezone(SHANGHAI).date() > discharge:
        problems.append("it was not authored on or before the discharge date")
    # Walk the basedOn chain to the episode's root referral.
    seen = {str(sr["id"])}
    current = sr
    while current.get("basedOn"):
        parent_id = _ref_id(current["basedOn"][0], "ServiceRequest")
        parent = _load(session, "ServiceRequest", parent_id) if parent_id else None
        if parent is None or parent_id in seen:
            problems.append("its basedOn chain does not resolve to earlier referrals (missing or a cycle)")
            break
        parent_kind = next(
            (
                c.get("code")
                for c in (parent.get("code") or {}).get("coding", [])
                if c.get("system") == codes.REFERRAL_TYPE_SYSTEM
            ),
            None,
        )
        if (
            parent_kind not in ("up-referral", "down-referral")
            or _ref_id(parent.get("subject"), "Patient") != patient_id
        ):
            problems.append("its basedOn chain leads to something that is not a referral of this patient")
            break
        seen.add(str(parent_id))
        current = parent
    if problems:
        message = f"Claim.referral ServiceRequest/{sr_id} is refused: " + "; ".join(problems)
        raise _refuse(message, "Claim.referral")
    return _Referral(True, str(current["id"]))


def _upsert_locked(session: Session, model: Any, values: dict[str, Any], keep: str) -> Any:
    """The row of `model` with these key values, created (with `values`) if missing, locked until commit.

    One statement: an insert that, on conflict, "updates" the existing row to itself. Like
    `SELECT ... FOR UPDATE`, that waits for a concurrent settlement of the same row to end and answers
    the row as that one left it. (SQLite serialises writers.)
    """
    dialect = session.get_bind().dialect.name
    ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(model).values(**values)
    stmt = ins.on_conflict_do_update(
        index_elements=[c.name for c in model.__table__.primary_key.columns],
        set_={keep: getattr(model, keep)},
    ).returning(model)
    return session.scalars(stmt, execution_options={"populate_existing": True}).one()


def _lock_accumulator(session: Session, patient_id: str, year: int) -> YearAccumulator:
    """The person's accumulator row for the year, created if needed, locked until commit."""
    row: YearAccumulator = _upsert_locked(
        session,
        YearAccumulator,
        {
            "patient_id": patient_id,
            "year": year,
            "inpatient_basic_paid": ZERO,
            "outpatient_basic_paid": ZERO,
            "critical_illness_cumulative_r1": ZERO,
            "critical_illness_paid": ZERO,
            "assistance_paid": ZERO,
            "safety_net_paid": ZERO,
            "patient_paid": ZERO,
            "settlements": 0,
        },
        keep="settlements",
    )
    return row


def _lock_episode(session: Session, episode_id: str, year: int) -> EpisodeDeductible:
    row: EpisodeDeductible = _upsert_locked(
        session, EpisodeDeductible, {"episode_id": episode_id, "year": year, "borne": ZERO}, keep="borne"
    )
    return row


@dataclass(frozen=True, slots=True)
class _Parties:
    """What a settlement needs to know of the claim's patient, provider and coverage."""

    patient_id: str
    district: str | None
    household_id: str | None
    poor: bool  # registered poor on the discharge date
    provider_id: str | None  # None: no such organisation
    facility_level: str | None
    provider_district: str | None
    coverage_id: str | None  # None: no such coverage
    coverage_patient_id: str | None
    coverage_type: str | None
    coverage_active: bool  # on the discharge date
    payor_id: str | None


_DAY = bindparam("day", type_=Date())


def _not_deleted(res_type: str, res_id: Any) -> Any:
    """The registry row's resource was not DELETEd over the API (a deletion keeps the registry row:
    the resource then reads 410, and a claim must treat it as unknown). A registry row without
    stored JSON (seeded directly) counts as present."""
    return ~exists().where(
        StoredResource.res_type == res_type, StoredResource.res_id == res_id, StoredResource.deleted == true()
    )


_PARTIES = (
    select(
        Patient.id, Patient.district, Patient.household_id,
        exists().where(
            PovertyRegistration.patient_id == Patient.id,
            PovertyRegistration.start <= _DAY,
            or_(PovertyRegistration.end.is_(None), PovertyRegistration.end >= _DAY),
        ).label("poor"),
        Organization.id.label("provider_id"), Organization.facility_level,
        Organization.district.label("provider_district"),
        Coverage.id.label("coverage_id"), Coverage.patient_id.label("coverage_patient_id"),
        Coverage.type.label("coverage_type"),
        and_(
            Coverage.status == "active",
            or_(Coverage.period_start.is_(None), Coverage.period_start <= _DAY),
            or_(Coverage.period_end.is_(None), Coverage.period_end >= _DAY),
        ).label("coverage_active"),
        Coverage.payor_id,
    )
    .select_from(Patient)
    .outerjoin(Organization, and_(Organization.id == bindparam("provider_id"),
                                  _not_deleted("Organization", Organization.id)))
    .outerjoin(Coverage, and_(Coverage.id == bindparam("coverage_id"), _not_deleted("Coverage", Coverage.id)))
    .where(Patient.id == bindparam("patient_id"), _not_deleted("Patient", Patient.id))
)  # fmt: skip
# PostgreSQL: the same statement takes the claim's advisory lock, and shares the locks that a
# DELETE of the patient or the coverage takes (`_keep_settled`).
_PARTIES_LOCKING = _PARTIES.add_columns(
    func.pg_advisory_xact_lock(bindparam("lock", type_=BigInteger())).label("locked"),
    func.pg_advisory_xact_lock_shared(bindparam("patient_lock", type_=BigInteger())).label("p_locked"),
    func.pg_advisory_xact_lock_shared(bindparam("coverage_lock", type_=BigInteger())).label("c_locked"),
)


def _party_lock(res_type: str, res_id: str | None) -> str:
    """The lock a settlement shares and a DELETE of its Patient or Coverage takes alone."""
    return f"settlement-party|{res_type}/{res_id}"


def _parties(
    session: Session,
    patient_id: str | None,
    provider_id: str,
    coverage_id: str | None,
    day: date,
    lock: str,
) -> _Parties | None:
    """The claim's patient, provider and coverage as of the discharge `day`, in one statement
    (None: no such patient). A deleted Patient, Organization or Coverage counts as unknown.

    On PostgreSQL the same statement takes the claim's advisory lock (held until commit), which makes
    concurrent submissions of one claim identifier wait for each other. It is taken only when the
    patient exists: otherwise the claim is refused anyway. The look-up of an earlier settlement comes
    after it, in a statement of its own, so that it sees what the lock's previous holder committed.
    """
    if patient_id is None:
        return None
    connection = session.connection()
    params: dict[str, Any] = {
        "patient_id": patient_id, "provider_id": provider_id, "coverage_id": coverage_id, "day": day,
    }
    if connection.dialect.name == "postgresql":
        stmt, params["lock"] = _PARTIES_LOCKING, lock_digest(lock)
        params["patient_lock"] = lock_digest(_party_lock("Patient", patient_id))
        params["coverage_lock"] = lock_digest(_party_lock("Coverage", coverage_id))
    else:
        stmt = _PARTIES
    rows = kept_rows(connection, stmt, params)
    if not rows:
        return None
    r = rows[0]
    return _Parties(
        r.id, r.district, r.household_id, bool(r.poor), r.provider_id, r.facility_level,
        r.provider_district, r.coverage_id, r.coverage_patient_id, r.coverage_type,
        bool(r.coverage_active), r.payor_id,
    )


def _validate_claim(claim: dict[str, Any]) -> None:
    if claim.get("resourceType") != "Claim":
        raise BadRequest(
            f"$submit takes a Claim, not {claim.get('resourceType')!r}",
            [Problem("resourceType must be Claim", expression="resourceType", code="structure")],
        )
    problems = structure_problems("Claim", claim) or json_shape_problems("Claim", claim)
    if problems:
        raise BadRequest("the Claim is not a valid FHIR R4 Claim", problems)


IDENTIFIER_MAX = 200  # the ledger's idempotency key columns (Settlement.identifier_system / _value)


def submit_claim(session: Session, actor: Actor, claim: dict[str, Any]) -> SubmitResult:
    """Settle a claim at discharge: every payer at once, idempotent on (provider, identifier)."""
    _validate_claim(claim)
    provider_id = _ref_id(claim.get("provider"), "Organization")
    if provider_id is None:
        raise _refuse("Claim.provider must reference an Organization", "Claim.provider", "required")
    if not actor.sees_everything and provider_id != actor.organization_id:
        raise Forbidden("a client may submit claims only with its own organisation as provider")
    idents = [i for i in claim.get("identifier") or [] if i.get("system") and i.get("value")]
    if not idents:
        raise _refuse(
            "Claim.identifier (system and value) is required: it makes $submit idempotent",
            "Claim.identifier",
            "required",
        )
    key_system, key_value = str(idents[0]["system"]), str(idents[0]["value"])
    _check_use_and_status(claim)
    if len(key_system) > IDENTIFIER_MAX or len(key_value) > IDENTIFIER_MAX:
        raise _refuse(
            f"Claim.identifier system and value are at most {IDENTIFIER_MAX} characters each",
            "Claim.identifier[0]",
            "value",
        )
    claim_type_code = next(
        (
            c.get("code")
            for c in (claim.get("type") or {}).get("coding", [])
            if c.get("system") == shapes.CLAIM_TYPE_SYSTEM
        ),
        None,
    )
    if claim_type_code not in CLAIM_TYPES:
        raise _refuse(
            "Claim.type must be institutional (inpatient) or professional (outpatient) "
            f"in {shapes.CLAIM_TYPE_SYSTEM}",
            "Claim.type",
            "code-invalid",
        )
    items = _items(claim)
    coverage_id = _ref_id(((claim.get("insurance") or [{}])[0]).get("coverage"), "Coverage")
    try:
        discharge, bad_discharge = discharge_date(claim), None
    except Unprocessable as exc:  # reported after the patient and the provider
        discharge, bad_discharge = date.min, exc
    lock = f"settlement|{provider_id}|{key_system}|{key_value}"
    parties = _parties(session, _ref_id(claim.get("patient"), "Patient"), provider_id, coverage_id,
                       discharge, lock)
    if parties is None:
        raise _unknown_patient()
    if parties.provider_id is None or not parties.facility_level:
        raise _refuse("Claim.provider is not a known health facility", "Claim.provider", "not-found")
    if bad_discharge is not None:
        raise bad_discharge
    _check_period(claim, discharge)
    region = (parties.district or "").strip()
    if not region:  # DESIGN 5: the policy is that of the patient's insured region
        raise _refuse(
            "the patient has no insured region (Patient.address[0].district), so no settlement policy "
            "applies", "Claim.patient", "business-rule",
        )
    try:
        policy = policies().in_force(region, discharge)
    except NoPolicyError as exc:
        raise _refuse(str(exc), "Claim.billablePeriod.end") from None
    if (
        parties.coverage_id is None
        or parties.coverage_patient_id != parties.patient_id
        or parties.coverage_type != "basic"
        or not parties.coverage_active
    ):
        raise _no_coverage()
    referral = _check_referral(session, claim, parties.patient_id, parties.provider_id, discharge)

    if session.get_bind().dialect.name != "postgresql":
        ResourceStore(session).lock_key(lock)  # (PostgreSQL: taken by _parties)
    digest = content_hash(claim)
    connection = session.connection()
    values = {"provider_id": parties.provider_id, "system": key_system, "value": key_value}
    if connection.dialect.name == "postgresql":
        # After the lock a DELETE of the patient or coverage holds: what such a DELETE committed
        # while this claim waited for it (SQLite: writers are serialised, _parties saw it).
        rows = kept_rows(connection, _EARLIER_OR_DELETED,
                         values | {"patient_id": parties.patient_id, "coverage_id": parties.coverage_id})
        if any(r.content_hash == _DELETED and r.claim_response_id == "Patient" for r in rows):
            raise _unknown_patient()
        if any(r.content_hash == _DELETED for r in rows):
            raise _no_coverage()
        earlier = rows
    else:
        earlier = kept_rows(connection, _EARLIER, values)
    if earlier:
        if earlier[0].content_hash not in (digest, _raw_content_hash(claim)):
            raise Conflict(
                f"claim {key_system}|{key_value} was already settled with other content; "
                "reverse that settlement first"
            )
        stored = _load(session, "ClaimResponse", earlier[0].claim_response_id)
        assert stored is not None
        return SubmitResult(jsonio.dumps(stored), created=False, settlement_id=earlier[0].id)

    year = discharge.year
    in_one_statement = session.get_bind().dialect.name == "postgresql"
    if in_one_statement:  # the ledger rows are written by the resources' statement (ledger_pg)
        acc = ledger_pg.locked_accumulator(session.connection(), parties.patient_id, year)
        episode = (
            ledger_pg.locked_episode(session.connection(), referral.episode_id, year)
            if referral.episode_id else None
        )
    else:
        acc = _lock_accumulator(session, parties.patient_id, year)
        episode = _lock_episode(session, referral.episode_id, year) if referral.episode_id else None
    out_of_county = (parties.provider_district or "").strip() != region and not referral.referred
    inpatient = CLAIM_TYPES[claim_type_code] == "inpatient"
    try:
        result = settle(
            policy,
            ClaimInput(
                claim_type=CLAIM_TYPES[claim_type_code],
                facility_level=parties.facility_level,
                items=items,
                registered_poor=parties.poor,
                unreferred_out_of_county=out_of_county,
                episode_deductible_borne=episode.borne if episode is not None and inpatient else ZERO,
            ),
            YearAccumulators(
                inpatient_basic_paid=acc.inpatient_basic_paid,
                outpatient_basic_paid=acc.outpatient_basic_paid,
                critical_illness_cumulative_r1=acc.critical_illness_cumulative_r1,
                critical_illness_paid=acc.critical_illness_paid,
                assistance_paid=acc.assistance_paid,
            ),
        )
    except ClaimRefused as exc:
        raise _refuse(str(exc), "Claim") from None
    return _store(
        session,
        actor,
        claim,
        result,
        policy,
        parties,
        acc,
        episode,
        key_system=key_system,
        key_value=key_value,
        digest=digest,
        discharge=discharge,
        claim_type_code=claim_type_code,
        out_of_county=out_of_county,
        referral=referral,
        in_one_statement=in_one_statement,
        items=items,
    )


# The active settlement of a claim identifier, if any (idempotency).
_EARLIER = select(Settlement.id, Settlement.content_hash, Settlement.claim_response_id).where(
    Settlement.provider_id == bindparam("provider_id"),
    Settlement.identifier_system == bindparam("system"),
    Settlement.identifier_value == bindparam("value"),
    Settlement.status == "active",
).limit(1)
# PostgreSQL: the same, and a row (id, _DELETED, type) for the claim's Patient or Coverage if it is
# deleted now (no content hash is that string).
_DELETED = "deleted"
_EARLIER_OR_DELETED = union_all(
    _EARLIER,
    select(StoredResource.res_id, literal(_DELETED), StoredResource.res_type).where(
        StoredResource.deleted == true(),
        or_(
            and_(StoredResource.res_type == "Patient", StoredResource.res_id == bindparam("patient_id")),
            and_(StoredResource.res_type == "Coverage", StoredResource.res_id == bindparam("coverage_id")),
        ),
    ),
)


def _unknown_patient() -> Unprocessable:
    return _refuse("Claim.patient is not a known Patient", "Claim.patient", "not-found")


def _no_coverage() -> Unprocessable:
    return _refuse(
        "the patient has no active basic Coverage on the discharge date (Claim.insurance[0].coverage)",
        "Claim.insurance[0].coverage",
    )


# Claims whose active settlement rests on a Patient / a Coverage (a few, to name them).
_SETTLED_FOR_PATIENT = select(Settlement.claim_id).where(
    Settlement.patient_id == bindparam("res_id"), Settlement.status == "active"
).limit(3)
_EOB_COVERAGE = ReferenceIndex.__table__.alias("eob_coverage")
_SETTLED_ON_COVERAGE = (
    select(Settlement.claim_id)
    .select_from(_EOB_COVERAGE)
    .join(StoredResource, StoredResource.pk == _EOB_COVERAGE.c.resource_pk)
    .join(ReferenceIndex, and_(ReferenceIndex.resource_pk == _EOB_COVERAGE.c.resource_pk,
                               ReferenceIndex.res_type == "ExplanationOfBenefit",
                               ReferenceIndex.param == "claim"))
    .join(Settlement, and_(Settlement.claim_id == ReferenceIndex.target_id,
                           Settlement.eob_id == StoredResource.res_id, Settlement.status == "active"))
    .where(
        _EOB_COVERAGE.c.res_type == "ExplanationOfBenefit", _EOB_COVERAGE.c.param == "coverage",
        _EOB_COVERAGE.c.target_id == bindparam("res_id"), _EOB_COVERAGE.c.target_type == "Coverage",
    )
    .distinct()
    .limit(3)
)  # fmt: skip


def _keep_settled(session: Session, res_type: str, res_id: str, query: Any) -> None:
    """409 for a DELETE of a Patient or Coverage that an active settlement rests on.

    DESIGN 5 keeps every settlement (a reversal keeps both records); a settled claim is never
    deleted (its type has no delete) but reversed. Deleting the patient or the coverage under it
    would leave the insurer a ClaimResponse whose patient reads 410, so it is refused the same way:
    reverse the settlements first. Once they are all reversed this refusal lifts, but the kept claim
    records still refer to them (`resources.ensure_unreferenced` answers 409 then). The lock
    taken here is the one every settlement shares on its patient and coverage (`_PARTIES_LOCKING`),
    so a settlement in flight and a DELETE never both succeed (SQLite serialises writers).
    """
    ResourceStore(session).lock_key(_party_lock(res_type, res_id))
    claims = session.scalars(query, {"res_id": res_id}).all()
    if claims:
        named = ", ".join(f"Claim/{c}" for c in claims)
        message = (
            f"{res_type}/{res_id} cannot be deleted: active settlements rest on it ({named}); "
            "reverse them first (冲销)"
        )
        raise Conflict(message, [Problem(message, expression=res_type, code="business-rule")])


# The active settlement of a Claim resource, if any.
_ACTIVE_OF_CLAIM = select(Settlement.identifier_system, Settlement.identifier_value).where(
    Settlement.claim_id == bindparam("claim_id"), Settlement.status == "active"
).limit(1)


def _settled_claim(claim_id: str, key: Any) -> Conflict:
    message = (
        f"Claim/{claim_id} has an active settlement (identifier {key.identifier_system}|"
        f"{key.identifier_value}) and cannot be changed: reverse it first (冲销), then update or resubmit it"
    )
    return Conflict(message, [Problem(message, expression="Claim", code="business-rule")])


def _keep_settled_claim(
    session: Session, actor: Actor, new: dict[str, Any], previous: dict[str, Any] | None
) -> None:
    """409 for an update (PUT, or a transaction entry) of a Claim with an active settlement.

    The stored Claim is the record of what was settled: the ClaimResponse, the EOB and the ledger
    say what it said. Changing its amounts or anything else under them would make them disagree,
    so, as for its deletion, the way is to reverse the settlement and then update or resubmit.
    A PUT that changes nothing claimed (the same content in another spelling, or only meta or the
    narrative) is still fine. The settlement service writes the Claim itself (not through this
    update), so its own writes are not refused here.
    """
    if previous is None:
        return
    key = session.execute(_ACTIVE_OF_CLAIM, {"claim_id": str(new.get("id"))}).first()
    if key is None:
        return
    unchanged = ("meta", "text")
    if canonical({k: v for k, v in new.items() if k not in unchanged}) != canonical(
        {k: v for k, v in previous.items() if k not in unchanged}
    ):
        raise _settled_claim(str(new.get("id")), key)


def _keep_settled_patient(session: Session, actor: Actor, res_id: str) -> None:
    _keep_settled(session, "Patient", res_id, _SETTLED_FOR_PATIENT)


def _keep_settled_coverage(session: Session, actor: Actor, res_id: str) -> None:
    _keep_settled(session, "Coverage", res_id, _SETTLED_ON_COVERAGE)


def _store(
    session: Session,
    actor: Actor,
    claim: dict[str, Any],
    result: SettlementResult,
    policy: Policy,
    parties: _Parties,
    acc: YearAccumulator,
    episode: EpisodeDeductible | None,
    *,
    key_system: str,
    key_value: str,
    digest: str,
    discharge: date,
    claim_type_code: str,
    out_of_county: bool,
    referral: _Referral,
    in_one_statement: bool,
    items: list[tuple[Decimal, str]],
) -> SubmitResult:
    """Store the settlement: ledger rows, accumulators, the three resources, access link, audit row.

    `in_one_statement` (PostgreSQL): `acc` and `episode` are not in the session, and every row goes
    in the resources' write statement; otherwise the ledger rows are flushed through the ORM first.
    """
    provider_id, coverage_id = parties.provider_id, parties.coverage_id
    assert provider_id is not None and coverage_id is not None  # (checked by submit_claim)
    store = ResourceStore(session)
    claim_body = {k: v for k, v in claim.items() if k not in ("meta",)}
    existing_claim = store.current("Claim", str(claim["id"])) if claim.get("id") else None
    if existing_claim is not None:
        # The same Claim resource already settled under another identifier: settling again would
        # overwrite the record the first settlement rests on (the same identifier was answered above).
        key = session.execute(_ACTIVE_OF_CLAIM, {"claim_id": existing_claim.res_id}).first()
        if key is not None:
            raise _settled_claim(existing_claim.res_id, key)
    owner = actor.organization_id
    claim_version = store.prepare(
        "Claim", claim_body, method="PUT" if existing_claim else "POST", owner_org_id=owner,
        existing=existing_claim,
    )
    c = result.components
    deltas = result.accumulator_deltas
    acc.settlements += 1
    settlement = Settlement(
        id=new_id(),
        claim_id=claim_version.res_id,
        claim_response_id=new_id(),
        eob_id=new_id(),
        provider_id=provider_id,
        identifier_system=key_system,
        identifier_value=key_value,
        content_hash=digest,
        patient_id=parties.patient_id,
        household_id=parties.household_id,
        claim_type=CLAIM_TYPES[claim_type_code],
        facility_level=parties.facility_level or "",
        discharge_date=discharge,
        accumulator_year=discharge.year,
        registered_poor=parties.poor,
        referred=referral.referred,
        unreferred_out_of_county=out_of_county,
        episode_id=referral.episode_id,
        policy_id=policy.id,
        policy_version=policy.version,
        total=c["total"],
        eligible=c["eligible"],
        basic_deductible=c["basic-deductible"],
        basic_insurance=c["basic-insurance"],
        critical_illness=c["critical-illness"],
        medical_assistance=c["medical-assistance"],
        poverty_safety_net=c["poverty-safety-net"],
        class_b_self_pay=c["class-b-self-pay"],
        out_of_list=c["out-of-list"],
        patient_pay=c["patient-pay"],
        deductible_borne=result.deductible_borne if CLAIM_TYPES[claim_type_code] == "inpatient" else ZERO,
        ci_r1_added=deltas.critical_illness_cumulative_r1,
        trace=[step.to_dict() for step in result.trace],
        status="active",
        sequence=acc.settlements,
        settled_at=utcnow(),
        settled_by=actor.name,
        reversed_at=None,
        reversed_by=None,
        reversal_reason=None,
    )
    acc.inpatient_basic_paid += deltas.inpatient_basic_paid
    acc.outpatient_basic_paid += deltas.outpatient_basic_paid
    acc.critical_illness_cumulative_r1 += deltas.critical_illness_cumulative_r1
    acc.critical_illness_paid += deltas.critical_illness_paid
    acc.assistance_paid += deltas.assistance_paid
    acc.safety_net_paid += c["poverty-safety-net"]
    acc.patient_paid += c["patient-pay"]
    if episode is not None:
        episode.borne += settlement.deductible_borne
    payables = [
        Payable(
            settlement_id=settlement.id, fund=fund, hospital_id=provider_id, amount=amount,
            created_at=settlement.settled_at, status="unpaid", paid_amount=ZERO, paid_at=None,
            payment_id=None,
        )
        for fund in FUNDS
        if (amount := settlement.amount_of(fund)) > 0
    ]
    if in_one_statement:
        ledger = ledger_pg.ledger_rows(session.get_bind().dialect, settlement, acc, episode, payables)
    else:
        ledger = []
        session.add(settlement)
        session.add_all(payables)
        session.flush()
    created = instant(now_ms())
    insurer_id = parties.payor_id
    response = shapes.claim_response(
        settlement, claim_type=claim_type_code, insurer_id=insurer_id, created=created
    )
    caps = {
        "inpatient basic insurance paid this year": policy.basic_insurance.inpatient.yearly_cap,
        "outpatient basic insurance paid this year": policy.basic_insurance.outpatient.yearly_cap,
        "critical illness paid this year": None if parties.poor else policy.critical_illness.yearly_cap,
        "medical assistance paid this year": policy.medical_assistance.yearly_cap if parties.poor else None,
    }
    used = {
        "inpatient basic insurance paid this year": acc.inpatient_basic_paid,
        "outpatient basic insurance paid this year": acc.outpatient_basic_paid,
        "critical illness paid this year": acc.critical_illness_paid,
        "medical assistance paid this year": acc.assistance_paid,
    }
    eob = shapes.explanation_of_benefit(
        settlement,
        jsonio.loads(claim_version.content),
        claim_type=claim_type_code,
        insurer_id=insurer_id,
        coverage_id=coverage_id,
        created=created,
        used=used,
        caps=caps,
        item_components=allocate(items, c),
    )
    # The three resources, the provider's access link and the audit row: one statement on PostgreSQL.
    _, stored_response, _ = store.write(
        [
            claim_version,
            store.prepare("ClaimResponse", response, method="POST", owner_org_id=owner),
            store.prepare("ExplanationOfBenefit", eob, method="POST", owner_org_id=owner),
        ],
        grant=(parties.patient_id, provider_id, "treated"),
        audit=audit_row(
            actor,
            action="C",
            interaction="operation",
            entity_type="Claim",
            entity_id=claim_version.res_id,
            patient_id=parties.patient_id,
            query="$submit",
        ),
        also=ledger,
    )
    return SubmitResult(stored_response.content, created=True, settlement_id=settlement.id)


def later_in_year(settlement: Settlement) -> Select[Settlement]:
    """The active settlements of the same person and year that come after `settlement` in the ledger.

    They were computed on accumulators that held `settlement`: a reversal lists them for review.
    """
    return (
        select(Settlement)
        .where(
            Settlement.patient_id == settlement.patient_id,
            Settlement.accumulator_year == settlement.accumulator_year,
            Settlement.sequence > settlement.sequence,
            Settlement.status == "active",
        )
        .order_by(Settlement.sequence)
    )


@dataclass(frozen=True)
class ReversalResult:
    """The reversed settlement and the later ones of that person and year to review."""

    settlement_id: str
    claim_response: dict[str, Any]
    later: list[Settlement]


def reverse_settlement(session: Session, actor: Actor, claim_id: str, reason: str) -> ReversalResult:
    """冲销: remove a settlement from every accumulator; keep both records; list later ones for review."""
    settlement = session.scalars(
        select(Settlement).where(Settlement.claim_id == claim_id, Settlement.status == "active")
    ).first()
    # Who may reverse is checked first (403), then the reason (422), then whether there is still a
    # settlement to reverse (409): a client that may not reverse the claim learns nothing more.
    settled = settlement or session.scalars(select(Settlement).where(Settlement.claim_id == claim_id)).first()
    if settled is None:
        raise NotFound(f"Claim/{claim_id} has no settlement")
    if not actor.sees_everything and actor.organization_id != settled.provider_id and not actor.is_insurer:
        raise Forbidden("only the hospital that settled the claim or the insurance office may reverse it")
    if not reason or not reason.strip():
        raise _refuse("a reversal needs a reason", "Parameters.parameter[reason]", "required")
    if settlement is None:
        raise Conflict(f"Claim/{claim_id} has no active settlement (already reversed)")
    acc = _lock_accumulator(session, settlement.patient_id, settlement.accumulator_year)
    session.refresh(settlement, with_for_update=True)
    if settlement.status != "active":
        raise Conflict(f"Claim/{claim_id} was reversed meanwhile")
    inpatient = settlement.claim_type == "inpatient"
    if inpatient:
        acc.inpatient_basic_paid -= settlement.basic_insurance
    else:
        acc.outpatient_basic_paid -= settlement.basic_insurance
    acc.critical_illness_cumulative_r1 -= settlement.ci_r1_added
    acc.critical_illness_paid -= settlement.critical_illness
    acc.assistance_paid -= settlement.medical_assistance
    acc.safety_net_paid -= settlement.poverty_safety_net
    acc.patient_paid -= settlement.patient_pay
    if settlement.episode_id and settlement.deductible_borne:
        episode = _lock_episode(session, settlement.episode_id, settlement.accumulator_year)
        episode.borne -= settlement.deductible_borne
    settlement.status = "reversed"
    settlement.reversed_at = utcnow()
    settlement.reversed_by = actor.name
    settlement.reversal_reason = reason.strip()
    for payable in settlement.payables:
        if payable.status == "unpaid":
            payable.status = "cancelled"
    session.flush()
    store = ResourceStore(session)
    claim_type = "institutional" if inpatient else "professional"
    response = shapes.claim_response(
        settlement, claim_type=claim_type, insurer_id=None, created=instant(now_ms())
    )
    current_response = store.current("ClaimResponse", settlement.claim_response_id, for_update=True)
    if current_response is not None:
        previous = jsonio.loads(current_response.content)
        response["insurer"] = previous.get("insurer", response["insurer"])
        response["created"] = previous.get("created", response["created"])
        store.save("ClaimResponse", response, method="PUT", owner_org_id=None, existing=current_response)
    current_eob = store.current("ExplanationOfBenefit", settlement.eob_id, for_update=True)
    if current_eob is not None:
        eob = jsonio.loads(current_eob.content) | {"status": "cancelled"}
        store.save("ExplanationOfBenefit", eob, method="PUT", owner_org_id=None, existing=current_eob)
    later = list(session.scalars(later_in_year(settlement)))
    audit(
        session,
        actor,
        action="U",
        interaction="operation",
        entity_type="Claim",
        entity_id=claim_id,
        patient_id=settlement.patient_id,
        query="$reverse",
    )
    return ReversalResult(settlement.id, response, later)


def recompute(session: Session, settlement_id: str) -> dict[str, str]:
    """Recompute a stored settlement with its recorded policy and accumulators; differences by component."""
    s = session.get(Settlement, settlement_id)
    if s is None:
        raise NotFound(f"settlement {settlement_id} is not known")
    policy = policies().find(s.policy_id, s.policy_version)
    if policy is None:
        raise NotFound(f"policy {s.policy_id} version {s.policy_version} is no longer loaded")
    claim = _load(session, "Claim", s.claim_id)
    assert claim is not None
    earlier = list(
        session.scalars(
            select(Settlement).where(
                Settlement.patient_id == s.patient_id,
                Settlement.accumulator_year == s.accumulator_year,
                Settlement.sequence < s.sequence,
                Settlement.status == "active",
            )
        )
    )
    acc = YearAccumulators(
        inpatient_basic_paid=sum((e.basic_insurance for e in earlier if e.claim_type == "inpatient"), ZERO),
        outpatient_basic_paid=sum((e.basic_insurance for e in earlier if e.claim_type == "outpatient"), ZERO),
        critical_illness_cumulative_r1=sum((e.ci_r1_added for e in earlier), ZERO),
        critical_illness_paid=sum((e.critical_illness for e in earlier), ZERO),
        assistance_paid=sum((e.medical_assistance for e in earlier), ZERO),
    )
    borne = sum((e.deductible_borne for e in earlier if e.episode_id == s.episode_id and s.episode_id), ZERO)
    result = settle(
        policy,
        ClaimInput(
            claim_type=s.claim_type,
            facility_level=s.facility_level,
            items=_items(claim),
            registered_poor=s.registered_poor,
            unreferred_out_of_county=s.unreferred_out_of_county,
            episode_deductible_borne=borne if s.claim_type == "inpatient" else ZERO,
        ),
        acc,
    )
    stored = shapes.component_values(s)
    return {
        code: f"{stored[code]} -> {value}"
        for code, value in result.components.items()
        if value != stored[code]
    }


def payable_summary(session: Session, settlement_id: str) -> dict[str, Decimal]:
    """Amount per fund that the hospital is owed for a settlement."""
    return {
        p.fund: p.amount
        for p in session.scalars(select(Payable).where(Payable.settlement_id == settlement_id))
    }


__all__ = [
    "SYSTEM",
    "ReversalResult",
    "SubmitResult",
    "configure",
    "recompute",
    "reverse_settlement",
    "submit_claim",
]


def submit_bundle(session: Session, actor: Actor, bundle: dict[str, Any]) -> SubmitResult:
    """$submit with a Bundle: store what the Claim references (same rules as the API), then settle."""
    from .bundles import _rewrite, referenced_first
    from .resources import create, update

    entries = [
        e for e in bundle.get("entry") or [] if isinstance(e, dict) and isinstance(e.get("resource"), dict)
    ]
    claims = [e for e in entries if e["resource"].get("resourceType") == "Claim"]
    if len(claims) != 1:
        raise BadRequest(
            "the Bundle must hold exactly one Claim",
            [Problem("exactly one Claim entry is required", expression="Bundle.entry", code="required")],
        )
    ids: dict[str, str] = {}
    others = [e for e in entries if e is not claims[0]]
    for e in others:
        kind = e["resource"].get("resourceType")
        rid = e["resource"].get("id") or new_id()
        e["resource"] = {**e["resource"], "id": rid}
        if e.get("fullUrl"):
            ids[str(e["fullUrl"])] = f"{kind}/{rid}"
    known = frozenset((v.split("/", 1)[0], v.split("/", 1)[1]) for v in ids.values())
    rewritten = [_rewrite(e["resource"], ids) for e in others]
    # In any order they come, as in a transaction: what another entry references is stored first
    # (a Coverage's Patient before it).
    targets = {f"{r.get('resourceType')}/{r['id']}": r for r in rewritten}
    for resource in referenced_first(rewritten, targets, lambda r: r):
        kind = str(resource.get("resourceType"))
        if _load(session, kind, str(resource["id"])) is None:
            create(session, actor, kind, resource, assigned_id=str(resource["id"]), known_refs=known)
        else:
            update(session, actor, kind, str(resource["id"]), resource, known_refs=known)
    return submit_claim(session, actor, _rewrite(claims[0]["resource"], ids))
