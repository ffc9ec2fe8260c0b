"""Run every benchmark in bench/ in turn and print a summary (`make bench` calls this).

    .venv/bin/python bench/run_all.py            # rules, settlement, seed (100k), any other bench_*.py,
                                                 # then the FHIR API (1M patients, ~25 min)
    .venv/bin/python bench/run_all.py --quick    # FHIR API on 100k patients, 10 s a load
    .venv/bin/python bench/run_all.py --full     # seed with 1M patients too
    .venv/bin/python bench/run_all.py --only fhir --only seed

Each script that exists is run as a child process with the same interpreter, its output streamed
through; a script that fails does not stop the others, but makes the exit status 1. The summary
lists each script's exit status, its time, and the lines of its output that name a target.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def plan(args: argparse.Namespace) -> list[tuple[str, list[str], int]]:
    """(name, arguments, time limit in seconds) per benchmark, in order.

    The known ones get their arguments here; any other bench/bench_*.py runs with its defaults
    (30 min at most), before the FHIR API benchmark, which is the longest.
    """
    seed_patients = "1000000" if args.full else "100000"
    fhir: list[str] = ["--patients", "100000", "--seconds", "10"] if args.quick else []
    known = [
        ("rules", [], 600),
        ("settlement", [], 600),
        ("seed", ["--patients", seed_patients], 1800),
        ("exports", ["--steps", "10000,100000", "--xlsx-rows", "100000"] if args.quick else [], 3600),
    ]
    names = {name for name, _, _ in known} | {"fhir"}
    found = (p.stem.removeprefix("bench_") for p in BENCH.glob("bench_*.py"))
    others = sorted(name for name in found if name not in names)
    return [*known, *((name, [], 1800) for name in others), ("fhir", fhir, 5400)]


def run(name: str, extra: list[str], limit: int) -> tuple[int | None, float, list[str]]:
    """Run bench_<name>.py, echoing its output; (exit status or None on time-out, seconds, target lines)."""
    script = BENCH / f"bench_{name}.py"
    started = time.monotonic()
    lines: list[str] = []
    print(f"\n===== bench_{name}.py {' '.join(extra)}".rstrip(), flush=True)
    with subprocess.Popen(
        [sys.executable, str(script), *extra], stdout=subprocess.PIPE, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        # SIGTERM at the limit: the scripts stop their servers and drop their databases on it.
        watchdog = threading.Timer(limit, proc.terminate)
        watchdog.start()
        try:
            for line in proc.stdout:
                print(line, end="", flush=True)
                if line.strip().lower().startswith("target"):
                    lines.append(line.strip())
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        finally:
            watchdog.cancel()
        timed_out = time.monotonic() - started >= limit
        status: int | None = None if timed_out else proc.returncode
    return status, time.monotonic() - started, lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="FHIR API benchmark on 100k patients, 10 s loads"
    )
    parser.add_argument("--full", action="store_true", help="seed benchmark with 1,000,000 patients")
    parser.add_argument("--only", action="append", help="run only these, e.g. --only fhir (repeatable)")
    args = parser.parse_args()

    summary: list[tuple[str, str, float, list[str]]] = []
    for name, extra, limit in plan(args):
        if args.only and name not in args.only:
            continue
        if not (BENCH / f"bench_{name}.py").exists():
            summary.append((name, "absent", 0.0, []))
            continue
        status, seconds, lines = run(name, extra, limit)
        shown = "timed out" if status is None else ("ok" if status == 0 else f"exit {status}")
        summary.append((name, shown, seconds, lines))

    print("\n===== summary")
    for name, shown, seconds, lines in summary:
        print(f"bench_{name}.py: {shown} ({seconds:.0f} s)")
        for line in lines[:12]:
            print(f"    {line[:200]}")
    return 0 if all(shown in ("ok", "absent") for _, shown, _, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
