"""`POST /fhir/Claim/$submit` on PostgreSQL at 8 concurrent clients, against the bare-create baseline.

    .venv/bin/python bench/bench_submit.py [--patients 5000] [--seconds 20] [--clients 8]

A scratch database gets a small demo county (registry published as FHIR); the app and the bare
baseline (bench/baseline_app.py: json.loads + one INSERT) run under the same gunicorn settings
(2 workers x 4 threads). Each settlement is a 20-item inpatient claim of a different resident (so
the row locks of one person do not serialise the run). The same keep-alive client drives both
servers, one after the other, so the ratio compares like with like on this 2-core machine (the
client shares the cores). Target (issue 5): settlements/s >= 0.3 x baseline creates/s.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
import re
import statistics
import sys
import threading
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import bench_fhir as bf  # noqa: E402  (shared process and database helpers)

RESULTS = BENCH / "RESULTS.md"
SECTION = "Settlement $submit"


def claim_body(patient_id: str, coverage_id: str, n: int) -> bytes:
    """A 20-item inpatient claim at the county hospital (classes A, B, C mixed)."""
    rng = random.Random(n)
    items = []
    for i in range(20):
        cls = "ABBC"[i % 4] if i % 5 else "A"
        items.append(
            {
                "sequence": i + 1,
                "productOrService": {"text": f"item {i + 1}"},
                "category": {
                    "coding": [
                        {
                            "system": "http://referral-service.example/fhir/CodeSystem/charge-class",
                            "code": cls,
                        }
                    ]
                },
                "net": {"value": round(rng.uniform(50, 2500), 2), "currency": "CNY"},
            }
        )
    body = {
        "resourceType": "Claim",
        "status": "active",
        "use": "claim",
        "created": "2026-11-01",
        "identifier": [{"system": "http://his.qs-county-hospital.example/claim", "value": uuid.uuid4().hex}],
        "type": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "institutional"}
            ]
        },
        "patient": {"reference": f"Patient/{patient_id}"},
        "provider": {"reference": "Organization/qs-county-hospital"},
        "priority": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/processpriority", "code": "normal"}]
        },
        "billablePeriod": {"start": "2026-10-20", "end": "2026-11-01"},
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"reference": f"Coverage/{coverage_id}"}}],
        "item": items,
    }
    return json.dumps(body).encode()


def drive(
    port: int, path: str, bodies: list[bytes], headers: dict[str, str], clients: int, seconds: float,
    *, cycle: bool = False,
) -> dict[str, Any]:
    """`clients` threads, keep-alive connections, each posting the next body until time is up (or,
    unless `cycle`, until every body has been sent once)."""
    lock = threading.Lock()
    cursor = itertools.cycle(range(len(bodies))) if cycle else iter(range(len(bodies)))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    stop_at = time.monotonic() + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine: list[float] = []
        seen: dict[int, int] = {}
        while time.monotonic() < stop_at:
            with lock:
                index = next(cursor, None)
            if index is None:
                break
            started = time.perf_counter()
            conn.request("POST", path, body=bodies[index], headers=headers)
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - started)
            seen[response.status] = seen.get(response.status, 0) + 1
        conn.close()
        with lock:
            latencies.extend(mine)
            for k, v in seen.items():
                statuses[k] = statuses.get(k, 0) + v

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 2 else [0.0] * 99
    return {
        "requests": len(latencies),
        "per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(q[49] * 1000, 1),
        "p95_ms": round(q[94] * 1000, 1),
        "statuses": statuses,
        "seconds": round(elapsed, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--server", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    parser.add_argument("--no-results", action="store_true", help="do not rewrite bench/RESULTS.md")
    args = parser.parse_args()
    logs = BENCH / "out"
    logs.mkdir(exist_ok=True)
    with bf.scratch_postgres(args.server, keep=False) as (url, conninfo):
        bf.configure(url)
        from sqlalchemy import select

        from referral_service.domain.registry import Coverage
        from referral_service.extensions import database
        from referral_service.migrate import upgrade
        from referral_service.seed.demo_county import seed_demo
        from referral_service.seed.materialize import materialize

        upgrade(database.engine)
        seed_demo(database.engine, patients=args.patients)
        with database.unit_of_work() as session:
            materialize(session, ("Organization", "Patient", "Coverage"))
            people = list(
                session.execute(
                    select(Coverage.patient_id, Coverage.id)
                    .where(Coverage.period_start <= date(2026, 11, 1))
                    .order_by(Coverage.id)
                )
            )
        database.dispose()
        bodies = [claim_body(p, c, i) for i, (p, c) in enumerate(people)]
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "ENV": "production",
            "SECRET_KEY": "bench-" + "k" * 40,
            "LOG_LEVEL": "WARNING",
            "BASELINE_DSN": conninfo,
        }
        port, base_port = bf.free_port(), bf.free_port()
        app = bf.Server("app", bf.gunicorn_cmd("wsgi:app", port, 2, 4), env, ROOT, logs / "submit-app.log")
        baseline = bf.Server(
            "baseline",
            bf.gunicorn_cmd("baseline_app:app", base_port, 2, 4, chdir=BENCH),
            env,
            ROOT,
            logs / "submit-baseline.log",
        )
        try:
            app.wait_ready(f"http://127.0.0.1:{port}/health")
            baseline_ready = f"http://127.0.0.1:{base_port}/docs/0"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                status, _ = bf.http("GET", baseline_ready)
                if status == 404:
                    break
                time.sleep(0.3)
            token = bf.client_token(f"http://127.0.0.1:{port}", "county-his")
            fhir = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
            drive(port, "/fhir/Claim/$submit", bodies[:50], fhir, args.clients, 5)  # warm-up
            submit = drive(port, "/fhir/Claim/$submit", bodies[50:], fhir, args.clients, args.seconds)
            plain = {"Content-Type": "application/json"}
            drive(base_port, "/docs", bodies[:50], plain, args.clients, 3, cycle=True)
            # (the bare insert takes any body again, so it runs the whole time too)
            bare = drive(base_port, "/docs", bodies, plain, args.clients, args.seconds, cycle=True)
        finally:
            app.stop()
            baseline.stop()
    ratio = submit["per_s"] / bare["per_s"] if bare["per_s"] else 0.0
    machine = bf.machine_info()
    result = {
        "submit": submit,
        "baseline_create": bare,
        "ratio": round(ratio, 3),
        "machine": machine,
        "patients": args.patients,
        "clients": args.clients,
    }
    print(json.dumps(result, indent=2, default=str))
    verdict = "met" if ratio >= 0.3 else "missed"
    markdown = (
        f"## {SECTION}\n\n"
        f"`bench/bench_submit.py`, {machine.get('date_utc')}, {machine.get('nproc')} cores "
        f"({machine.get('cpu_model')}), PostgreSQL, app and baseline under gunicorn 2 workers x 4 threads, "
        f"{args.clients} keep-alive clients (Python, on the same cores), 20-item inpatient claims of "
        f"different residents, demo county of {args.patients} residents.\n\n"
        "| measure | per second | p50 ms | p95 ms | statuses |\n|---|---|---|---|---|\n"
        f"| `Claim/$submit` (settlements) | {submit['per_s']} | {submit['p50_ms']} | {submit['p95_ms']} | "
        f"{submit['statuses']} |\n"
        f"| bare create baseline | {bare['per_s']} | {bare['p50_ms']} | {bare['p95_ms']} | "
        f"{bare['statuses']} |\n\n"
        f"Ratio {ratio:.2f}x the bare create (target >= 0.3x: **{verdict}**). "
        f"Load average at start: {machine.get('loadavg_at_start')}.\n"
    )
    if not args.no_results:
        text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
        pattern = re.compile(rf"^## {re.escape(SECTION)}\s*$.*?(?=^## |\Z)", re.S | re.M)
        text = (
            pattern.sub(lambda _m: markdown + "\n", text, count=1)
            if pattern.search(text)
            else (text.rstrip() + "\n\n" + markdown)
        )
        RESULTS.write_text(text.rstrip() + "\n")
    return 0 if submit["statuses"].keys() <= {200} else 1


if __name__ == "__main__":
    sys.exit(main())
