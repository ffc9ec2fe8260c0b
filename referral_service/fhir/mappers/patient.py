"""Patient <-> registry Patient (resident identity number, address, poverty registration)."""

from __future__ import annotations

from functools import cache
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, insert, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from ...domain import resident_id
from ...domain.actor import Actor
from ...domain.errors import Conflict, Problem
from ...domain.kept import Compiled, bound, compiled, kept_many, kept_rows
from ...domain.registry import Patient, PovertyRegistration
from ..codes import BASE
from .common import clip, fhir_date, identifier_value, period_bound, ref_id

RESIDENT_ID_SYSTEM = f"{BASE}/sid/resident-id"
POVERTY_URL = f"{BASE}/StructureDefinition/poverty-registration"


def _name(resource: dict[str, Any]) -> tuple[str, str]:
    names = resource.get("name") or []
    official = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    family = official.get("family") or ""
    given = "".join(g for g in official.get("given") or [] if isinstance(g, str))  # null: an extension
    if not family and not given and official.get("text"):
        text = official["text"]
        family, given = text[:1], text[1:]
    return family[:50], given[:50]


# Registry writes of a Patient, built once: a write through the API costs a few statements, not an
# ORM flush.
# The patient's own row and any holder of the identity number, in one look-up.
_KNOWN = select(Patient.id).where(
    or_(Patient.id == bindparam("pid"), Patient.resident_id == bindparam("number"))
)
_REGISTRY_COLUMNS = (
    "family_name", "given_name", "resident_id", "gender", "birth_date", "active", "phone", "district",
    "township", "village", "address_line", "general_practitioner_id",
)  # fmt: skip


