"""Benchmark: settlement CSV export against PostgreSQL COPY of the same columns; peak RSS; XLSX time.

Run: ``python bench/bench_exports.py [--steps 100000,1000000] [--xlsx-rows 1000000] [--repeat 3]``
(needs PostgreSQL on 127.0.0.1:5432 or ``BENCH_DATABASE_URL``; a scratch database is made and dropped).

Synthetic settlements (all of them in March 2026, 2% reversed a day later) are inserted with
``INSERT ... SELECT generate_series`` straight into the ledger tables. At each step the same export
(basic-insurance, March, all hospitals) is measured, each run in a fresh child process so its peak
RSS is its own: ``COPY (SELECT ...) TO STDOUT`` of the exporter's own query ("COPY": the same
columns, masked and neutralised by the database), the same COPY of the plain stored columns
("COPY raw", for reference), the CSV export (BOM, totals read from the stream, manifest with
SHA-256, export log) and the XLSX export (values through openpyxl write-only). COPY and CSV run
``--repeat`` times, interleaved, and the best time is kept (the machine may be shared). Targets:
CSV time <= 2x COPY; peak RSS flat from the smallest to the largest step.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ADMIN_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
PERIOD = (date(2026, 3, 1), date(2026, 3, 31))
FUND = "basic-insurance"
HOSPITALS, PATIENTS = 20, 200_000  # as written in the SQL below

INSERT_REFERENCE_DATA = """
INSERT INTO organization (id, name, district, facility_level, capabilities, active)
SELECT 'h' || g, '青山县第' || g || '医院', '青山县', 'county', '[]'::json, true
FROM generate_series(1, 20) g;
INSERT INTO patient (id, resident_id, family_name, given_name, gender, district, active)
SELECT 'p' || g, '620421' || lpad(g::text, 12, '0'),
       CASE WHEN g % 1000 = 0 THEN '=王' ELSE '王' END, '芳' || g, 'female', '青山县', true
FROM generate_series(1, 200000) g;
"""

# Components add up: B1 + B2 + B3 + B4 + P = T. Settled across March 2026 (Asia/Shanghai).
INSERT_SETTLEMENTS = """
INSERT INTO settlement (
    id, claim_id, claim_response_id, eob_id, provider_id, identifier_system, identifier_value,
    content_hash, patient_id, claim_type, facility_level, discharge_date, accumulator_year,
    registered_poor, referred, unreferred_out_of_county, policy_id, policy_version, total, eligible,
    basic_deductible, basic_insurance, critical_illness, medical_assistance, poverty_safety_net,
    class_b_self_pay, out_of_list, patient_pay, deductible_borne, ci_r1_added, trace, status, sequence,
    settled_at, settled_by, reversed_at, reversed_by)
SELECT md5(g::text), 'claim-' || g, 'cr-' || g, 'eob-' || g, 'h' || (g % 20 + 1), 'urn:his', g::text,
       md5(g::text) || md5(g::text), 'p' || (g % 200000 + 1), 'inpatient', 'county',
       date '2026-02-28' + (g % 31), 2026, g % 10 = 0, true, false, 'qingshan', '2018.1',
       b1 + b2 + b3 + b4 + p, b1 + b2 + b3 + b4 + p, 0, b1, b2, b3, b4, 0, 0, p, 0, 0, '[]'::json,
       CASE WHEN g % 50 = 0 THEN 'reversed' ELSE 'active' END, 1,
       at, 'bench', CASE WHEN g % 50 = 0 THEN at + interval '1 day' END, CASE WHEN g % 50 = 0 THEN 'bench' END
FROM (
    SELECT g,
           ((g::bigint * 7919) % 1000000)::numeric / 100 + 10 AS b1,
           CASE WHEN g % 3 = 0 THEN ((g::bigint * 104729) % 500000)::numeric / 100 ELSE 0 END AS b2,
           CASE WHEN g % 10 = 0 THEN ((g::bigint * 31) % 300000)::numeric / 100 ELSE 0 END AS b3,
           CASE WHEN g % 20 = 0 THEN ((g::bigint * 17) % 100000)::numeric / 100 ELSE 0 END AS b4,
           ((g::bigint * 13) % 200000)::numeric / 100 + 1 AS p,
           timestamptz '2026-02-28 16:00:00+00'
               + (g::bigint * 2654435761 % 2678000) * interval '1 second' AS at
    FROM generate_series(FIRST, LAST) g
) s;
"""


def _libpq(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _request() -> Any:
    from referral_service.exports.settlements import SettlementExportRequest

    return SettlementExportRequest(*PERIOD, fund=FUND)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


# ------------------------------------------------------------------------------- child processes


def child_copy(url: str, out: Path, plain: bool = False) -> dict[str, Any]:
    """COPY (the exporter's own query) TO STDOUT into a file; `plain`: without masking and neutralising."""
    import psycopg
    from sqlalchemy.dialects import postgresql

    from referral_service.exports import settlements

    if plain:  # the same columns as the database stores them, for reference
        settlements.neutralise_sql = lambda value: value
        settlements.mask_identity_sql = lambda value: value
    compiled = settlements.detail_query(_request(), "postgresql").compile(
        dialect=postgresql.psycopg.dialect(), compile_kwargs={"render_postcompile": True}
    )
    started = time.perf_counter()
    size = 0
    with psycopg.connect(_libpq(url)) as conn:
        sql = psycopg.ClientCursor(conn).mogrify(str(compiled), compiled.params)
        with conn.cursor() as cur, out.open("wb") as fh, cur.copy(
            f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER)"
        ) as copy:
            for block in copy:
                fh.write(block)
                size += len(block)
    return {"seconds": time.perf_counter() - started, "bytes": size, "rss_mb": _peak_rss_mb()}


