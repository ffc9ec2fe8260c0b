"""Time `seed_demo` on a scratch database: elapsed seconds, rows per second, peak memory.

    .venv/bin/python bench/bench_seed.py --patients 1000000            # scratch PostgreSQL
    .venv/bin/python bench/bench_seed.py --patients 100000 --sqlite    # scratch SQLite file

The PostgreSQL server comes from --server (a libpq conninfo, default the local server as
postgres); a uniquely named database is created and dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from referral_service import create_app
from referral_service.extensions import database
from referral_service.migrate import upgrade
from referral_service.seed import seed_demo


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def scratch_database(server: str, sqlite: bool) -> Iterator[str]:
    """A SQLAlchemy URL of a new empty database, removed afterwards."""
    if sqlite:
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{folder}/bench.sqlite3"
        return
    name = f"bench_seed_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        info = admin.info
        try:
            yield f"postgresql+psycopg://{info.user}@{info.host}:{info.port}/{name}"
        finally:
            database.dispose()
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    """Run one load and print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=20181)
    parser.add_argument("--server", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    parser.add_argument("--sqlite", action="store_true", help="use a scratch SQLite file instead")
    args = parser.parse_args()

    with scratch_database(args.server, args.sqlite) as url:
        create_app({"DATABASE_URL": url, "ENV": "testing"})
        upgrade(database.engine)
        rss_before = peak_rss_mb()
        started = time.perf_counter()
        report = seed_demo(database.engine, patients=args.patients, seed=args.seed,
                           as_of=date(2026, 1, 1))
        elapsed = time.perf_counter() - started
        rows = sum(report.counts.values())
        print(json.dumps({
            "backend": "sqlite" if args.sqlite else "postgresql",
            "patients": args.patients,
            "rows": rows,
            "counts": dict(report.counts),
            "elapsed_s": round(elapsed, 1),
            "rows_per_s": round(rows / elapsed),
            "peak_rss_mb_before_seed": round(rss_before),
            "peak_rss_mb": round(peak_rss_mb()),
        }, indent=2))


if __name__ == "__main__":
    main()