def _columns(table: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """Each named column's value as a bound parameter of its name (and type)."""
    return {name: bindparam(name, type_=table.c[name].type) for name in names}


def _upsert(dialect_insert: Any) -> Any:
    """Insert the row, or update every registry column of an existing one (its creator stays)."""
    stmt = dialect_insert(Patient).values(
        _columns(Patient.__table__, ("id", "created_by_org_id", *_REGISTRY_COLUMNS))
    )
    return stmt.on_conflict_do_update(
        index_elements=[Patient.id], set_={c: getattr(stmt.excluded, c) for c in _REGISTRY_COLUMNS}
    )


_UPSERT = {"postgresql": _upsert(pg_insert), "sqlite": _upsert(sqlite_insert)}
_DROP_REGISTRATIONS = delete(PovertyRegistration).where(PovertyRegistration.patient_id == bindparam("pid"))
_ADD_REGISTRATION = insert(PovertyRegistration).values(
    _columns(PovertyRegistration.__table__, ("patient_id", "start", "end"))
)


def _registry_columns(resource: dict[str, Any], number: str | None) -> dict[str, Any]:
    family, given = _name(resource)
    phones = [t.get("value") for t in resource.get("telecom") or [] if t.get("system") == "phone"]
    address = (resource.get("address") or [{}])[0]
    lines = address.get("line") or []
    gps = [ref_id(g, "Organization") for g in resource.get("generalPractitioner") or []]
    return {
        "family_name": family,
        "given_name": given,
        "resident_id": number,
        "gender": resource.get("gender") or "unknown",
        "birth_date": fhir_date(resource.get("birthDate")),
        "active": resource.get("active", True) is not False,
        "phone": clip(phones[0], 32) if phones else None,
        "district": clip(address.get("district"), 100),
        "township": clip(lines[0], 100) if len(lines) > 0 else None,
        "village": clip(lines[1], 100) if len(lines) > 1 else None,
        "address_line": clip(lines[2], 200) if len(lines) > 2 else None,
        "general_practitioner_id": next((g for g in gps if g), None),
    }


def _registry_plan(
    session: Session, resource: dict[str, Any], actor: Actor
) -> tuple[dict[str, Any], bool, list[dict[str, Any]]]:
    """The registry row's values, whether a row may already hold registrations, and the poverty
    registrations; 409 when another patient holds the identity number."""
    pid = str(resource["id"])
    number = identifier_value(resource, RESIDENT_ID_SYSTEM)
    number = resident_id.normalise(number) if number else None
    session.flush()  # registry rows of this transaction still pending in the ORM go first
    connection = session.connection()
    registered = True  # unless the look-up below shows there is no row (and so no registrations) yet
    if number:
        known = {row.id for row in kept_rows(connection, _KNOWN, {"number": number, "pid": pid})}
        registered = pid in known
        other = next(iter(known - {pid}), None)
        if other is not None:
            raise Conflict(
                f"another patient (Patient/{other}) has this resident identity number",
                [
                    Problem(
                        "a patient with this resident identity number exists",
                        expression="Patient.identifier",
                        code="duplicate",
                    )
                ],
            )
    row = {"id": pid, "created_by_org_id": actor.organization_id, **_registry_columns(resource, number)}
    periods = [
        e.get("valuePeriod") or {} for e in resource.get("extension") or [] if e.get("url") == POVERTY_URL
    ]
    registrations = [
        {"patient_id": pid, "start": period_bound(p.get("start"), end=False),
         "end": period_bound(p.get("end"), end=True)}
        for p in periods
        if period_bound(p.get("start"), end=False)
    ]
    return row, registered, registrations


def _forget_loaded(session: Session, pid: str) -> None:
    loaded = session.identity_map.get(session.identity_key(Patient, pid)) if session.identity_map else None
    if loaded is not None:
        session.expire(loaded)  # changed behind the ORM's back


def to_domain(session: Session, resource: dict[str, Any], actor: Actor, is_create: bool) -> None:
    """Insert or update the registry row (one upsert either way); 409 when another patient holds the
    identity number."""
    row, registered, registrations = _registry_plan(session, resource, actor)
    connection = session.connection()
    kept_rows(connection, _UPSERT[connection.dialect.name], row)
    if registered:  # a new row has none to replace (they reference it)
        kept_rows(connection, _DROP_REGISTRATIONS, {"pid": row["id"]})
    if registrations:
        kept_many(connection, _ADD_REGISTRATION, registrations)
    _forget_loaded(session, row["id"])


def domain_statements(
    session: Session, resource: dict[str, Any], actor: Actor, is_create: bool
) -> list[tuple[str, dict[str, Any]]]:
    """PostgreSQL: the registry writes of `to_domain` as sub-statements for the resource's own write
    statement (`ResourceStore.write(also=...)`), after the same identity check (409)."""
    row, registered, registrations = _registry_plan(session, resource, actor)
    dialect = session.get_bind().dialect
    out = [bound(_upsert_statement(dialect), {f"reg_{k}": v for k, v in row.items()})]
    if registered:
        out.append(bound(_drop_statement(dialect), {"reg_pid": row["id"]}))
    if registrations:
        values = {
            f"preg{i}_{k}": v for i, registration in enumerate(registrations) for k, v in registration.items()
        }
        out.append(bound(_add_statement(dialect, len(registrations)), values))
    _forget_loaded(session, row["id"])
    return out


@cache
def _upsert_statement(dialect: Dialect) -> Compiled:
    table = cast(Table, Patient.__table__)
    stmt = pg_insert(table).values({c.name: bindparam(f"reg_{c.name}", type_=c.type) for c in table.columns
                                    if c.name in ("id", "created_by_org_id", *_REGISTRY_COLUMNS)})
    return compiled(stmt.on_conflict_do_update(
        index_elements=["id"], set_={c: getattr(stmt.excluded, c) for c in _REGISTRY_COLUMNS}
    ), dialect)


@cache
def _drop_statement(dialect: Dialect) -> Compiled:
    table = cast(Table, PovertyRegistration.__table__)
    return compiled(delete(table).where(table.c.patient_id == bindparam("reg_pid")), dialect)


@cache
def _add_statement(dialect: Dialect, rows: int) -> Compiled:
    table = cast(Table, PovertyRegistration.__table__)
    values = [
        {c: bindparam(f"preg{i}_{c}", type_=table.c[c].type) for c in ("patient_id", "start", "end")}
        for i in range(rows)
    ]
    return compiled(insert(table).values(values), dialect)


def on_delete(session: Session, patient_id: str) -> None:
    """A deleted Patient leaves the registry: its identity number is free for a corrected record."""
    row = session.get(Patient, patient_id)
    if row is not None:
        row.resident_id = None
        row.active = False
        session.flush()


def from_domain(row: Patient) -> dict[str, Any]:
    """The FHIR Patient of a registry row."""
    resource: dict[str, Any] = {"resourceType": "Patient", "id": row.id}
    extensions = []
    for reg in row.poverty_registrations:
        period = {"start": reg.start.isoformat()}
        if reg.end:
            period["end"] = reg.end.isoformat()
        extensions.append({"url": POVERTY_URL, "valuePeriod": period})
    if extensions:
        resource["extension"] = extensions
    if row.resident_id:
        resource["identifier"] = [{"system": RESIDENT_ID_SYSTEM, "value": row.resident_id}]
    resource["active"] = row.active
    resource["name"] = [
        {"use": "official", "text": row.name, "family": row.family_name, "given": [row.given_name]}
    ]
    if row.phone:
        resource["telecom"] = [{"system": "phone", "value": row.phone, "use": "mobile"}]
    resource["gender"] = row.gender
    if row.birth_date:
        resource["birthDate"] = row.birth_date.isoformat()
    address: dict[str, Any] = {"use": "home", "country": "CN"}
    lines = [x for x in (row.township, row.village, row.address_line) if x]
    if lines:
        address["line"] = lines
    if row.district:
        address["district"] = row.district
    resource["address"] = [address]
    if row.general_practitioner_id:
        resource["generalPractitioner"] = [{"reference": f"Organization/{row.general_practitioner_id}"}]
    return resource
