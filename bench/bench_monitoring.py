"""Benchmark the monitoring scans and indicators on a scratch PostgreSQL database.

    .venv/bin/python bench/bench_monitoring.py                       # 300,000 households
    .venv/bin/python bench/bench_monitoring.py --households 20000    # quicker

Generates (in SQL) households with 1-4 members, settlements for about one person in seven over
the last ~17 months (some reversed), and one to three fund payables per settlement, most paid
after 0-119 days. Then times: the poverty-risk scan (first run, raising alerts and FHIR Flags; a
re-run with nothing changed), the household summary, and the payment-delay indicators (paid
delays median/p90 for a month and a year, unpaid balances by age band). Prints JSON.
Target: the poverty-risk scan over 300,000 households in at most 60 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from referral_service import create_app
from referral_service.domain.ledger import Payable, Settlement
from referral_service.domain.monitoring import Alert
from referral_service.domain.registry import Household, Patient
from referral_service.extensions import database
from referral_service.migrate import upgrade
from referral_service.services import alerts, indicators

TARGET_SECONDS = 60
AS_OF = date(2025, 6, 30)


@contextmanager
def scratch_database(server: str) -> Iterator[str]:
    """A SQLAlchemy URL of a new empty PostgreSQL database, dropped afterwards."""
    name = f"bench_monitoring_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        info = admin.info
        try:
            yield f"postgresql+psycopg://{info.user}@{info.host}:{info.port}/{name}"
        finally:
            database.dispose()
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Deterministic pseudo-random numbers in SQL: hashtext of a key, made non-negative. The statements
# below are built from constants in this file only (no outside input), hence the S608 waivers.
def _h(expr: str, salt: str) -> str:
    return f"(abs(hashtext({expr} || '{salt}'))::bigint)"


GENERATE = [
    """INSERT INTO organization (id, name, facility_level, capabilities, district, township, active)
       SELECT 'h-' || g, 'hospital ' || g, 'county', '[]', '青山县', 'town-' || (g % 12), true
       FROM generate_series(1, 20) g""",
    f"""INSERT INTO household (id, annual_income, district, township)
        SELECT 'hh-' || g, (3000 + {_h("g::text", "inc")} % 60000)::numeric(16,2), '青山县',
               'town-' || (g % 12)
        FROM generate_series(1, :households) g""",  # noqa: S608
    """INSERT INTO patient (id, family_name, given_name, gender, district, township, household_id, active)
       SELECT h.id || '-' || m, '王', 'p' || m, CASE WHEN m % 2 = 0 THEN 'female' ELSE 'male' END,
              '青山县', h.township, h.id, true
       FROM household h CROSS JOIN LATERAL generate_series(1, 1 + (abs(hashtext(h.id)) % 4)) m""",
    f"""INSERT INTO settlement (id, claim_id, claim_response_id, eob_id, provider_id, identifier_system,
            identifier_value, content_hash, patient_id, household_id, claim_type, facility_level,
            discharge_date, accumulator_year, registered_poor, referred, unreferred_out_of_county,
            policy_id, policy_version, total, eligible, basic_deductible, basic_insurance, critical_illness,
            medical_assistance, poverty_safety_net, class_b_self_pay, out_of_list, patient_pay,
            deductible_borne, ci_r1_added, trace, status, sequence, settled_at, reversed_at)
        SELECT 's-' || p.id, 'c-' || p.id, 'cr-' || p.id, 'e-' || p.id,
               'h-' || (1 + {_h("p.id", "hos")} % 20),
               'urn:bench', p.id, 'x', p.id, p.household_id, 'inpatient', 'county',
               d.day, extract(year from d.day)::int, {_h("p.id", "poor")} % 4 = 0, true, false,
               'bench', '1', d.pay * 4, d.pay * 4, 0, d.pay * 2, d.pay, d.pay * 0, 0, 0, 0, d.pay, 0, 0,
               '[]', CASE WHEN {_h("p.id", "rev")} % 50 = 0 THEN 'reversed' ELSE 'active' END, 1,
               (d.day + interval '10 hours') AT TIME ZONE 'Asia/Shanghai',
               CASE WHEN {_h("p.id", "rev")} % 50 = 0
                    THEN (d.day + interval '20 days') AT TIME ZONE 'Asia/Shanghai' END
        FROM patient p
        CROSS JOIN LATERAL (SELECT (CAST(:as_of AS date) - ({_h("p.id", "day")} % 520)::int) AS day,
                                   (({_h("p.id", "pay")} % 2000000) / 100.0)::numeric(16,2) AS pay) d
        WHERE {_h("p.id", "sick")} % 7 = 0""",  # noqa: S608
    f"""INSERT INTO payable (settlement_id, fund, hospital_id, amount, created_at, status, paid_amount,
            paid_at)
        SELECT s.id, f.fund, s.provider_id, f.amount, s.settled_at,
               CASE WHEN {_h("s.id || f.fund", "paid")} % 4 = 0 THEN 'unpaid' ELSE 'paid' END,
               CASE WHEN {_h("s.id || f.fund", "paid")} % 4 = 0 THEN 0 ELSE f.amount END,
               CASE WHEN {_h("s.id || f.fund", "paid")} % 4 = 0 THEN NULL
                    ELSE s.settled_at
                         + make_interval(days => ({_h("s.id || f.fund", "delay")} % 120)::int) END
        FROM settlement s
        CROSS JOIN LATERAL (VALUES ('basic-insurance', s.basic_insurance),
                                   ('critical-illness', s.critical_illness)) f(fund, amount)
        WHERE s.status = 'active' AND f.amount > 0""",  # noqa: S608
    "ANALYZE",
]


def timed(work: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = work()
    return time.perf_counter() - started, value


def best_of(runs: int, work: Callable[[], Any]) -> dict[str, float]:
    times = [timed(work)[0] for _ in range(runs)]
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3)}


def main() -> None:
    """Generate the data, run the timings, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--households", type=int, default=300_000)
    parser.add_argument("--server", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each indicator query")
    args = parser.parse_args()

    with scratch_database(args.server) as url:
        create_app({"DATABASE_URL": url, "ENV": "testing"})
        upgrade(database.engine)
        load_s, _ = timed(lambda: _generate(args.households))
        with database.unit_of_work() as session:
            counts = {
                name: session.scalar(select(func.count()).select_from(model))
                for name, model in (
                    ("households", Household),
                    ("patients", Patient),
                    ("settlements", Settlement),
                    ("payables", Payable),
                )
            }

        def scan() -> alerts.ScanResult:
            with database.unit_of_work() as session:
                return alerts.scan_poverty_risk(session, AS_OF)

        first_s, first = timed(scan)
        again_s, again = timed(scan)
        with database.unit_of_work() as session:
            alert_count = session.scalar(select(func.count()).select_from(Alert))

        def indicator(work: Callable[[Any], Any]) -> Callable[[], Any]:
            def run() -> Any:
                with database.unit_of_work() as session:
                    return work(session)

            return run

        june = indicators.Period(date(2025, 6, 1), date(2025, 6, 30))
        year = indicators.Period(date(2024, 7, 1), date(2025, 6, 30))
        report = {
            "backend": "postgresql",
            "generated": counts,
            "generate_s": round(load_s, 1),
            "poverty_risk_scan": {
                "first_run_s": round(first_s, 2),
                "first_run": str(first),
                "rerun_s": round(again_s, 2),
                "rerun": str(again),
                "alerts": alert_count,
                "target_s": TARGET_SECONDS,
                "meets_target": first_s <= TARGET_SECONDS and again_s <= TARGET_SECONDS,
            },
            "household_summary": best_of(
                args.repeat, indicator(lambda s: indicators.household_summary(s, AS_OF))
            ),
            "paid_delays_month": best_of(args.repeat, indicator(lambda s: indicators.paid_delays(s, june))),
            "paid_delays_year": best_of(args.repeat, indicator(lambda s: indicators.paid_delays(s, year))),
            "unpaid_balances": best_of(
                args.repeat, indicator(lambda s: indicators.unpaid_balances(s, AS_OF))
            ),
            "payment_delay_scan": best_of(1, indicator(lambda s: alerts.scan_payment_delays(s, AS_OF))),
        }
        print(json.dumps(report, indent=2, ensure_ascii=False))


def _generate(households: int) -> None:
    with database.engine.begin() as conn:
        for statement in GENERATE:
            conn.execute(text(statement), {"households": households, "as_of": AS_OF})


if __name__ == "__main__":
    main()
