"""CPU per request, in-process: one FHIR interaction driven straight through the WSGI app.

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1/perf \
        .venv/bin/python bench/profile_request.py read search create-patient create-encounter
    .venv/bin/python bench/profile_request.py read --profile      # plus the top functions (cProfile)

The database must hold a loaded demo county (`flask seed-demo`). Each case runs once to check its
status, warms up, then runs `--count` times on one thread; the figures are CPU microseconds per
request of this process (time.process_time: the app, SQLAlchemy and the driver, not the database
server) and wall microseconds (which include the database round trips). The app runs as under
gunicorn in the benchmark (ENV=production: JSON access log, metrics, rate limiter); the log lines
go to /dev/null. No HTTP server and no socket to the client: this measures what the app adds.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import io
import logging
import os
import pstats
import random
import sys
import time
from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from werkzeug.test import EnvironBuilder  # noqa: E402

import bench.bench_fhir as fhir_bench  # noqa: E402

Case = Callable[[], tuple[str, str, bytes | None]]


def _token(app: Any, client_id: str) -> str:
    basic = base64.b64encode(f"{client_id}:{fhir_bench.DEMO_SECRET}".encode()).decode()
    answer = app.test_client().post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers={"Authorization": f"Basic {basic}"}
    )
    return str(answer.get_json()["access_token"])


def _cases(url: str) -> dict[str, tuple[str, Case]]:
    """Each case: the client it runs as, and a maker of (method, path, body) per request."""
    from referral_service.domain import resident_id

    catchment = fhir_bench.sample_residents(url, 200, fhir_bench.CLINIC)
    anyone = fhir_bench.sample_residents(url, 200, None)
    numbers = iter(range(10**9))
    template = fhir_bench.patient_template()

    def new_patient() -> tuple[str, str, bytes]:
        n = next(numbers)
        born = date(1960 + n % 40, 1 + n % 12, 1 + n % 28)
        gender = random.choice(("male", "female"))
        number = resident_id.generate("980101", born, gender, random.randint(0, 499))
        body = (
            template.replace(b"@RID@", number.encode())
            .replace(b"@BIRTH@", born.isoformat().encode())
            .replace(b"@GENDER@", gender.encode())
        )
        return "POST", "/fhir/Patient", body

    people = iter(_covered(url))

    def submit() -> tuple[str, str, bytes]:
        from bench.bench_submit import claim_body

        patient, coverage = next(people)
        return "POST", "/fhir/Claim/$submit", claim_body(patient, coverage, random.randint(0, 10**6))

    return {
        "submit": ("county-his", submit),
        "read": ("township-his", lambda: ("GET", f"/fhir/Patient/{random.choice(catchment).id}", None)),
        "read-platform": (
            "county-platform", lambda: ("GET", f"/fhir/Patient/{random.choice(anyone).id}", None)),
        "search": (
            "township-his", lambda: ("GET", fhir_bench.identifier_query(random.choice(catchment)), None)),
        "search-platform": (
            "county-platform", lambda: ("GET", fhir_bench.identifier_query(random.choice(anyone)), None)),
        "create-patient": ("township-his", new_patient),
        "create-encounter": (
            "township-his",
            lambda: ("POST", "/fhir/Encounter",
                     fhir_bench.dumps(fhir_bench.encounter(random.choice(catchment).id))),
        ),
        "bundle": (
            "township-his",
            lambda: ("POST", "/fhir", fhir_bench.dumps(fhir_bench.visit_bundle(random.choice(catchment)))),
        ),
    }


def _covered(url: str) -> list[tuple[str, str]]:
    """(patient, coverage) pairs in force on the claims' discharge date, each used once."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT patient_id, id FROM coverage WHERE period_start <= '2026-11-01' ORDER BY random()"
            )).all()
    finally:
        engine.dispose()
    return [(r[0], r[1]) for r in rows]


def _environs(case: Case, bearer: str, n: int) -> Iterable[dict[str, Any]]:
    for _ in range(n):
        method, path, body = case()
        path, _, query = path.partition("?")
        builder = EnvironBuilder(
            path=path, query_string=query, method=method, data=body,
            headers={"Authorization": f"Bearer {bearer}", "Content-Type": fhir_bench.FHIR_JSON,
                     "Accept": fhir_bench.FHIR_JSON},
        )
        yield builder.get_environ()


def _call(app: Any, environ: dict[str, Any]) -> str:
    status: list[str] = []

    def start_response(s: str, headers: Any, exc_info: Any = None) -> Any:
        status.append(s)
        return lambda data: None

    answer = app(environ, start_response)
    try:
        for _chunk in answer:
            pass
    finally:
        if hasattr(answer, "close"):
            answer.close()
    return status[0]


def _statements_of(app: Any, environ: dict[str, Any]) -> list[str]:
    """The SQL statements one request sends (their first word; SHOW_SQL=1: their first six)."""
    from sqlalchemy import event

    from referral_service.extensions import database

    statements: list[str] = []
    words = 6 if os.environ.get("SHOW_SQL") else 1

    def count(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        statements.append(" ".join(statement.split()[:words]))

    for engine in database.engines:
        event.listen(engine, "before_cursor_execute", count)
    try:
        _call(app, environ)
    finally:
        for engine in database.engines:
            event.remove(engine, "before_cursor_execute", count)
    return statements


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--profile", action="store_true", help="print the top functions (cProfile)")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--dump", metavar="FILE", help="with --profile: also write the raw stats (pstats)")
    args = parser.parse_args()

    url = os.environ.get("DATABASE_URL")
    if not url:
        print("set DATABASE_URL to a database holding the demo county", file=sys.stderr)
        return 2
    os.environ.setdefault("SECRET_KEY", "profile-request")
    os.environ["ENV"] = "production"
    from referral_service import create_app

    app = create_app({"DATABASE_URL": url, "ENV": "production", "SECRET_KEY": os.environ["SECRET_KEY"]})
    for handler in logging.getLogger().handlers:
        handler.stream = open(os.devnull, "w")  # type: ignore[attr-defined]  # noqa: SIM115
    cases = _cases(url)
    tokens: dict[str, str] = {}
    for name in args.cases:
        client_id, case = cases[name]
        bearer = tokens.setdefault(client_id, _token(app, client_id))
        first = _call(app, next(iter(_environs(case, bearer, 1))))
        if not first.startswith(("200", "201")):
            print(f"{name}: {first}", file=sys.stderr)
            return 1
        for environ in _environs(case, bearer, min(200, args.count)):
            _call(app, environ)
        environs = list(_environs(case, bearer, args.count))
        statements = _statements_of(app, next(iter(_environs(case, bearer, 1))))
        profiler = cProfile.Profile(time.process_time) if args.profile else None
        wall, cpu = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        statuses = [_call(app, e)[:3] for e in environs]
        if profiler:
            profiler.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        ok = sum(s in ("200", "201") for s in statuses)
        print(f"{name:18} {1e6 * cpu / len(environs):8.0f} us CPU  {1e6 * wall / len(environs):8.0f} us wall"
              f"  ({ok}/{len(environs)} ok{'; profiled, slower' if profiler else ''}; "
              f"statements: {' '.join(statements)})")
        if profiler:
            out = io.StringIO()
            if args.dump:
                profiler.dump_stats(args.dump)
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("tottime").print_stats(args.top)
            stats.sort_stats("cumulative").print_stats(args.top)
            print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