def child_export(url: str, out: Path, fmt: str) -> dict[str, Any]:
    """The real export (streaming, masking, neutralising, totals, file and manifest)."""
    from referral_service.domain.db import Database
    from referral_service.domain.exports import Recipient
    from referral_service.exports.settlements import SettlementExportRequest, export_settlements

    database = Database()
    database.configure(url)
    request = SettlementExportRequest(*PERIOD, fund=FUND, formats=(fmt,))
    started = time.perf_counter()
    with database.unit_of_work() as session:
        result = export_settlements(session, Recipient("bench", "system", "insurer"), request, out)
    seconds = time.perf_counter() - started
    database.dispose()
    manifest = result.manifest
    return {"seconds": seconds, "rows": manifest["rows"], "bytes": manifest["files"][0]["bytes"],
            "total": manifest["totals"][FUND], "rss_mb": _peak_rss_mb()}


def run_child(kind: str, url: str, out: Path) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter and read its JSON line."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--url", url, "--out", str(out)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# ------------------------------------------------------------------------------------ the driver


def make_database() -> str:
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"rs_bench_exports_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_libpq(ADMIN_URL), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    with psycopg.connect(_libpq(ADMIN_URL), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def insert(url: str, first: int, last: int) -> float:
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(_libpq(url)) as conn:
        if first == 1:
            conn.execute(INSERT_REFERENCE_DATA)
        conn.execute(INSERT_SETTLEMENTS.replace("FIRST", str(int(first))).replace("LAST", str(int(last))))
        conn.commit()
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE settlement")
        conn.execute("VACUUM ANALYZE patient")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="100000,1000000", help="settlement counts to measure at")
    parser.add_argument("--xlsx-rows", type=int, default=1_000_000, help="largest step that also runs XLSX")
    parser.add_argument("--repeat", type=int, default=3, help="runs of COPY and CSV per step (best is kept)")
    parser.add_argument("--child")
    parser.add_argument("--url")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        out = Path(args.out)
        if args.child in ("copy", "copy-plain"):
            print(json.dumps(child_copy(args.url, out, plain=args.child == "copy-plain")))
        else:
            print(json.dumps(child_export(args.url, out, args.child)))
        return 0

    from referral_service.extensions import database
    from referral_service.migrate import upgrade

    steps = [int(s) for s in args.steps.split(",")]
    url = make_database()

    def stop(*_: Any) -> None:
        drop_database(url)
        sys.exit(1)

    signal.signal(signal.SIGTERM, stop)
    failed = False
    try:
        database.configure(url)
        upgrade(database.engine)
        database.dispose()
        done = 0
        print(f"settlement export benchmark, fund {FUND}, March 2026, PostgreSQL; {os.cpu_count()} CPUs; "
              f"best of {args.repeat} (interleaved), each run in a fresh process")
        print(f"{'settlements':>12} {'rows':>9} {'COPY raw':>9} {'COPY s':>7} {'CSV s':>7} {'CSV/COPY':>9} "
              f"{'COPY MB':>8} {'CSV MB':>7} {'XLSX s':>7} {'XLSX MB':>8}")
        csv_rss: list[float] = []
        ratios: list[float] = []
        with tempfile.TemporaryDirectory(prefix="bench_exports_") as tmp:
            for step in steps:
                seconds = insert(url, done + 1, step)
                print(f"  (inserted {step - done:,} settlements in {seconds:.1f} s)", flush=True)
                done = step
                folder = Path(tmp) / str(step)
                folder.mkdir()
                runs: dict[str, list[dict[str, Any]]] = {"copy-plain": [], "copy": [], "csv": []}
                for _ in range(args.repeat):
                    for kind, target in (("copy-plain", folder / "plain.csv"), ("copy", folder / "copy.csv"),
                                         ("csv", folder)):
                        runs[kind].append(run_child(kind, url, target))
                plain, copy, csv = (min(runs[k], key=lambda r: r["seconds"])
                                    for k in ("copy-plain", "copy", "csv"))
                xlsx = run_child("xlsx", url, folder) if step <= args.xlsx_rows else None
                ratio = csv["seconds"] / copy["seconds"]
                ratios.append(ratio)
                csv_rss.append(max(r["rss_mb"] for r in runs["csv"]))
                x_s = f"{xlsx['seconds']:7.1f}" if xlsx else f"{'-':>7}"
                x_mb = f"{xlsx['rss_mb']:8.0f}" if xlsx else f"{'-':>8}"
                print(f"{step:>12,} {csv['rows']:>9,} {plain['seconds']:9.2f} {copy['seconds']:7.2f} "
                      f"{csv['seconds']:7.2f} {ratio:9.2f} {copy['rss_mb']:8.0f} {csv_rss[-1]:7.0f} "
                      f"{x_s} {x_mb}", flush=True)
                for entry in folder.iterdir():
                    entry.unlink()
        growth = csv_rss[-1] - csv_rss[0]
        ok_time = ratios[-1] <= 2.0
        ok_rss = growth <= 0.1 * csv_rss[0] + 10
        verdict = "OK" if ok_time else "MISSED"
        print(f"target CSV export <= 2x COPY at {steps[-1]:,}: {ratios[-1]:.2f}x {verdict}")
        print(f"target peak RSS flat {steps[0]:,} -> {steps[-1]:,}: {csv_rss[0]:.0f} -> {csv_rss[-1]:.0f} MB "
              f"{'OK' if ok_rss else 'MISSED'}")
        failed = not (ok_time and ok_rss)
    finally:
        drop_database(url)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
