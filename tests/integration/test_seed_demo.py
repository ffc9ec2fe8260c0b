"""The demo county generator on a fresh SQLite file and a fresh PostgreSQL database."""

from __future__ import annotations

import os
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import Engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from referral_service import create_app
from referral_service.auth import passwords
from referral_service.auth.passwords import verify_secret
from referral_service.domain import resident_id
from referral_service.domain.accounts import ApiClient, User
from referral_service.domain.registry import (
    Coverage,
    Household,
    Organization,
    Patient,
    PovertyRegistration,
    Practitioner,
    PractitionerRole,
)
from referral_service.extensions import database
from referral_service.migrate import upgrade
from referral_service.seed import (
    DEMO_CLIENTS,
    DEMO_PASSWORD,
    DEMO_SECRET,
    DEMO_USERS,
    SeedReport,
    seed_demo,
)
from referral_service.seed.cli import register
from referral_service.seed.places import TOWNSHIPS
from referral_service.seed.population import POVERTY_LINE, Population

PATIENTS = 600
SEED = 20181
AS_OF = date(2025, 6, 1)

NAMED = {
    "qs-insurance-bureau": ("青山县医疗保障局", None, "insurer", []),
    "qs-health-commission": ("青山县卫生健康局", None, "health-commission", []),
    "qs-poverty-office": ("青山县乡村振兴局", None, "poverty-office", []),
    "qs-county-hospital": ("青山县人民医院", "county", None, ["general"]),
    "qs-mch-hospital": ("青山县妇幼保健院", "county", None, ["obstetrics", "paediatrics"]),
    "qs-tcm-hospital": ("青山县中医医院", "county", None, ["tcm"]),
    "yz-city-hospital": ("云州市人民医院", "city", None, None),
}


# -- databases ----------------------------------------------------------------------------------

def _pg_admin() -> dict[str, str | int | None]:
    """Connection settings of the PostgreSQL server (TEST_DATABASE_URL, else the local server)."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url and url.startswith("postgresql"):
        parsed = make_url(url)
        return {"host": parsed.host or "127.0.0.1", "port": parsed.port or 5432,
                "user": parsed.username or "postgres", "password": parsed.password,
                "dbname": parsed.database or "postgres"}
    return {"host": "127.0.0.1", "port": 5432, "user": "postgres", "password": None,
            "dbname": "postgres"}


def _pg_connect() -> psycopg.Connection:
    settings = {k: v for k, v in _pg_admin().items() if v is not None}
    return psycopg.connect(autocommit=True, connect_timeout=3, **settings)  # type: ignore[arg-type]


@contextmanager
def _fresh_postgres() -> Iterator[str]:
    """A uniquely named empty database, dropped afterwards; skips when the server is down."""
    try:
        admin = _pg_connect()
    except psycopg.OperationalError as exc:
        if os.environ.get("REQUIRE_POSTGRES") == "1":  # CI: the PostgreSQL half must run
            pytest.fail(f"PostgreSQL is required but unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    name = f"test_seed_{uuid.uuid4().hex[:12]}"
    settings = _pg_admin()
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            password = f":{settings['password']}" if settings["password"] else ""
            yield (f"postgresql+psycopg://{settings['user']}{password}@{settings['host']}:"
                   f"{settings['port']}/{name}")
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def _fresh_app(backend: str, folder: Path, migrate: bool = True) -> Iterator[tuple[Flask, Engine]]:
    """The app on a new empty database of the backend, migrated to head unless told otherwise."""
    with ExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite:///{folder / f'{uuid.uuid4().hex[:8]}.sqlite3'}"
        else:
            url = stack.enter_context(_fresh_postgres())
        app = create_app({"DATABASE_URL": url, "ENV": "testing"})
        engine = database.engine
        stack.callback(engine.dispose)
        if migrate:
            upgrade(engine)
        yield app, engine


@pytest.fixture(scope="module", autouse=True)
def _cheap_argon2() -> Iterator[None]:
    """Real argon2id hashes with tiny parameters: the demo hashes ten secrets per load."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(passwords, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
        yield


