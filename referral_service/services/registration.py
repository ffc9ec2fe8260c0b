"""Patient registration (建档): the shared form schema, then the same FHIR writes and rules as the API."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validates_schema
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, selectinload

from ..domain import resident_id
from ..domain.actor import Actor
from ..domain.days import EARLIEST_DAY, LATEST_DAY, DayOutOfRange, check_day
from ..domain.errors import Conflict, DomainError, Unprocessable
from ..domain.registry import Coverage, Household, Organization, Patient
from ..fhir import codes
from ..fhir.mappers.group import INCOME_URL
from ..fhir.search_params import SHANGHAI
from ..fhir.store import visible_ids, visible_patients
from . import resources

GENDERS = ("male", "female", "other", "unknown")
HOUSEHOLD_MODES = ("none", "existing", "new")
MAX_INCOME = Decimal("100000000")


class Msg(str):
    """A message id (English) with its parameters; the caller translates it into the user's language.

    `fixed` carries ready translations (e.g. the domain's zh/en identity-number messages).
    """

    params: dict[str, Any]
    fixed: dict[str, str]

    def __new__(cls, msgid: str, *, fixed: Mapping[str, str] | None = None, **params: Any) -> Msg:
        """Create the message."""
        obj = super().__new__(cls, msgid)
        obj.params = dict(params)
        obj.fixed = dict(fixed or {})
        return obj

    def render(self, translate: Callable[..., str], language: str = "en") -> str:
        """The message in `language`: `translate(msgid, **params)` unless a fixed translation exists."""
        for key, text in self.fixed.items():
            if language.lower().startswith(key):
                return text
        return translate(str(self), **self.params)

    def english(self) -> str:
        """The English text (for logs and API callers)."""
        return str(self) % self.params if self.params else str(self)


def invalid(field_name: str, msgid: str, **params: Any) -> ValidationError:
    """A validation error on one field."""
    return ValidationError({field_name: [Msg(msgid, **params)]})


class FormSchema(Schema):
    """Base of the shared form schemas: unknown keys (CSRF token, buttons) are ignored."""

    class Meta:
        unknown = EXCLUDE


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def required_text(max_length: int) -> Callable[[str], None]:
    """A validator: not blank and at most `max_length` characters."""

    def check(value: str) -> None:
        if not value.strip():
            raise ValidationError(Msg("This field is required."))
        if len(value.strip()) > max_length:
            raise ValidationError(Msg("At most %(max)s characters.", max=max_length))

    return check


def optional_text(max_length: int) -> Callable[[str], None]:
    """A validator: at most `max_length` characters (blank is allowed)."""

    def check(value: str) -> None:
        if len(value.strip()) > max_length:
            raise ValidationError(Msg("At most %(max)s characters.", max=max_length))

    return check


def one_of(choices: tuple[str, ...]) -> Callable[[str], None]:
    """A validator: one of the choices."""

    def check(value: str) -> None:
        if value not in choices:
            raise ValidationError(Msg("Choose one of the options."))

    return check


_PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")


class PlainDecimal(fields.Decimal):
    """A number as a person types it: digits with an optional decimal point and fraction, nothing else.

    marshmallow's Decimal takes whatever `decimal.Decimal` parses: exponents ("1e3"), digit-group
    underscores ("1_000") and, unless refused, NaN and Infinity. A form field wants digits only (full-width
    digits from a Chinese input method are read as the same digits). `message`: the refusal.
    """

    def __init__(self, *args: Any, message: Msg | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plain_message = message or Msg("Enter a number.")

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Decimal:
        if isinstance(value, int | Decimal) and not isinstance(value, bool):
            value = str(value)
        text = unicodedata.normalize("NFKC", value).strip() if isinstance(value, str) else None
        if text is None or not _PLAIN_NUMBER.fullmatch(text):
            raise ValidationError(self.plain_message)
        number = super()._deserialize(text, attr, data, **kwargs)
        assert number is not None  # (None never reaches _deserialize)
        return number


def money_field(low: Decimal, high: Decimal, **kwargs: Any) -> PlainDecimal:
    """An amount in yuan: plain digits, at most two decimals, between `low` and `high`."""
    return PlainDecimal(message=Msg("Enter an amount in yuan, in digits (such as 35.50)."),
                        validate=money_range(low, high), **kwargs)


def money_range(low: Decimal, high: Decimal) -> Callable[[Decimal], None]:
    """A validator for an amount in yuan."""

    def check(value: Decimal) -> None:
        if value < low or value > high:
            raise ValidationError(
                Msg("Enter an amount between %(low)s and %(high)s yuan.", low=low, high=high)
            )
        if value != value.quantize(Decimal("0.01")):
            raise ValidationError(Msg("Use at most two decimal places."))

    return check


DAY_FIELDS = ("poverty_start", "poverty_end", "coverage_start")  # the birth date has its own range


def _in_range(day: date | None) -> bool:
    """No day given, or one within domain.days' range."""
    if day is None:
        return True
    try:
        check_day(day)
    except DayOutOfRange:
        return False
    return True


class RegistrationSchema(FormSchema):
    """What the registration form (and any other caller) gives to register a patient."""

    family_name = fields.String(required=True, validate=required_text(50))
    given_name = fields.String(required=True, validate=required_text(50))
    gender = fields.String(required=True, validate=one_of(GENDERS))
    birth_date = fields.Date(required=True)
    resident_id = fields.String(load_default=None)
    phone = fields.String(load_default=None, validate=optional_text(20))
    district = fields.String(required=True, validate=required_text(100))
    township = fields.String(required=True, validate=required_text(100))
    village = fields.String(required=True, validate=required_text(100))
    address_line = fields.String(load_default=None, validate=optional_text(200))
    household_mode = fields.String(load_default="none", validate=one_of(HOUSEHOLD_MODES))
    household_code = fields.String(load_default=None, validate=optional_text(64))
    household_income = money_field(Decimal(0), MAX_INCOME, load_default=None)
    poverty_registered = fields.Boolean(load_default=False)
    poverty_start = fields.Date(load_default=None)
    poverty_end = fields.Date(load_default=None)
    coverage_basic = fields.Boolean(load_default=False)
    coverage_member_number = fields.String(load_default=None, validate=optional_text(64))
    coverage_start = fields.Date(load_default=None)

    @validates_schema(skip_on_field_errors=False, pass_original=True)  # every problem at once, not in rounds
    def _check(self, data: dict[str, Any], original: Any = None, **kwargs: Any) -> None:
        errors: dict[str, list[Msg]] = {}
        today = datetime.now(SHANGHAI).date()
        birth = data.get("birth_date")
        if birth is not None and (birth > today or birth < EARLIEST_DAY):
            errors.setdefault("birth_date", []).append(Msg("Enter a birth date between 1900 and today."))
        number = _text(data.get("resident_id"))
        if number:
            gender = data.get("gender") if data.get("gender") in ("male", "female") else None
            for problem in resident_id.validate(number, birth, gender):
                errors.setdefault("resident_id", []).append(
                    Msg(problem.en, fixed={"zh": problem.zh, "en": problem.en})
                )
        phone = _text(data.get("phone"))
        if phone and not (5 <= len(phone) <= 20 and all(c.isdigit() or c in "+- " for c in phone)):
            errors.setdefault("phone", []).append(Msg("Enter a telephone number (digits only)."))
        mode = data.get("household_mode", "none")
        if mode == "existing" and not _text(data.get("household_code")):
            errors.setdefault("household_code", []).append(Msg("Give the household number."))
        typed = original if isinstance(original, Mapping) else {}
        income_typed = bool(_text(typed.get("household_income")))  # typed but invalid: that error says it
        if mode == "new" and data.get("household_income") is None and not income_typed:
            errors.setdefault("household_income", []).append(Msg("Give the household's annual income."))
        # Days outside domain.days' range are refused as on every other form (year 1 or 9999 is a typo);
        # such a day gets that one error, not the comparisons below as well.
        outside = {name for name in DAY_FIELDS if not _in_range(data.get(name))}
        for name in sorted(outside):
            errors.setdefault(name, []).append(
                Msg("Enter a date between %(low)s and %(high)s.", low=EARLIEST_DAY.isoformat(),
                    high=LATEST_DAY.isoformat())
            )
        if data.get("poverty_registered"):
            start, end = data.get("poverty_start"), data.get("poverty_end")
            if start is None:
                errors.setdefault("poverty_start", []).append(Msg("Give the date of poverty registration."))
            elif start > today and "poverty_start" not in outside:
                errors.setdefault("poverty_start", []).append(Msg("The date cannot be in the future."))
            if start is not None and end is not None and end < start and not outside:
                errors.setdefault("poverty_end", []).append(Msg("The end cannot be before the start."))
        if data.get("coverage_basic"):
            start = data.get("coverage_start")
            if start is None:
                errors.setdefault("coverage_start", []).append(Msg("Give the start of the insurance cover."))
            elif birth is not None and start < birth and "coverage_start" not in outside:
                errors.setdefault("coverage_start", []).append(Msg("Cover cannot start before birth."))
        if errors:
            raise ValidationError(errors)


# ------------------------------------------------------------------------------ registration


@dataclass(frozen=True)
class Registered:
    """The outcome of a registration: the new patient and what was created with it."""

    patient_id: str
    coverage_id: str | None
    household_id: str | None


def _field_of(expression: str | None) -> str:
    """The form field a FHIR element path belongs to."""
    path = expression or ""
    for prefix, name in (
        ("Patient.identifier", "resident_id"),
        ("Patient.birthDate", "birth_date"),
        ("Patient.gender", "gender"),
        ("Patient.name", "family_name"),
        ("Patient.telecom", "phone"),
        ("Patient.address", "district"),
        ("Patient.extension", "poverty_start"),
        ("Coverage.subscriberId", "coverage_member_number"),
        ("Coverage", "coverage_start"),
        ("Group", "household_income"),
    ):
        if path.startswith(prefix):
            return name
    return "_schema"


# What a duplicate business key means on the form (the API's diagnostics are for integrators).
DUPLICATES = {
    "resident_id": Msg("A patient with this resident identity number is already registered."),
    "coverage_member_number": Msg("Another patient has this insurance number."),
}


def as_form_errors(exc: DomainError) -> ValidationError:
    """A domain refusal (422, 409) as field errors, so the form shows it beside the field."""
    errors: dict[str, list[Msg]] = {}
    for problem in exc.problems:
        name = _field_of(problem.expression)
        message = DUPLICATES.get(name) if problem.code == "duplicate" else None
        errors.setdefault(name, []).append(Msg(message or problem.message))
    return ValidationError(errors)


def _insurer_for(session: Session, district: str) -> Organization | None:
    """The medical insurance bureau of the county (any insurer when the county has none)."""
    insurers = list(
        session.scalars(select(Organization).where(Organization.kind == "insurer").order_by(Organization.id))
    )
    local = [o for o in insurers if (o.district or "").strip() == district.strip()]
    found = local or insurers
    return found[0] if found else None


def patient_resource(values: Mapping[str, Any], clinic_id: str | None) -> dict[str, Any]:
    """The FHIR Patient of validated registration values."""
    family, given = values["family_name"].strip(), values["given_name"].strip()
    body: dict[str, Any] = {"resourceType": "Patient"}
    if values.get("poverty_registered"):
        period = {"start": values["poverty_start"].isoformat()}
        if values.get("poverty_end"):
            period["end"] = values["poverty_end"].isoformat()
        body["extension"] = [{"url": codes.POVERTY_REGISTRATION_URL, "valuePeriod": period}]
    number = _text(values.get("resident_id"))
    if number:
        body["identifier"] = [{"system": codes.RESIDENT_ID_SYSTEM, "value": resident_id.normalise(number)}]
    body["active"] = True
    body["name"] = [{"use": "official", "text": family + given, "family": family, "given": [given]}]
    phone = _text(values.get("phone"))
    if phone:
        body["telecom"] = [{"system": "phone", "value": phone, "use": "mobile"}]
    body["gender"] = values["gender"]
    body["birthDate"] = values["birth_date"].isoformat()
    lines = [values["township"].strip(), values["village"].strip()]
    if _text(values.get("address_line")):
        lines.append(_text(values.get("address_line")))
    body["address"] = [
        {"use": "home", "country": "CN", "line": lines, "district": values["district"].strip()}
    ]
    if clinic_id:
        body["generalPractitioner"] = [{"reference": f"Organization/{clinic_id}"}]
    return body


def register_patient(session: Session, actor: Actor, data: Mapping[str, Any]) -> Registered:
    """Register a patient with household, poverty registration and basic insurance; one unit of work.

    Raises marshmallow's ValidationError with field errors (Msg) for anything the form can fix.
    """
    values: dict[str, Any] = RegistrationSchema().load(data)
    number = _text(values.get("resident_id"))
    if number:
        taken = session.scalar(select(Patient.id).where(Patient.resident_id == resident_id.normalise(number)))
        if taken is not None:
            raise invalid(
                "resident_id", "A patient with this resident identity number is already registered."
            )
    household: Household | None = None
    if values["household_mode"] == "existing":
        code = _text(values.get("household_code"))
        household = session.scalar(select(Household).where(or_(Household.code == code, Household.id == code)))
        # A household the actor may not see (none of its members is in its care) answers as an unknown
        # number: the API's access condition on the Group decides, as a read of it would.
        if household is None or not visible_ids(session, actor, "Group", [household.id]):
            raise invalid("household_code", "No household has this number.")
    insurer = None
    if values.get("coverage_basic"):
        insurer = _insurer_for(session, values["district"])
        if insurer is None:
            raise invalid("coverage_basic", "No medical insurance bureau is registered.")
    try:
        patient = resources.create(session, actor, "Patient", patient_resource(values, actor.organization_id))
        patient_id = patient.stored.res_id
        coverage_id = None
        if insurer is not None:
            coverage: dict[str, Any] = {
                "resourceType": "Coverage",
                "status": "active",
                "type": {"coding": [{"system": codes.COVERAGE_TYPE_SYSTEM, "code": "basic"}]},
                "beneficiary": {"reference": f"Patient/{patient_id}"},
                "period": {"start": values["coverage_start"].isoformat()},
                "payor": [{"reference": f"Organization/{insurer.id}"}],
            }
            if _text(values.get("coverage_member_number")):
                coverage["subscriberId"] = _text(values.get("coverage_member_number"))
            coverage_id = resources.create(session, actor, "Coverage", coverage).stored.res_id
        household_id = _join_household(session, actor, values, household, patient_id)
    except (Conflict, Unprocessable) as exc:
        raise as_form_errors(exc) from None
    return Registered(patient_id, coverage_id, household_id)


def _join_household(
    session: Session, actor: Actor, values: Mapping[str, Any], household: Household | None, patient_id: str
) -> str | None:
    """Add the patient to an existing household, or make a new one."""
    member = {"entity": {"reference": f"Patient/{patient_id}"}}
    if household is not None:
        group = resources.read(session, actor, "Group", household.id).as_dict()
        group["member"] = [*(group.get("member") or []), member]
        group["quantity"] = len(group["member"])
        resources.update(session, actor, "Group", household.id, group)
        return household.id
    if values["household_mode"] != "new":
        return None
    income = values["household_income"]
    group = {
        "resourceType": "Group",
        "extension": [
            {"url": INCOME_URL, "valueMoney": {"value": float(income), "currency": codes.CURRENCY}}
        ],
        "type": "person",
        "actual": True,
        "name": f"户 {values['family_name'].strip()}{values['given_name'].strip()}",
        "quantity": 1,
        "member": [member],
    }
    created = resources.create(session, actor, "Group", group)
    return created.stored.res_id


# ------------------------------------------------------------------------------ search, detail


@dataclass(frozen=True)
class PatientRow:
    """One line of a patient search."""

    id: str
    name: str
    gender: str
    birth_date: date | None
    resident_id: str | None
    household_code: str | None
    township: str | None
    village: str | None


def _mask(text: str) -> str:
    """Identity numbers are masked in the audit trail's query text."""
    return text[:6] + "*" * (len(text) - 6) if len(text) > 10 and text[:6].isdigit() else text


def search_patients(session: Session, actor: Actor, text: str, *, limit: int = 50) -> list[PatientRow]:
    """Patients the actor may see, by name, resident identity number, household number or phone."""
    query = text.strip()
    if not query:
        return []
    stmt = select(Patient, Household.code).outerjoin(Household, Household.id == Patient.household_id)
    if not actor.sees_everything:
        stmt = stmt.where(Patient.id.in_(visible_patients(actor)))
    upper = query.upper()
    if len(query) >= 4 and all(c.isdigit() or c == "X" for c in upper):
        stmt = stmt.where(
            or_(
                Patient.resident_id.startswith(upper, autoescape=True),
                Household.code.startswith(query, autoescape=True),
                Patient.phone == query,
                Household.id == query,
            )
        )
    else:
        stmt = stmt.where(
            or_(
                (Patient.family_name + Patient.given_name).startswith(query, autoescape=True),
                Patient.given_name.startswith(query, autoescape=True),
                Patient.id == query,
                Household.id == query,
            )
        )
    stmt = stmt.order_by(Patient.family_name, Patient.given_name, Patient.id).limit(limit)
    rows = session.execute(stmt).all()
    resources.audit(
        session, actor, action="E", interaction="search", entity_type="Patient", query=f"web q={_mask(query)}"
    )
    return [
        PatientRow(p.id, p.name, p.gender, p.birth_date, p.resident_id, code, p.township, p.village)
        for p, code in rows
    ]


@dataclass(frozen=True)
class CoverageLine:
    """An insurance enrolment as shown on the patient page."""

    id: str
    type: str
    status: str
    member_number: str | None
    start: date | None
    end: date | None


@dataclass(frozen=True)
class PatientRecord:
    """A patient's registration: demographics, household, poverty registration and insurance."""

    id: str
    name: str
    gender: str
    birth_date: date | None
    resident_id: str | None
    phone: str | None
    district: str | None
    address: str
    general_practitioner: str | None
    household_id: str | None
    household_code: str | None
    household_income: Decimal | None
    household_members: list[tuple[str, str]] = field(default_factory=list)  # those the actor may see
    hidden_members: int = 0  # the household's other members the actor may not see (counted, never named)
    poverty_periods: list[tuple[date, date | None]] = field(default_factory=list)
    registered_poor_today: bool = False
    coverages: list[CoverageLine] = field(default_factory=list)


def patient_record(session: Session, actor: Actor, patient_id: str) -> PatientRecord:
    """The patient's registration as the actor may see it (404 otherwise); the read is audited."""
    resources.read(session, actor, "Patient", patient_id)
    row = session.scalar(
        select(Patient)
        .where(Patient.id == patient_id)
        .options(selectinload(Patient.poverty_registrations), selectinload(Patient.household))
    )
    if row is None:  # a FHIR Patient without a registry row cannot happen; be safe
        raise Unprocessable(f"Patient/{patient_id} has no registry entry")
    gp = session.get(Organization, row.general_practitioner_id) if row.general_practitioner_id else None
    household = row.household
    everyone = sorted(household.members, key=lambda m: m.id) if household is not None else []
    # A member the actor may not see (DESIGN section 8) is counted but never named: the API's own
    # access condition decides, so the page shows exactly the members a read by id would answer.
    seen = visible_ids(session, actor, "Patient", [m.id for m in everyone])
    members = [(m.id, m.name) for m in everyone if m.id in seen]
    covers = session.scalars(select(Coverage).where(Coverage.patient_id == patient_id).order_by(Coverage.id))
    today = datetime.now(SHANGHAI).date()
    return PatientRecord(
        id=row.id,
        name=row.name,
        gender=row.gender,
        birth_date=row.birth_date,
        resident_id=row.resident_id,
        phone=row.phone,
        district=row.district,
        address="".join(x for x in (row.township, row.village, row.address_line) if x),
        general_practitioner=gp.name if gp else None,
        household_id=household.id if household else None,
        household_code=household.code if household else None,
        household_income=household.annual_income if household else None,
        household_members=members,
        hidden_members=len(everyone) - len(members),
        poverty_periods=[(r.start, r.end) for r in row.poverty_registrations],
        registered_poor_today=row.registered_poor_on(today),
        coverages=[
            CoverageLine(c.id, c.type, c.status, c.member_number, c.period_start, c.period_end)
            for c in covers
        ],
    )


@dataclass(frozen=True)
class ResidentIdCheck:
    """Live check of an identity number: problems in the asked language, what it encodes, duplicates."""

    valid: bool
    problems: list[str]
    birth_date: str | None
    gender: str | None
    registered: bool


def check_resident_id(
    session: Session,
    value: str,
    *,
    birth_date: date | None = None,
    gender: str | None = None,
    language: str = "en",
) -> ResidentIdCheck:
    """The same identity-number rules the API applies, for the registration form's live check."""
    problems = resident_id.validate(value, birth_date, gender if gender in ("male", "female") else None)
    encoded_birth = encoded_gender = None
    registered = False
    if not any(p.code in ("length", "characters", "legacy", "check-digit", "date") for p in problems):
        encoded_birth = resident_id.birth_date_of(value).isoformat()
        encoded_gender = resident_id.gender_of(value)
        number = resident_id.normalise(value)
        registered = session.scalar(select(Patient.id).where(Patient.resident_id == number)) is not None
    return ResidentIdCheck(
        valid=not problems and not registered,
        problems=resident_id.messages(problems, language),
        birth_date=encoded_birth,
        gender=encoded_gender,
        registered=registered,
    )


def clinic_defaults(session: Session, actor: Actor) -> dict[str, str]:
    """Defaults for a new registration at the actor's clinic: its county and township."""
    org = session.get(Organization, actor.organization_id or "")
    today = datetime.now(SHANGHAI).date().isoformat()
    return {
        "district": (org.district if org else "") or "",
        "township": (org.township if org else "") or "",
        "coverage_start": today,
        "household_mode": "none",
    }
