"""Load the fictional demo county 青山县 (organisations, staff, residents, accounts) in one go."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, Table, func, select, text
from sqlalchemy.orm import Session

from ..domain.accounts import ApiClient, User
from ..domain.registry import (
    Coverage,
    Household,
    Organization,
    Patient,
    PovertyRegistration,
    Practitioner,
    PractitionerRole,
)
from ..services.accounts import create_api_client, create_user
from . import names
from .accounts import DEMO_CLIENTS, DEMO_PASSWORD, DEMO_SECRET, DEMO_USERS
from .bulk import RowWriter
from .places import COUNTY_REGION_CODE, HEALTH_COMMISSION, OrgSpec, organizations, unified_credit_code
from .population import CoverageRow, HouseholdRow, PatientRow, Population, PovertyRow

DEFAULT_PATIENTS = 20_000
DEFAULT_SEED = 20181
CHUNK_PATIENTS = 10_000
LOADED_MARKER = HEALTH_COMMISSION  # present exactly when the demo county is loaded
LOCAL_ZONE = ZoneInfo("Asia/Shanghai")
_ADVISORY_LOCK = 6204_2901  # PostgreSQL: one seeding transaction at a time

TABLES: dict[str, Table] = {
    model.__tablename__: model.__table__  # type: ignore[misc]
    for model in (Organization, Practitioner, PractitionerRole, Household, Patient,
                  PovertyRegistration, Coverage, User, ApiClient)
}

# Staff per facility level: one role each (乡村医生 at village clinics).
STAFFING: dict[str, tuple[str, ...]] = {
    "city": ("doctor", "doctor", "nurse"),
    "county": ("doctor", "doctor", "doctor", "nurse", "clerk"),
    "township": ("doctor", "doctor", "nurse"),
    "village": ("doctor",),
}

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class SeedReport:
    """What `seed_demo` did: rows per table (all rows present when skipped), seconds, skipped."""

    counts: Mapping[str, int]
    elapsed: float
    skipped: bool


class PractitionerRow(NamedTuple):
    """A row of `practitioner`."""

    id: str
    license_number: str
    family_name: str
    given_name: str
    gender: str
    phone: str


class RoleRow(NamedTuple):
    """A row of `practitioner_role`."""

    id: str
    practitioner_id: str
    organization_id: str
    role: str
    active: bool


def local_today() -> date:
    """Today in the county (China Standard Time)."""
    return datetime.now(LOCAL_ZONE).date()


def is_demo_loaded(engine: Engine) -> bool:
    """Whether the demo county is already in the database."""
    with Session(engine) as session:
        return _loaded(session)


# The same `seed`, `patients` and `as_of` (default: today in China) give the same rows: ages are
# counted back from `as_of`, so newborns stay newborns whenever the demo is loaded. `progress`
# receives the number of patients written since its previous call (click's `bar.update`).
def seed_demo(
    engine: Engine,
    *,
    patients: int = DEFAULT_PATIENTS,
    seed: int = DEFAULT_SEED,
    progress: Progress | None = None,
    as_of: date | None = None,
    chunk_patients: int = CHUNK_PATIENTS,
) -> SeedReport:
    """Load the demo county once, in one transaction; a second call changes nothing (skipped)."""
    if patients < 0:
        raise ValueError("patients must not be negative")
    started = time.perf_counter()
    with Session(engine) as session, session.begin():
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK})
        if _loaded(session):
            return SeedReport(_counts(session), time.perf_counter() - started, skipped=True)
        writer = RowWriter(session.connection())
        counts = dict.fromkeys(TABLES, 0)
        counts["organization"] = _write_organizations(session)
        counts["practitioner"], counts["practitioner_role"] = _write_staff(writer, seed)
        counts["app_user"], counts["api_client"] = _create_accounts(session)
        population = Population(seed, as_of or local_today())
        counts.update(_write_population(writer, population, patients, chunk_patients, progress))
        if writer.uses_copy:  # fresh statistics so the first queries get sensible plans
            session.execute(text("ANALYZE household, patient, poverty_registration, coverage"))
    return SeedReport(counts, time.perf_counter() - started, skipped=False)


def _loaded(session: Session) -> bool:
    """Whether the marker organisation exists."""
    return session.scalar(select(Organization.id).where(Organization.id == LOADED_MARKER)) is not None


def _counts(session: Session) -> dict[str, int]:
    """Rows per demo table."""
    return {
        name: session.scalar(select(func.count()).select_from(table)) or 0
        for name, table in TABLES.items()
    }


def _org_row(spec: OrgSpec, serial: int) -> dict[str, Any]:
    """The `organization` row of a spec (city-level region code for the city hospital)."""
    region = COUNTY_REGION_CODE if spec.district != spec.city else COUNTY_REGION_CODE[:4] + "00"
    return {
        "id": spec.id, "code": unified_credit_code(region, serial), "name": spec.name,
        "facility_level": spec.facility_level, "kind": spec.kind,
        "capabilities": list(spec.capabilities), "district": spec.district, "city": spec.city,
        "township": spec.township, "parent_id": spec.parent_id, "active": True,
    }


def _write_organizations(session: Session) -> int:
    """Insert every organisation (few rows; the JSON column needs SQLAlchemy's types)."""
    rows = [_org_row(spec, serial) for serial, spec in enumerate(organizations(), start=1)]
    session.execute(TABLES["organization"].insert(), rows)
    return len(rows)


def _write_staff(writer: RowWriter, seed: int) -> tuple[int, int]:
    """A few practitioners at each facility (names independent of the number of patients)."""
    rng = random.Random(f"{seed}/staff")
    practitioners: list[PractitionerRow] = []
    roles: list[RoleRow] = []
    for spec in organizations():
        for role in STAFFING.get(spec.facility_level or "", ()):
            number = len(practitioners) + 1
            if spec.facility_level == "village":  # 乡村医生: mostly older men
                male, born = rng.random() < 0.8, rng.randint(1958, 1982)
            else:
                male, born = rng.random() < (0.1 if role == "nurse" else 0.6), rng.randint(1965, 1998)
            gender = "male" if male else "female"
            practitioners.append(PractitionerRow(
                id=f"pr-{number:04d}", license_number=f"110{COUNTY_REGION_CODE}{number:06d}",
                family_name=names.surname(rng), given_name=names.given_name(rng, gender, born),
                gender=gender, phone=f"139{rng.randrange(10**8):08d}",
            ))
            roles.append(RoleRow(f"prr-{number:04d}", f"pr-{number:04d}", spec.id, role, True))
    writer.write(TABLES["practitioner"], practitioners)
    writer.write(TABLES["practitioner_role"], roles)
    return len(practitioners), len(roles)


def _create_accounts(session: Session) -> tuple[int, int]:
    """The demo web users and API clients (argon2-hashed, so about a tenth of a second each)."""
    for user in DEMO_USERS:
        create_user(
            session, username=user.username, password=DEMO_PASSWORD, role=user.role,
            organization_id=user.organization_id, display_name=user.display_name,
        )
    for client in DEMO_CLIENTS:
        create_api_client(
            session, client_id=client.client_id, organization_id=client.organization_id,
            scopes=client.scopes, name=client.name, secret=DEMO_SECRET,
        )
    session.flush()
    return len(DEMO_USERS), len(DEMO_CLIENTS)


def _write_population(
    writer: RowWriter, population: Population, patients: int, chunk_patients: int,
    progress: Progress | None,
) -> dict[str, int]:
    """Stream households to the database in chunks of about `chunk_patients` residents."""
    counts = {"household": 0, "patient": 0, "poverty_registration": 0, "coverage": 0}
    households: list[HouseholdRow] = []
    residents: list[PatientRow] = []
    poverty: list[PovertyRow] = []
    coverage: list[CoverageRow] = []

    def flush() -> None:
        """Write the buffered chunk, parents before children, then report progress."""
        for name, rows in (("household", households), ("patient", residents),
                           ("poverty_registration", poverty), ("coverage", coverage)):
            writer.write(TABLES[name], rows)
            counts[name] += len(rows)
        if progress is not None and residents:
            progress(len(residents))
        for rows in (households, residents, poverty, coverage):
            rows.clear()

    for household in population.households(patients):
        households.append(household.household)
        residents.extend(household.patients)
        poverty.extend(household.poverty)
        coverage.extend(household.coverage)
        if len(residents) >= chunk_patients:
            flush()
    flush()
    return counts