BACKENDS = [pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def seeded(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A fresh database holding the demo county (600 residents)."""
    with _fresh_app(backend, tmp_path_factory.mktemp("seed")) as (_, engine):
        report = seed_demo(engine, patients=PATIENTS, seed=SEED, as_of=AS_OF)
        assert not report.skipped
        assert report.counts["patient"] == PATIENTS
        yield engine


@pytest.fixture
def session(seeded: Engine) -> Iterator[Session]:
    with Session(seeded) as s:
        yield s


# -- organisations and staff --------------------------------------------------------------------

def test_named_organisations(session: Session) -> None:
    orgs = {o.id: o for o in session.scalars(select(Organization))}
    for org_id, (name, level, kind, capabilities) in NAMED.items():
        org = orgs[org_id]
        assert (org.name, org.facility_level, org.kind) == (name, level, kind)
        if capabilities is not None:
            assert org.capabilities == capabilities
        assert org.city == "云州市"
        assert org.district == ("云州市" if org_id == "yz-city-hospital" else "青山县")
    assert len({o.code for o in orgs.values()}) == len(orgs)


def test_townships_and_villages(session: Session) -> None:
    orgs = list(session.scalars(select(Organization)))
    townships = {o.id: o for o in orgs if o.facility_level == "township"}
    villages = [o for o in orgs if o.facility_level == "village"]
    assert sorted(townships) == [f"qs-th-{n:02d}" for n in range(1, 13)]
    assert sorted(v.id for v in villages) == [
        f"qs-vc-{t:02d}-{v:02d}" for t in range(1, 13) for v in range(1, 6)
    ]
    assert len({t.name for t in townships.values()}) == 12
    assert len({v.name for v in villages}) == 60
    for t in townships.values():
        assert t.parent_id == "qs-county-hospital"
        assert t.name == f"{t.township}卫生院"
        assert (t.district, t.city) == ("青山县", "云州市")
    for v in villages:
        parent = townships[v.parent_id or ""]
        assert v.id.startswith(parent.id.replace("qs-th-", "qs-vc-"))
        assert v.township == parent.township
        assert v.name.endswith("村卫生室")
        assert (v.district, v.city) == ("青山县", "云州市")
    assert len(orgs) == len(NAMED) + 12 + 60


def test_every_facility_has_staff(session: Session) -> None:
    facilities = set(session.scalars(
        select(Organization.id).where(Organization.facility_level.is_not(None))
    ))
    staffed = Counter(session.scalars(select(PractitionerRole.organization_id)))
    assert set(staffed) == facilities
    practitioners = list(session.scalars(select(Practitioner)))
    assert len(practitioners) == sum(staffed.values())
    assert all(p.family_name and p.given_name and p.gender in ("male", "female")
               for p in practitioners)


# -- households and residents -------------------------------------------------------------------

def _age_days(p: Patient) -> int:
    assert p.birth_date is not None
    return (AS_OF - p.birth_date).days


def test_households_and_residents(session: Session) -> None:
    households = {h.id: h for h in session.scalars(select(Household))}
    patients = list(session.scalars(select(Patient)))
    assert len(patients) == PATIENTS
    assert PATIENTS / 4 < len(households) < PATIENTS / 2.8
    sizes = Counter(p.household_id for p in patients)
    assert set(sizes) == set(households)
    assert set(sizes.values()) == {1, 2, 3, 4, 5, 6}
    village_names = {t: set(vs) for t, vs in TOWNSHIPS}
    centres = {o.township: o.id for o in session.scalars(
        select(Organization).where(Organization.facility_level == "township"))}
    for p in patients:
        household = households[p.household_id or ""]
        assert p.district == household.district == "青山县"
        assert (p.township, p.village) == (household.township, household.village)
        assert p.village in village_names[p.township or ""]
        assert p.general_practitioner_id == centres[p.township]
        assert p.gender in ("male", "female")
        assert p.family_name and p.given_name and p.phone and p.address_line
        assert 0 <= _age_days(p) < 100 * 366
    ages = [_age_days(p) for p in patients]
    assert any(a < 30 for a in ages), "a newborn"
    assert any(30 <= a < 91 for a in ages), "an infant under three months"
    assert any(a >= 80 * 366 for a in ages), "someone over 80"
    assert 0.1 < sum(a < 15 * 365 for a in ages) / len(ages) < 0.3
    assert 0.12 < sum(a >= 60 * 365 for a in ages) / len(ages) < 0.35


def test_resident_identity_numbers(session: Session) -> None:
    patients = list(session.scalars(select(Patient)))
    numbers = [p.resident_id for p in patients if p.resident_id is not None]
    assert len(numbers) == len(set(numbers))
    for p in patients:
        if _age_days(p) < 30:
            assert p.resident_id is None
        else:
            assert p.resident_id is not None
            assert resident_id.validate(p.resident_id, p.birth_date, p.gender) == []
    assert sum(n.startswith("620429") for n in numbers) / len(numbers) > 0.8


def test_poverty_registration_and_income(session: Session) -> None:
    households = {h.id: h for h in session.scalars(select(Household))}
    members: dict[str, list[Patient]] = defaultdict(list)
    for p in session.scalars(select(Patient)):
        members[p.household_id or ""].append(p)
    registrations: dict[str, list[PovertyRegistration]] = defaultdict(list)
    for r in session.scalars(select(PovertyRegistration)):
        registrations[r.patient_id].append(r)

    poor = {hid for hid, ps in members.items() if any(p.id in registrations for p in ps)}
    assert 0.09 <= len(poor) / len(households) <= 0.15
    ended = 0
    for hid, household in households.items():
        size = len(members[hid])
        assert household.annual_income == household.annual_income.quantize(Decimal("0.01"))
        if hid in poor:
            assert household.annual_income < POVERTY_LINE * size
            for p in members[hid]:
                (period,) = registrations[p.id]
                assert p.birth_date is not None
                assert period.start == p.birth_date or date(2016, 1, 1) <= period.start
                assert period.start <= max(date(2019, 12, 31), p.birth_date)
                assert period.end is None or period.start < period.end <= AS_OF
                ended += period.end is not None
        else:
            assert household.annual_income > POVERTY_LINE * size
    poor_members = sum(len(members[h]) for h in poor)
    assert ended < poor_members / 2, "most registrations are still open"


def test_every_resident_has_one_basic_coverage(session: Session) -> None:
    patients = {p.id: p for p in session.scalars(select(Patient))}
    coverages = list(session.scalars(select(Coverage)))
    assert Counter(c.patient_id for c in coverages) == Counter(dict.fromkeys(patients, 1))
    assert len({c.member_number for c in coverages}) == len(coverages)
    for c in coverages:
        birth = patients[c.patient_id].birth_date
        assert birth is not None
        assert (c.type, c.status, c.payor_id, c.period_end) == (
            "basic", "active", "qs-insurance-bureau", None)
        assert c.period_start == max(date(2018, 1, 1), birth)
        assert c.active_on(AS_OF)


def test_demo_accounts(session: Session) -> None:
    users = {u.username: u for u in session.scalars(select(User))}
    assert set(users) == {"clinic", "hospital", "insurer", "monitor", "admin"}
    for expected in DEMO_USERS:
        user = users[expected.username]
        assert (user.role, user.organization_id) == (expected.role, expected.organization_id)
        assert verify_secret(user.password_hash, "demo-password")
        assert not verify_secret(user.password_hash, "wrong-password")
    clients = {c.client_id: c for c in session.scalars(select(ApiClient))}
    assert set(clients) == {
        "county-his", "township-his", "township2-his", "insurance-office", "county-platform"}
    for demo in DEMO_CLIENTS:
        client = clients[demo.client_id]
        assert client.organization_id == demo.organization_id
        assert client.scopes == demo.scopes
        assert verify_secret(client.secret_hash, "demo-secret")
    assert clients["township-his"].organization_id != clients["township2-his"].organization_id
    assert clients["county-platform"].scope_set == {"system/*.cruds"}
    assert "system/Claim.crs" in clients["county-his"].scope_set
    assert "system/PaymentReconciliation.cruds" in clients["insurance-office"].scope_set
    assert (DEMO_PASSWORD, DEMO_SECRET) == ("demo-password", "demo-secret")


# -- idempotence, determinism -------------------------------------------------------------------

def test_second_run_is_skipped_and_changes_nothing(seeded: Engine) -> None:
    first = seed_demo(seeded, patients=PATIENTS, seed=SEED, as_of=AS_OF)
    second = seed_demo(seeded, patients=5, seed=SEED + 1)
    assert first.skipped and second.skipped
    assert first.counts == second.counts
    assert first.counts["patient"] == PATIENTS
    assert first.counts["organization"] == len(NAMED) + 72


def _rows(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    """Every generated row, ordered by id (surrogate ids and hashes left out)."""
    with Session(engine) as s:
        return {
            "patient": [tuple(getattr(p, c.key) for c in Patient.__table__.columns)
                        for p in s.scalars(select(Patient).order_by(Patient.id))],
            "household": [(h.id, h.code, h.annual_income, h.township, h.village)
                          for h in s.scalars(select(Household).order_by(Household.id))],
            "poverty": [(r.patient_id, r.start, r.end) for r in s.scalars(
                select(PovertyRegistration).order_by(PovertyRegistration.patient_id))],
            "coverage": [(c.id, c.patient_id, c.member_number, c.period_start)
                         for c in s.scalars(select(Coverage).order_by(Coverage.id))],
            "practitioner": [(p.id, p.family_name, p.given_name, p.license_number)
                             for p in s.scalars(select(Practitioner).order_by(Practitioner.id))],
        }


def test_same_seed_gives_identical_rows(seeded: Engine, backend: str, tmp_path: Path) -> None:
    expected = _rows(seeded)
    with _fresh_app(backend, tmp_path) as (_, engine):
        seed_demo(engine, patients=PATIENTS, seed=SEED, as_of=AS_OF, chunk_patients=97)
        assert _rows(engine) == expected


@pytest.mark.postgres
def test_sqlite_and_postgresql_hold_the_same_rows(tmp_path: Path) -> None:
    with _fresh_app("sqlite", tmp_path) as (_, engine):
        seed_demo(engine, patients=200, seed=7, as_of=AS_OF)
        on_sqlite = _rows(engine)
    with _fresh_app("postgresql", tmp_path) as (_, engine):
        seed_demo(engine, patients=200, seed=7, as_of=AS_OF)
        assert _rows(engine) == on_sqlite


def test_other_seed_gives_other_people() -> None:
    def first(seed: int) -> list[tuple[str, str, date]]:
        (household, *_) = Population(seed, AS_OF).households(10)
        return [(p.family_name, p.given_name, p.birth_date) for p in household.patients]

    assert first(1) == first(1)
    assert first(1) != first(2)


def test_population_stream_has_exactly_the_requested_size() -> None:
    for size in (0, 1, 7, 1000):
        households = list(Population(3, AS_OF).households(size))
        assert sum(len(h.patients) for h in households) == size


def test_progress_reports_every_patient(tmp_path: Path) -> None:
    calls: list[int] = []
    with _fresh_app("sqlite", tmp_path) as (_, engine):
        report = seed_demo(engine, patients=250, seed=1, progress=calls.append,
                           chunk_patients=100)
    assert sum(calls) == 250 and len(calls) == 3
    assert report.counts["coverage"] == 250


# -- command line -------------------------------------------------------------------------------

def _cli(app: Flask) -> FlaskCliRunner:
    if "seed-demo" not in app.cli.commands:  # until create_app registers it itself
        register(app)
    return app.test_cli_runner()


def test_cli_loads_once(tmp_path: Path) -> None:
    with _fresh_app("sqlite", tmp_path) as (app, engine):
        runner = _cli(app)
        first = runner.invoke(args=["seed-demo", "--patients", "40", "--seed", "3"])
        assert first.exit_code == 0, first.output
        assert "demo county loaded" in first.output
        assert "patient" in first.output
        again = runner.invoke(args=["seed-demo", "--patients", "40"])
        assert again.exit_code == 0, again.output
        assert "demo county already loaded" in again.output
        with Session(engine) as s:
            assert len(s.scalars(select(Patient.id)).all()) == 40
            # Publishing refreshed the planner's statistics: SQLite looks index matches up by key
            # instead of walking the whole resource table (what it did without them).
            analysed = set(s.scalars(text("SELECT DISTINCT tbl FROM sqlite_stat1")))
            assert {"fhir_resource", "fhir_idx_token", "patient"} <= analysed


def test_cli_needs_a_schema(tmp_path: Path) -> None:
    with _fresh_app("sqlite", tmp_path, migrate=False) as (app, _):
        result = _cli(app).invoke(args=["seed-demo"])
    assert result.exit_code != 0
    assert "flask db upgrade" in result.output


def test_cli_defaults_come_from_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, int] = {}

    def fake(engine: Engine, *, patients: int, seed: int,
             progress: Callable[[int], None] | None = None) -> SeedReport:
        seen.update(patients=patients, seed=seed)
        return SeedReport({"patient": patients}, 0.0, skipped=False)

    monkeypatch.setattr("referral_service.seed.cli.seed_demo", fake)
    with _fresh_app("sqlite", tmp_path) as (app, _):
        result = _cli(app).invoke(args=["seed-demo"])
    assert result.exit_code == 0, result.output
    assert seen == {"patients": 20000, "seed": 20181}


def test_newborns_and_infants_are_dated_from_the_reference_day() -> None:
    (first, second, *_) = Population(SEED, AS_OF).households(20)
    newborn = first.patients[2]
    assert newborn.resident_id is None
    assert AS_OF - timedelta(days=30) < newborn.birth_date <= AS_OF
    assert second.poor
