"""Benchmark the FHIR API over HTTP: our server under gunicorn against a bare baseline and a peer server.

    .venv/bin/python bench/bench_fhir.py                      # 1,000,000 patients, 20 s a measurement
    .venv/bin/python bench/bench_fhir.py --patients 50000 --seconds 5 --no-results   # a quick look

One run does, on scratch databases it creates and drops:

1. PostgreSQL: loads the demo county (`seed_demo`, --patients residents) and publishes what the API
   needs (Organization and Patient) as FHIR resources.
2. Starts our app (`wsgi:app`) and the bare baseline (`bench/baseline_app.py`: json.loads + one
   INSERT, one SELECT by primary key, psycopg) under gunicorn with the same settings (2 workers,
   4 threads, gthread) on loopback ports.
3. Drives them with 8 concurrent keep-alive connections from `wrk` (Debian package, C, event loop,
   one thread) with Lua scripts: Patient and Encounter creates, reads by id, searches by
   identifier, the visit transaction Bundle (11 entries, runs the referral rules), and the
   baseline's insert and select; throughput and latency percentiles, with the ratios to the baseline.
4. SQLite mode: our app on a scratch SQLite file next to sekmet-fhir 0.1.1 (its own virtualenv in
   bench/.peer-venv, installed when missing) with the same Organizations and Patients: Encounter
   creates, searches by identifier and 10-entry transaction Bundles from the same client.
5. Samples our gunicorn workers with py-spy (`pip install py-spy` into .venv) during a create and a
   read load and summarises where the CPU goes.
6. Writes the figures to the "FHIR API" section of bench/RESULTS.md (only that section) and the raw
   figures and profiles to bench/out/.

The load generator shares the 2 cores with the servers and PostgreSQL; each measurement records the
CPU split (app, PostgreSQL, wrk, everything else) so the contention is visible in the results.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BENCH = ROOT / "bench"
OUT = BENCH / "out"
RESULTS = BENCH / "RESULTS.md"
SECTION = "FHIR API"
PEER_VENV = BENCH / ".peer-venv"
PEER_PACKAGE = "sekmet-fhir==0.1.1"
PEER_SETTINGS = BENCH / "peer" / "settings.yaml"
PEER_LOADER = BENCH / "peer" / "load_peer.py"
PEER_TOKEN = "bench-peer-token"
DEMO_SECRET = "demo-secret"
RESIDENT_SYSTEM = "http://referral-service.example/fhir/sid/resident-id"
CLINIC = "qs-th-01"  # the organisation of the township-his demo client (城关镇卫生院)
FHIR_JSON = "application/fhir+json"

# The targets of the brief, checked in the results.
TARGET_CREATE_VS_BASELINE = 0.5
TARGET_READ_VS_BASELINE = 0.7
TARGET_SEARCH_P95_MS = 20.0
TARGET_CREATE_VS_PEER = 3.0
TARGET_BUNDLE_RESOURCES_VS_PEER = 2.0


def log(message: str) -> None:
    """Progress on stderr with a timestamp."""
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Budget:
    """A wall-clock allowance for the whole run: later phases are skipped once it is spent."""

    def __init__(self, minutes: float) -> None:
        self.deadline = time.monotonic() + minutes * 60

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allows(self, seconds: float) -> bool:
        return self.left() > seconds


# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    """nproc, CPU model, memory, kernel, Python, PostgreSQL and wrk versions, load average."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    info = {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["wrk"] = (
            subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=5)
            .stdout.split("\n")[0]
            .split(" [")[0]
        )
    return info


class CpuMeter:
    """CPU seconds used during a window, split into our server, PostgreSQL, wrk and everything else."""

    def __init__(self, server_pgid: int | None) -> None:
        self.server_pgid = server_pgid
        self.tick = os.sysconf("SC_CLK_TCK")

    def _snapshot(self) -> tuple[float, float, dict[int, tuple[str, float]]]:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        values = [int(v) for v in fields]
        total = sum(values[:8])
        busy = total - values[3] - values[4]  # minus idle and iowait
        procs: dict[int, tuple[str, float]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                raw = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            comm = raw[raw.index("(") + 1 : raw.rindex(")")]
            rest = raw[raw.rindex(")") + 2 :].split()
            pgrp, ticks = int(rest[2]), int(rest[11]) + int(rest[12])
            if self.server_pgid is not None and pgrp == self.server_pgid:
                procs[int(entry.name)] = ("server", ticks)
            elif comm == "postgres":
                procs[int(entry.name)] = ("postgres", ticks)
            elif comm == "wrk":
                procs[int(entry.name)] = ("wrk", ticks)
        return total, busy, procs

    @contextlib.contextmanager
    def measure(self, result: dict[str, Any]) -> Iterator[None]:
        total0, busy0, groups0 = self._snapshot()
        started = time.monotonic()
        yield
        total1, busy1, groups1 = self._snapshot()
        seconds = time.monotonic() - started
        # Percent of one core over the window (200 % = both cores of a 2-core machine); processes
        # that ended inside the window fall into "other" (the machine's busy time is exact).
        used: dict[str, float] = collections.defaultdict(float)
        for pid, (group, ticks) in groups1.items():
            used[group] += ticks - (groups0[pid][1] if pid in groups0 else 0)
        split = {k: round(100 * used[k] / self.tick / seconds) for k in ("server", "postgres", "wrk")}
        busy = 100 * (busy1 - busy0) / self.tick / seconds
        split["other"] = max(0, round(busy - sum(split.values())))
        split["idle"] = max(0, round(100 * ((total1 - total0) - (busy1 - busy0)) / self.tick / seconds))
        result["cpu_pct_of_core"] = split


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A child process in its own process group, logging to a file, stopped for sure on exit."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, url: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} did not answer {url} within {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()


def gunicorn_cmd(app: str, port: int, workers: int, threads: int, chdir: Path | None = None) -> list[str]:
    """The same gunicorn settings for our app and the baseline.

    `--reuse-port`: each worker listens on its own SO_REUSEPORT socket and the kernel spreads new
    connections over them. Without it workers race to accept from one socket, and whichever is idle
    takes most of the keep-alive connections (0+8 was common), so a load measured the race.
    """
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--worker-class",
        "gthread",
        "--timeout",
        "120",
        "--graceful-timeout",
        "5",
        "--keep-alive",
        "5",
        "--reuse-port",
    ]
    if chdir is not None:
        cmd += ["--chdir", str(chdir)]
    return [*cmd, app]


# --------------------------------------------------------------------------- HTTP helpers


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, bytes]:
    """One request (status, body), errors included."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def client_token(base: str, client_id: str) -> str:
    """A bearer token for a demo client (client credentials grant)."""
    basic = base64.b64encode(f"{client_id}:{DEMO_SECRET}".encode()).decode()
    status, body = http(
        "POST",
        f"{base}/oauth/token",
        b"grant_type=client_credentials",
        {"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
    )
    if status != 200:
        raise RuntimeError(f"token for {client_id}: HTTP {status} {body[:300]!r}")
    return str(json.loads(body)["access_token"])


# --------------------------------------------------------------------------- wrk

LUA = r"""
-- bench_fhir.py: requests from BENCH_FILE, lines "METHOD<TAB>PATH<TAB>BODY", taken in turn;
-- BENCH_MODE=patient takes the one line as a template and fills in a new valid resident id.
local mode = os.getenv("BENCH_MODE") or "file"
local auth = os.getenv("BENCH_AUTH")
local salt = tonumber(os.getenv("BENCH_SALT") or "1")
local threads = {}
local reqs = {}
local nreq = 0
local pos = 0
local counter = 0
local template_method, template_path, template_body
statuses = {}
first_error = ""

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

local W = {7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2}
local C = "10X98765432"

local function resident(n)
  -- region 9SSSTT (SSS run salt, TT thread), birth date 1971-01-01 + n/1000 days, order n%1000
  local region = string.format("9%03d%02d", salt % 1000, tid % 100)
  local t = 31536000 + math.floor(n / 1000) * 86400
  local order = n % 1000
  local first17 = region .. os.date("!%Y%m%d", t) .. string.format("%03d", order)
  local sum = 0
  for i = 1, 17 do sum = sum + tonumber(first17:sub(i, i)) * W[i] end
  local k = (sum % 11) + 1
  local gender = (order % 2 == 1) and "male" or "female"
  return first17 .. C:sub(k, k), os.date("!%Y-%m-%d", t), gender
end

function init(args)
  wrk.headers["Content-Type"] = os.getenv("BENCH_CTYPE") or "application/fhir+json"
  wrk.headers["Accept"] = "application/fhir+json"
  if auth and auth ~= "" then wrk.headers["Authorization"] = auth end
  for line in io.lines(os.getenv("BENCH_FILE")) do
    local method, path, body = line:match("^(%u+)\t([^\t]*)\t?(.*)$")
    if method then
      if mode == "patient" then
        template_method, template_path, template_body = method, path, body
        break
      end
      if body == "" then body = nil end
      table.insert(reqs, wrk.format(method, path, nil, body))
    end
  end
  nreq = #reqs
  if nreq > 0 then pos = ((tid - 1) * 7919) % nreq end
end

function request()
  if mode == "patient" then
    counter = counter + 1
    local rid, birth, gender = resident(counter)
    local body = template_body:gsub("@RID@", rid):gsub("@BIRTH@", birth):gsub("@GENDER@", gender)
    return wrk.format(template_method, template_path, nil, body)
  end
  pos = pos % nreq + 1
  return reqs[pos]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status >= 400 and first_error == "" then
    first_error = status .. " " .. string.sub(body or "", 1, 600)
  end
end

local function esc(s)
  return (s:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end))
end

function done(summary, latency, requests)
  local counts = {}
  local err = ""
  for _, t in ipairs(threads) do
    local st = t:get("statuses") or {}
    for k, v in pairs(st) do counts[tostring(k)] = (counts[tostring(k)] or 0) + v end
    if err == "" then err = t:get("first_error") or "" end
  end
  local parts = {}
  for k, v in pairs(counts) do table.insert(parts, string.format('"%s": %d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p95": %d, "p99": %d}, ' ..
    '"statuses": {%s}, "first_error": "%s"}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(95), latency:percentile(99),
    table.concat(parts, ", "), esc(err)))
end
"""


@dataclass
class Scenario:
    """One load: where to send what, and what success looks like."""

    name: str
    base: str  # http://127.0.0.1:port
    lines: list[tuple[str, str, bytes]]  # (method, path, body)
    ok: tuple[int, ...]
    auth: str = ""
    mode: str = "file"  # or "patient": lines[0] is a template with @RID@ @BIRTH@ @GENDER@
    ctype: str = FHIR_JSON
    resources_per_request: int = 1
    notes: list[str] = field(default_factory=list)


def wait_for_quiet(max_wait: float, threshold_pct: float = 30.0) -> dict[str, Any]:
    """Wait (up to max_wait s) until the machine's busy CPU, sampled over 2 s, is below threshold_pct
    of one core: other work on a shared machine would otherwise skew the next measurement."""
    started = time.monotonic()
    busy = 0.0
    while True:
        fields0 = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        time.sleep(2)
        fields1 = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        total = sum(fields1[:8]) - sum(fields0[:8])
        idle = (fields1[3] + fields1[4]) - (fields0[3] + fields0[4])
        busy = 100 * (total - idle) / max(total, 1) * (os.cpu_count() or 1)
        waited = time.monotonic() - started
        if busy < threshold_pct or waited >= max_wait:
            return {"waited_s": round(waited), "busy_pct_of_core": round(busy), "quiet": busy < threshold_pct}
        time.sleep(3)


class Loader:
    """Runs wrk scenarios: a warm-up, then the measured run, with the CPU split."""

    def __init__(
        self, work: Path, clients: int, seconds: int, warmup: int, wrk_threads: int, quiet_wait: float = 0
    ) -> None:
        self.quiet_wait = quiet_wait
        self.work = work
        self.clients = clients
        self.seconds = seconds
        self.warmup = warmup
        self.wrk_threads = wrk_threads
        self.script = work / "bench.lua"
        self.script.write_text(LUA)
        self.salt = random.randrange(1000)  # resident ids of new Patients differ from earlier runs

    def _file(self, scenario: Scenario) -> Path:
        path = self.work / f"{scenario.name}.tsv"
        with path.open("wb") as fh:
            for method, target, body in scenario.lines:
                if b"\n" in body or b"\t" in body:
                    raise ValueError("request bodies must be compact JSON (no tabs or newlines)")
                fh.write(method.encode() + b"\t" + target.encode() + b"\t" + body + b"\n")
        return path

    def run_wrk(
        self,
        scenario: Scenario,
        seconds: int,
        tsv: Path,
        balance_pgid: int | None = None,
        record: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        self.salt += 1
        env = dict(
            os.environ,
            BENCH_FILE=str(tsv),
            BENCH_MODE=scenario.mode,
            BENCH_AUTH=scenario.auth,
            BENCH_CTYPE=scenario.ctype,
            BENCH_SALT=str(self.salt),
        )
        cmd = [
            "wrk",
            "-t",
            str(self.wrk_threads),
            "-c",
            str(self.clients),
            "-d",
            f"{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(self.script),
            scenario.base,
        ]
        attempts = 0
        while True:
            attempts += 1
            if attempts > 1:  # new resident ids for generated Patients: the killed run used some
                self.salt += 1
                env["BENCH_SALT"] = str(self.salt)
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if balance_pgid is not None and seconds > 4:
                # Keep-alive connections stay with the gunicorn worker that took them (the kernel
                # spreads them over the workers' SO_REUSEPORT sockets by a hash); with 3+5 of 8 one
                # worker's fifth connection waits for a thread and its GIL while the other core has
                # room: 30-40 % fewer requests/s than 4+4, measuring the draw, not the server. Start
                # again until the split is even, the same rule for every server; after 16 tries,
                # measure what came (the split is recorded with the figures).
                time.sleep(1.5)
                counts = connections_per_worker(balance_pgid, int(scenario.base.rsplit(":", 1)[1]))
                if record is not None:
                    record["connections_per_worker"] = counts
                    record["wrk_starts"] = attempts
                fair = max(1, self.clients // max(1, len(counts)))
                if len(counts) > 1 and min(counts) < fair and attempts < 16:
                    proc.kill()
                    proc.communicate(timeout=30)
                    continue
            try:
                out, err = proc.communicate(timeout=seconds + 60)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
            break
        text = out.decode("utf-8", "replace")
        for line in text.splitlines():
            if line.startswith("BENCH_JSON "):
                return dict(json.loads(line[len("BENCH_JSON ") :]))
        raise RuntimeError(f"wrk gave no result (exit {proc.returncode}): {text[-500:]} {err[-500:]!r}")

    def measure(
        self,
        scenario: Scenario,
        server_pgid: int | None,
        seconds: int | None = None,
        during: Callable[[], Any] | None = None,
    ) -> dict[str, Any]:
        """Warm up, then measure; `during` runs (e.g. a profiler) alongside the measured load."""
        seconds = seconds or self.seconds
        tsv = self._file(scenario)
        quiet = wait_for_quiet(self.quiet_wait) if self.quiet_wait else None
        if quiet and not quiet["quiet"]:
            log(
                f"  (machine busy: {quiet['busy_pct_of_core']} % of a core used by other work; "
                "measuring anyway)"
            )
        if self.warmup:
            self.run_wrk(scenario, self.warmup, tsv)
        result: dict[str, Any] = {
            "name": scenario.name,
            "quiet_before": quiet,
            "loadavg_before": Path("/proc/loadavg").read_text().split()[0],
        }
        with CpuMeter(server_pgid).measure(result):
            if during is None:
                raw = self.run_wrk(scenario, seconds, tsv, server_pgid, result)
            else:
                raw = run_alongside(lambda: self.run_wrk(scenario, seconds, tsv, server_pgid, result), during)
        duration = raw["duration_us"] / 1e6
        good = sum(v for k, v in raw["statuses"].items() if int(k) in scenario.ok)
        socket_errors = sum(v for k, v in raw["errors"].items() if k != "status")
        result.update(
            requests=raw["requests"],
            ok=good,
            per_s=round(good / duration, 1),
            resources_per_s=round(good * scenario.resources_per_request / duration, 1),
            p50_ms=round(raw["latency_us"]["p50"] / 1000, 2),
            p90_ms=round(raw["latency_us"]["p90"] / 1000, 2),
            p95_ms=round(raw["latency_us"]["p95"] / 1000, 2),
            p99_ms=round(raw["latency_us"]["p99"] / 1000, 2),
            max_ms=round(raw["latency_us"]["max"] / 1000, 1),
            statuses=raw["statuses"],
            socket_errors=socket_errors,
            seconds=round(duration, 1),
            notes=scenario.notes,
        )
        if raw["first_error"]:
            result["first_error"] = raw["first_error"][:600]
        bad = raw["requests"] - good
        flag = f"  ({bad} not {'/'.join(map(str, scenario.ok))}: {raw['first_error'][:160]})" if bad else ""
        log(
            f"  {scenario.name}: {result['per_s']}/s p50 {result['p50_ms']} ms p95 {result['p95_ms']} ms "
            f"cpu {result['cpu_pct_of_core']}{flag}"
        )
        return result


def connections_per_worker(master_pid: int, port: int) -> list[int]:
    """Established connections to the port held by each child process of the server (its workers)."""
    inodes: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for name in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(name).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "01" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    inodes[cols[9]] = 0
    counts = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == master_pid:
            continue
        try:
            raw = Path(f"/proc/{entry.name}/stat").read_text()
            if int(raw[raw.rindex(")") + 2 :].split()[2]) != master_pid:
                continue
            links = [
                os.readlink(f"/proc/{entry.name}/fd/{fd}") for fd in os.listdir(f"/proc/{entry.name}/fd")
            ]
        except (OSError, ValueError):
            continue
        counts.append(sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes))
    return sorted(counts)


def run_alongside(main: Callable[[], dict[str, Any]], side: Callable[[], Any]) -> dict[str, Any]:
    """Run `side` in a thread while `main` runs here; return main's result."""
    import threading

    errors: list[BaseException] = []

    def target() -> None:
        try:
            side()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    result = main()
    thread.join(timeout=60)
    if errors:
        log(f"  (side task failed: {errors[0]})")
    return result


# --------------------------------------------------------------------------- data


@contextlib.contextmanager
def scratch_postgres(server: str, keep: bool, reuse: str | None = None) -> Iterator[tuple[str, str]]:
    """(SQLAlchemy URL, libpq conninfo) of a new database (or the one to reuse), dropped afterwards."""
    import psycopg

    name = reuse or f"bench_fhir_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as admin:
        host, port, user = admin.info.host, admin.info.port, admin.info.user
        if reuse is None:
            admin.execute(f'CREATE DATABASE "{name}"')
    conninfo = f"host={host} port={port} user={user} dbname={name}"
    try:
        yield f"postgresql+psycopg://{user}@{host}:{port}/{name}", conninfo
    finally:
        from referral_service.extensions import database

        database.dispose()
        if keep or reuse:
            log(f"kept database {name}")
        else:
            with psycopg.connect(server, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            log(f"dropped database {name}")


def configure(url: str) -> None:
    """Bind the service's database layer (in this process) to the URL."""
    from referral_service import create_app

    create_app({"DATABASE_URL": url, "ENV": "testing"})


class _Enough(Exception):
    """Stops a sampled materialize() run."""


def time_materialize(sample: int) -> dict[str, Any]:
    """The service's materialize() on the first `sample` patients, then rolled back: its rate."""
    from referral_service.extensions import database
    from referral_service.seed.materialize import materialize

    done = [0]

    def progress(kind: str, n: int) -> None:
        done[0] += n
        if done[0] >= sample:
            raise _Enough

    started = time.perf_counter()
    with contextlib.suppress(_Enough), database.unit_of_work() as session:
        materialize(session, ("Patient",), progress=progress)
    elapsed = time.perf_counter() - started
    return {"patients": done[0], "seconds": round(elapsed, 1), "per_s": round(done[0] / elapsed)}


def load_registry(url: str, patients: int, publish: str, materialize_sample: int = 0) -> dict[str, Any]:
    """Schema, demo county, and Organization + Patient as FHIR resources; timings."""
    from referral_service.extensions import database
    from referral_service.migrate import upgrade
    from referral_service.seed import seed_demo
    from referral_service.seed.materialize import PUBLISHED_TABLES, materialize

    configure(url)
    upgrade(database.engine)
    started = time.perf_counter()
    report = seed_demo(database.engine, patients=patients, seed=20181, as_of=date(2026, 1, 1))
    seeded = time.perf_counter() - started
    log(f"  seed_demo: {patients:,} patients in {seeded:.1f} s")
    sampled = None
    if publish == "copy" and materialize_sample:
        sampled = time_materialize(min(materialize_sample, patients))
        log(
            f"  materialize() sample: {sampled['patients']:,} patients in {sampled['seconds']} s "
            f"({sampled['per_s']}/s), rolled back"
        )
    started = time.perf_counter()
    if publish == "copy":
        counts = publish_copy(database.engine, ("Organization", "Patient"))
    else:
        with database.unit_of_work() as session:
            counts = materialize(session, ("Organization", "Patient"))
    database.analyze(PUBLISHED_TABLES)  # as `flask fhir-publish` does after publishing
    published = time.perf_counter() - started
    log(f"  publish ({publish}): {counts} in {published:.1f} s")
    return {
        "patients": patients,
        "seed_s": round(seeded, 1),
        "registry_rows": sum(report.counts.values()),
        "publish_method": publish,
        "published": counts,
        "publish_s": round(published, 1),
        "materialize_sample": sampled,
    }


def publish_copy(engine: Any, types: tuple[str, ...], chunk: int = 5000) -> dict[str, int]:
    """`materialize` for a fresh PostgreSQL database, with COPY instead of row-by-row INSERTs.

    Same rows: the service's own mappers (FROM_DOMAIN), index extraction (`extract`), compartment
    and JSON layout as referral_service/seed/materialize.py; only the way they reach the database
    differs (materialize takes ~1.5-2.5 ms a patient, far too slow for a million in a benchmark).
    """
    from sqlalchemy import select
    from sqlalchemy.orm import Session, selectinload

    from referral_service.domain.registry import Household, Patient
    from referral_service.fhir.mappers import FROM_DOMAIN
    from referral_service.fhir.resources import RESOURCES
    from referral_service.fhir.search_params import extract
    from referral_service.fhir.store import instant, now_ms
    from referral_service.seed.materialize import MODELS

    counts = dict.fromkeys(types, 0)
    with Session(engine) as reader, engine.raw_connection() as raw:
        pg = raw.driver_connection
        with pg.cursor() as cur:  # skip the per-row foreign key triggers: the rows are consistent
            cur.execute("SET session_replication_role = replica")
        for res_type in types:
            model, to_fhir, rdef = MODELS[res_type], FROM_DOMAIN[res_type], RESOURCES[res_type]
            params = list(rdef.params)
            last = ""
            while True:
                stmt = select(model).where(model.id > last).order_by(model.id).limit(chunk)
                if res_type == "Patient":
                    stmt = stmt.options(selectinload(Patient.poverty_registrations))
                elif res_type == "Group":
                    stmt = stmt.options(selectinload(Household.members))
                rows = list(reader.scalars(stmt))
                if not rows:
                    break
                last = rows[-1].id
                ts = now_ms()
                with pg.cursor() as cur:
                    cur.execute(
                        "SELECT nextval(pg_get_serial_sequence('fhir_resource', 'pk')) "
                        "FROM generate_series(1, %s)",
                        (len(rows),),
                    )
                    pks = [r[0] for r in cur.fetchall()]
                    resources, tokens, strings, dates, refs = [], [], [], [], []
                    for pk, row in zip(pks, rows, strict=True):
                        resource = to_fhir(row)
                        resource["meta"] = {"versionId": "1", "lastUpdated": instant(ts)}
                        r = {
                            "resourceType": res_type,
                            "id": row.id,
                            "meta": resource["meta"],
                            **{k: v for k, v in resource.items() if k not in ("resourceType", "id", "meta")},
                        }
                        resources.append((pk, r, orjson.dumps(r)))
                        idx = extract(r, params)
                        tokens += [(pk, res_type, p, s, c) for p, s, c in idx.tokens]
                        strings += [(pk, res_type, p, v, e) for p, v, e in idx.strings]
                        dates += [(pk, res_type, p, lo, hi) for p, lo, hi in idx.dates]
                        refs += [(pk, res_type, p, t, i) for p, t, i in idx.references]
                    with cur.copy(
                        "COPY fhir_resource (pk, res_type, res_id, version_id, last_updated, deleted, "
                        "content, owner_org_id, patient_id) FROM STDIN"
                    ) as copy:
                        for pk, r, content in resources:
                            copy.write_row(
                                (
                                    pk,
                                    res_type,
                                    r["id"],
                                    1,
                                    ts,
                                    False,
                                    content,
                                    None,
                                    rdef.compartment_patient(r),
                                )
                            )
                    with cur.copy(
                        "COPY fhir_resource_version (resource_pk, version_id, res_type, last_updated, "
                        "method, deleted, content) FROM STDIN"
                    ) as copy:
                        for pk, _r, content in resources:
                            copy.write_row((pk, 1, res_type, ts, "POST", False, content))
                    for table, columns, batch in (
                        ("fhir_idx_token", "resource_pk, res_type, param, system, code", tokens),
                        ("fhir_idx_string", "resource_pk, res_type, param, value, exact", strings),
                        ("fhir_idx_date", "resource_pk, res_type, param, low, high", dates),
                        ("fhir_idx_reference", "resource_pk, res_type, param, target_type, target_id", refs),
                    ):
                        if batch:
                            with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                                for values in batch:
                                    copy.write_row(values)
                pg.commit()
                reader.expunge_all()
                counts[res_type] += len(rows)
        with pg.cursor() as cur:
            cur.execute("RESET session_replication_role")
        pg.commit()
        pg.autocommit = True  # (VACUUM runs outside a transaction)
        try:
            with pg.cursor() as cur:
                cur.execute("VACUUM (ANALYZE)")  # as `database.analyze` does after `flask fhir-publish`
        finally:
            pg.autocommit = False
    return counts


# What the measured requests read, ours and the baseline's: a server that has been up for a while has
# them in memory; a database just loaded or reused from an earlier run may not.
WARM_RELATIONS = (
    "fhir_resource", "pk_fhir_resource", "uq_fhir_resource_res_type_res_id", "fhir_idx_token",
    "ix_fhir_idx_token_lookup", "patient", "pk_patient", "patient_access", "pk_patient_access",
    "ix_patient_access_org", "organization", "bench_baseline", "bench_baseline_pkey",
)


def warm_cache(conninfo: str) -> str:
    """Read the tables and indexes the loads use into the OS cache (pg_prewarm), for both servers."""
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        except psycopg.Error as exc:
            return f"cache not warmed (pg_prewarm: {exc.__class__.__name__})"
        started = time.perf_counter()
        rows = conn.execute(
            "SELECT c.relname, pg_prewarm(c.oid, 'read') FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relname = ANY(%s)",
            (list(WARM_RELATIONS),),
        ).fetchall()
    blocks = sum(int(r[1]) for r in rows)
    return (f"warmed the OS cache: {len(rows)} relations, {blocks * 8 / 1024:.0f} MB "
            f"in {time.perf_counter() - started:.1f} s (pg_prewarm)")


@dataclass
class Resident:
    """A seeded patient with a resident identity number."""

    id: str
    resident_id: str
    birth: str
    gender: str
    family: str
    given: str


def sample_residents(url: str, count: int, gp: str | None) -> list[Resident]:
    """Random published patients with identity numbers (of one clinic's catchment when gp is given)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    where = "resident_id IS NOT NULL" + (" AND general_practitioner_id = :gp" if gp else "")
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    f"SELECT id, resident_id, birth_date, gender, family_name, given_name FROM patient "  # noqa: S608
                    f"WHERE {where} ORDER BY random() LIMIT :n"
                ),
                {"gp": gp, "n": count},
            ).all()
    finally:
        engine.dispose()
    return [Resident(r[0], r[1], str(r[2]), r[3], r[4], r[5]) for r in rows]


def export_resources(url: str, types: tuple[str, ...], path: Path) -> int:
    """Write the stored current JSON of the types as NDJSON (for the peer)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    count = 0
    try:
        with engine.connect() as conn, path.open("wb") as fh:
            for res_type in types:
                result = conn.execute(
                    text("SELECT content FROM fhir_resource WHERE res_type = :t AND NOT deleted ORDER BY pk"),
                    {"t": res_type},
                )
                for (content,) in result:
                    fh.write(bytes(content) + b"\n")
                    count += 1
    finally:
        engine.dispose()
    return count


# --------------------------------------------------------------------------- request bodies


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def patient_template() -> bytes:
    """A Patient as a township HIS registers one; wrk fills in @RID@, @BIRTH@ and @GENDER@."""
    return dumps(
        {
            "resourceType": "Patient",
            "identifier": [{"system": RESIDENT_SYSTEM, "value": "@RID@"}],
            "active": True,
            "name": [{"use": "official", "family": "王", "given": ["芳"]}],
            "telecom": [{"system": "phone", "value": "13800138000", "use": "mobile"}],
            "gender": "@GENDER@",
            "birthDate": "@BIRTH@",
            "address": [{"use": "home", "district": "青山县", "line": ["城关镇", "王家庄村"]}],
            "generalPractitioner": [{"reference": f"Organization/{CLINIC}"}],
        }
    )


def encounter(patient_id: str) -> dict[str, Any]:
    """An ambulatory Encounter in progress (no referral rules run until it is finished)."""
    from referral_service.fhir.codes import V3_ACT_CODE_SYSTEM

    return {
        "resourceType": "Encounter",
        "status": "in-progress",
        "class": {"system": V3_ACT_CODE_SYSTEM, "code": "AMB"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "serviceProvider": {"reference": f"Organization/{CLINIC}"},
        "period": {"start": "2026-11-02T09:00:00+08:00"},
    }


def visit_bundle(person: Resident, diagnoses: tuple[str, ...] = ("J18.9", "R50.9")) -> dict[str, Any]:
    """The first-visit transaction the referral workflow tests send (tests/functional/fhir_helpers.py).

    Patient (conditional create on the resident id: it matches the published registry patient),
    a finished ambulatory Encounter at the township clinic, 7 Observations (NEWS2 inputs, SpO2 90 %)
    and one Condition per diagnosis: 11 entries with two diagnoses, 10 with one. The resident varies
    per request (the tests always use one, which would serialise every request on one lock).
    """
    from tests.functional.fhir_helpers import visit_bundle as workflow_visit

    patient = {
        "resourceType": "Patient",
        "name": [{"family": person.family, "given": [person.given]}],
        "gender": person.gender,
        "birthDate": person.birth,
        "address": [{"district": "青山县", "line": ["城关镇", "王家庄村"]}],
        "identifier": [{"system": RESIDENT_SYSTEM, "value": person.resident_id}],
        "generalPractitioner": [{"reference": f"Organization/{CLINIC}"}],
    }
    return workflow_visit(CLINIC, diagnoses=diagnoses, person=patient)


def identifier_query(person: Resident) -> str:
    return "/fhir/Patient?identifier=" + urllib.parse.quote(
        f"{RESIDENT_SYSTEM}|{person.resident_id}", safe=""
    )


# --------------------------------------------------------------------------- checks before loads


def check_once(scenario: Scenario, expect: Callable[[int, bytes], str | None] | None = None) -> None:
    """Send the scenario's first request once; raise when the server does not answer as expected."""
    method, target, body = scenario.lines[0]
    if scenario.mode == "patient":
        from referral_service.domain import resident_id

        number = resident_id.generate("990101", date(1980, 1, 1), "female", random.randint(0, 499))
        body = (
            body.replace(b"@RID@", number.encode())
            .replace(b"@BIRTH@", b"1980-01-01")
            .replace(b"@GENDER@", b"female")
        )
    headers = {"Content-Type": scenario.ctype, "Accept": FHIR_JSON}
    if scenario.auth:
        headers["Authorization"] = scenario.auth
    status, answer = http(method, scenario.base + target, body or None, headers)
    problem = None if status in scenario.ok else f"HTTP {status}"
    if problem is None and expect is not None:
        problem = expect(status, answer)
    if problem:
        raise RuntimeError(f"{scenario.name}: {problem}: {answer[:600]!r}")


def one_match(status: int, answer: bytes) -> str | None:
    """A searchset with exactly one Patient match."""
    bundle = json.loads(answer)
    matches = [e for e in bundle.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"]
    return None if len(matches) == 1 else f"{len(matches)} matches instead of 1"


# --------------------------------------------------------------------------- SQL per request


def statements_per_request(url: str, catchment: list[Resident], anyone: list[Resident]) -> dict[str, Any]:
    """SQL statements, pool checkouts and commits of one request of each kind (in-process test client).

    Each checkout costs a `SELECT 1` round trip (pool_pre_ping) and each transaction a BEGIN and a
    COMMIT besides the statements counted here; an executemany counts once.
    """
    from sqlalchemy import event

    from referral_service import create_app
    from referral_service.domain import resident_id
    from referral_service.extensions import database

    app = create_app({"DATABASE_URL": url, "ENV": "testing"})
    client = app.test_client()

    def token(client_id: str) -> str:
        basic = base64.b64encode(f"{client_id}:{DEMO_SECRET}".encode()).decode()
        answer = client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": f"Basic {basic}"},
        )
        return str(answer.get_json()["access_token"])

    his, platform_token = token("township-his"), token("county-platform")
    number = resident_id.generate("980101", date(1981, 2, 3), "male", random.randint(0, 499))
    patient = (
        patient_template()
        .replace(b"@RID@", number.encode())
        .replace(b"@BIRTH@", b"1981-02-03")
        .replace(b"@GENDER@", b"male")
    )
    cases = [
        ("patient_create", "POST", "/fhir/Patient", patient, his),
        ("encounter_create", "POST", "/fhir/Encounter", dumps(encounter(catchment[0].id)), his),
        ("patient_read", "GET", f"/fhir/Patient/{catchment[1].id}", None, his),
        ("patient_read_platform", "GET", f"/fhir/Patient/{anyone[0].id}", None, platform_token),
        ("search_identifier", "GET", identifier_query(catchment[2]), None, his),
        ("search_identifier_platform", "GET", identifier_query(anyone[1]), None, platform_token),
        ("visit_bundle", "POST", "/fhir", dumps(visit_bundle(catchment[3])), his),
    ]
    counts: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()

    def on_statement(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        counts["statements"] += 1
        words = statement.split()
        kinds[" ".join(words[:3]) if words[0] == "INSERT" else words[0]] += 1

    def on_checkout(*_: Any) -> None:
        counts["checkouts"] += 1

    def on_commit(*_: Any) -> None:
        counts["commits"] += 1

    engines = database.engines  # the main pool and the pool of reads
    for engine in engines:
        event.listen(engine, "before_cursor_execute", on_statement)
        event.listen(engine.pool, "checkout", on_checkout)
        event.listen(engine, "commit", on_commit)
    out: dict[str, Any] = {}
    try:
        for name, method, target, body, bearer in cases:
            counts.clear()
            kinds.clear()
            answer = client.open(
                target,
                method=method,
                data=body,
                headers={"Authorization": f"Bearer {bearer}", "Content-Type": FHIR_JSON},
            )
            out[name] = {"status": answer.status_code, **counts, "by_kind": dict(kinds.most_common(8))}
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", on_statement)
            event.remove(engine.pool, "checkout", on_checkout)
            event.remove(engine, "commit", on_commit)
        database.dispose()
    return out


# --------------------------------------------------------------------------- profiling


PROFILE_BUCKETS: tuple[tuple[str, str], ...] = (
    # (label, regex on one py-spy frame "Class.function (package/path.py:line)"); a sample counts
    # once for each bucket one of its frames hits, so the buckets overlap (inclusive time).
    ("Flask dispatch of the FHIR handler (full_dispatch_request)", r"full_dispatch_request \(flask/app\.py"),
    ("rate limiter before_request (flask_limiter)", r"\(flask_limiter/"),
    ("bearer token check (verify_token)", r"verify_token \(referral_service/auth/tokens\.py"),
    ("actor_for: Organization lookup per request", r"actor_for \(referral_service/services/actors\.py"),
    (
        "structure validation, fhir.resources/pydantic (structure_problems)",
        r"structure_problems \(referral_service/fhir/validation\.py",
    ),
    ("profile validation (profile_problems)", r"profile_problems \(referral_service/fhir/validation\.py"),
    (
        "reference existence check (_check_references)",
        r"_check_references \(referral_service/services/resources\.py",
    ),
    ("registry mapper TO_DOMAIN (to_domain)", r"to_domain \(referral_service/fhir/mappers/"),
    (
        "store.save: resource, version and index rows",
        r"ResourceStore\.save \(referral_service/fhir/store\.py",
    ),
    ("search index extraction (extract)", r"extract \(referral_service/fhir/search_params\.py"),
    ("grant_access (patient_access upsert)", r"grant_access \(referral_service/fhir/store\.py"),
    ("after-write hooks (run_hooks)", r"run_hooks \(referral_service/services/resources\.py"),
    ("referral rules on the finished visit (evaluate_visit)", r"evaluate_visit \(referral_service/services/"),
    ("transaction Bundle processing (bundles.process)", r"process \(referral_service/services/bundles\.py"),
    ("store.read: SELECT with the access policy", r"ResourceStore\.read \(referral_service/fhir/store\.py"),
    ("store.search", r"ResourceStore\.search \(referral_service/fhir/store\.py"),
    ("audit row (audit + its flush)", r"audit \(referral_service/services/resources\.py"),
    ("Session.commit (flush of pending audit rows, COMMIT)", r"Session\.commit \(sqlalchemy/orm/session\.py"),
    ("pool pre-ping (SELECT 1 per checkout)", r"do_ping \(sqlalchemy/"),
    ("SQLAlchemy, any frame", r"\(sqlalchemy/"),
    ("psycopg driver, any frame", r"\(psycopg/"),
    ("logging: access log and JSON formatting", r"\((logging/|referral_service/logging_setup\.py)"),
    ("metrics (prometheus_client)", r"\(prometheus_client/"),
    ("werkzeug (request/response objects)", r"\(werkzeug/"),
)


def py_spy_available() -> str | None:
    exe = Path(sys.executable).parent / "py-spy"
    return str(exe) if exe.exists() else shutil.which("py-spy")


def record_profile(py_spy: str, pid: int, seconds: int, out: Path) -> Callable[[], None]:
    """A callable that samples the gunicorn master's workers for `seconds` into a collapsed-stack file.

    `--gil`: only the thread holding the GIL is sampled in each worker, so the samples are Python
    CPU time (a thread waiting for PostgreSQL's answer, or for the GIL, is not counted).
    """

    def run() -> None:
        time.sleep(1)  # let the load reach steady state
        subprocess.run(
            [
                py_spy,
                "record",
                "--pid",
                str(pid),
                "--subprocesses",
                "--rate",
                "100",
                "--duration",
                str(seconds),
                "--format",
                "raw",
                "--function",
                "--gil",
                "--nonblocking",
                "--output",
                str(out),
            ],
            capture_output=True,
            timeout=seconds + 60,
            check=False,
        )

    return run


def summarise_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Bucket shares (inclusive) and the top functions by own time, from py-spy's raw output."""
    if not path.exists():
        return {"error": "no profile written (py-spy failed?)"}
    stacks: list[tuple[list[str], int]] = []
    for line in path.read_text(errors="replace").splitlines():
        head, _, count = line.rpartition(" ")
        if not head or not count.isdigit():
            continue
        stacks.append((head.split(";"), int(count)))
    # Only the gunicorn worker threads that were handling a request (not the master, not idle loops).
    busy = [(frames, n) for frames, n in stacks if any("wsgi_app (" in f for f in frames)]
    total_all = sum(n for _, n in stacks)
    total = sum(n for _, n in busy) or 1
    buckets = []
    for label, pattern in PROFILE_BUCKETS:
        rx = re.compile(pattern)
        hit = sum(n for frames, n in busy if any(rx.search(f) for f in frames))
        buckets.append((label, round(100 * hit / total, 1)))
    own: collections.Counter[str] = collections.Counter()
    for frames, n in busy:
        leaf = frames[-1]
        own[re.sub(r":\d+\)$", ")", leaf.replace(str(ROOT) + "/", "").replace(sys.prefix + "/", ""))] += n
    return {
        "samples_total": total_all,
        "samples_in_requests": total,
        "buckets_pct": buckets,
        "top_self_pct": [(name, round(100 * n / total, 1)) for name, n in own.most_common(top)],
    }


# --------------------------------------------------------------------------- phases


def start_app(name: str, url: str, port: int, args: argparse.Namespace, logs: Path) -> Server:
    env = dict(
        os.environ,
        DATABASE_URL=url,
        ENV="production",
        SECRET_KEY=secrets.token_hex(32),
        PYTHONPATH=str(ROOT),
        PYTHONDONTWRITEBYTECODE="1",
    )
    server = Server(
        name, gunicorn_cmd("wsgi:app", port, args.workers, args.threads), env, ROOT, logs / f"{name}.log"
    )
    server.wait_ready(f"http://127.0.0.1:{port}/health")
    return server


def postgres_phase(
    args: argparse.Namespace, loader: Loader, work: Path, logs: Path, results: dict[str, Any], budget: Budget
) -> None:
    """1M patients on PostgreSQL: our app against the bare baseline, then the profiles."""
    import psycopg

    section: dict[str, Any] = {"measurements": {}}
    results["postgres"] = section
    with contextlib.ExitStack() as stack:
        url, conninfo = stack.enter_context(scratch_postgres(args.server, args.keep, args.reuse_database))
        if args.reuse_database:
            log(f"PostgreSQL: reusing {args.reuse_database} (loaded by an earlier run)")
            configure(url)
            with psycopg.connect(conninfo) as conn:
                count = conn.execute("SELECT count(*) FROM patient").fetchone()[0]  # type: ignore[index]
            section["setup"] = {"reused": args.reuse_database, "patients": int(count)}
        else:
            log(f"PostgreSQL: loading {args.patients:,} patients")
            section["setup"] = load_registry(url, args.patients, args.publish, args.materialize_sample)
        with psycopg.connect(conninfo) as conn:
            section["setup"]["database_size"] = conn.execute(
                "SELECT pg_size_pretty(pg_database_size(current_database()))"
            ).fetchone()[0]  # type: ignore[index]
        catchment = sample_residents(url, args.sample, CLINIC)
        anyone = sample_residents(url, args.sample, None)
        log(f"  sampled {len(catchment)} residents of {CLINIC}'s catchment, {len(anyone)} county-wide")

        # The baseline table: as many rows as patients, each a stored Patient's JSON.
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS bench_baseline")
            conn.execute("CREATE TABLE bench_baseline (id bigserial PRIMARY KEY, body bytea NOT NULL)")
            sample_json = conn.execute(
                "SELECT content FROM fhir_resource WHERE res_type = 'Patient' LIMIT 1"
            ).fetchone()[0]  # type: ignore[index]
            conn.execute(
                "INSERT INTO bench_baseline (body) SELECT %s FROM generate_series(1, %s)",
                (sample_json, args.patients),
            )
            conn.execute("VACUUM ANALYZE bench_baseline")

        app_port, base_port = free_port(), free_port()
        app = start_app("app-postgres", url, app_port, args, logs)
        stack.callback(app.stop)
        baseline_env = dict(os.environ, BASELINE_DSN=conninfo, PYTHONDONTWRITEBYTECODE="1")
        baseline = Server(
            "baseline",
            gunicorn_cmd("baseline_app:app", base_port, args.workers, args.threads, chdir=BENCH),
            baseline_env,
            ROOT,
            logs / "baseline.log",
        )
        stack.callback(baseline.stop)
        baseline.wait_ready(f"http://127.0.0.1:{base_port}/docs/1")
        log(f"  {warm_cache(conninfo)}")

        ours = f"http://127.0.0.1:{app_port}"
        base = f"http://127.0.0.1:{base_port}"
        his = "Bearer " + client_token(ours, "township-his")
        platform_auth = "Bearer " + client_token(ours, "county-platform")
        rng = random.Random(2026)
        scenarios = [
            Scenario(
                "patient_create",
                ours,
                [("POST", "/fhir/Patient", patient_template())],
                (201,),
                his,
                mode="patient",
                notes=["township-his; new resident each request"],
            ),
            Scenario(
                "encounter_create",
                ours,
                [("POST", "/fhir/Encounter", dumps(encounter(p.id))) for p in catchment],
                (201,),
                his,
                notes=["township-his; AMB in-progress (the referral rules run only on finished visits)"],
            ),
            Scenario(
                "patient_read",
                ours,
                [("GET", f"/fhir/Patient/{p.id}", b"") for p in catchment],
                (200,),
                his,
                notes=["township-his, patients of its catchment (access policy applies)"],
            ),
            Scenario(
                "patient_read_platform",
                ours,
                [("GET", f"/fhir/Patient/{p.id}", b"") for p in anyone],
                (200,),
                platform_auth,
                notes=["county-platform (sees everything: no policy filter)"],
            ),
            Scenario(
                "search_identifier",
                ours,
                [("GET", identifier_query(p), b"") for p in catchment],
                (200,),
                his,
                notes=["township-his, residents of its catchment"],
            ),
            Scenario(
                "search_identifier_platform",
                ours,
                [("GET", identifier_query(p), b"") for p in anyone],
                (200,),
                platform_auth,
                notes=["county-platform"],
            ),
            Scenario(
                "visit_bundle",
                ours,
                [("POST", "/fhir", dumps(visit_bundle(p))) for p in catchment[: args.bundles]],
                (200,),
                his,
                resources_per_request=11,
                notes=["township-his; 11 entries, Patient matched by ifNoneExist; runs the referral rules"],
            ),
            Scenario(
                "baseline_insert_patient",
                base,
                [("POST", "/docs", patient_template())],
                (201,),
                mode="patient",
                ctype="application/json",
            ),
            Scenario(
                "baseline_insert_encounter",
                base,
                [("POST", "/docs", dumps(encounter(p.id))) for p in catchment],
                (201,),
                ctype="application/json",
            ),
            Scenario(
                "baseline_select",
                base,
                [("GET", f"/docs/{rng.randint(1, args.patients)}", b"") for _ in range(args.sample)],
                (200,),
            ),
        ]
        checks = {"search_identifier": one_match, "search_identifier_platform": one_match}
        for scenario in scenarios:
            check_once(scenario, checks.get(scenario.name))
        # Each of ours right before its baseline: a pair sees the same outside load on a shared machine.
        order = [
            "patient_create", "baseline_insert_patient", "encounter_create", "baseline_insert_encounter",
            "patient_read", "baseline_select", "patient_read_platform", "search_identifier",
            "search_identifier_platform", "visit_bundle",
        ]  # fmt: skip
        scenarios.sort(key=lambda sc: order.index(sc.name))
        only = set(args.only.split(",")) if args.only else None
        for scenario in scenarios:
            if only is not None and scenario.name not in only:
                continue
            if not budget.allows(args.seconds + args.warmup + 30):
                section["measurements"][scenario.name] = {"skipped": "time budget spent"}
                continue
            pgid = app.pid if scenario.base == ours else baseline.pid
            section["measurements"][scenario.name] = loader.measure(scenario, pgid)

        try:
            section["statements"] = statements_per_request(url, catchment, anyone)
        except Exception as exc:
            section["statements"] = {"error": f"{type(exc).__name__}: {exc}"}

        # Profiles: py-spy on the workers while the same loads run again (not counted above).
        py_spy = py_spy_available()
        section["profiles"] = {}
        if args.no_profile:
            section["profiles"]["skipped"] = "--no-profile"
        elif py_spy is None:
            section["profiles"]["skipped"] = "py-spy is not installed (.venv/bin/pip install py-spy)"
        else:
            # The township-his read is bound by PostgreSQL (the access-policy subquery), so the Python
            # profile of a read uses the county platform's (no policy filter): the per-request overheads.
            for name in ("patient_create", "encounter_create", "patient_read_platform", "visit_bundle"):
                if not budget.allows(args.profile_seconds + 40):
                    section["profiles"][name] = {"error": "time budget spent"}
                    continue
                scenario = next(s for s in scenarios if s.name == name)
                out = OUT / f"profile-{name}-{results['stamp']}.txt"
                log(f"  profiling {name} with py-spy ({args.profile_seconds} s)")
                measured = loader.measure(
                    scenario,
                    app.pid,
                    seconds=args.profile_seconds + 3,
                    during=record_profile(py_spy, app.pid, args.profile_seconds, out),
                )
                summary = summarise_profile(out)
                summary["file"] = str(out.relative_to(ROOT))
                summary["per_s_while_sampled"] = measured["per_s"]
                section["profiles"][name] = summary


def sqlite_phase(
    args: argparse.Namespace, loader: Loader, work: Path, logs: Path, results: dict[str, Any], budget: Budget
) -> None:
    """Our app on SQLite next to sekmet-fhir on SQLite, same data, same client, same requests."""
    section: dict[str, Any] = {"measurements": {}}
    results["sqlite"] = section
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-fhir-sqlite-")))
        url = f"sqlite:///{folder}/ours.sqlite3"
        log(f"SQLite: loading {args.sqlite_patients:,} patients")
        section["setup"] = load_registry(url, args.sqlite_patients, "materialize")
        catchment = sample_residents(url, args.sample, CLINIC)
        from referral_service.extensions import database

        database.dispose()

        app_port = free_port()
        app = start_app("app-sqlite", url, app_port, args, logs)
        stack.callback(app.stop)
        ours = f"http://127.0.0.1:{app_port}"
        his = "Bearer " + client_token(ours, "township-his")

        peer_base = None
        peer: Server | None = None
        section["peer"] = {"package": PEER_PACKAGE}
        try:
            sekmet = ensure_peer(logs)
            ndjson = folder / "peer-resources.ndjson"
            exported = export_resources(url, ("Organization", "Patient"), ndjson)
            peer_db = folder / "peer.sqlite3"
            started = time.perf_counter()
            loaded = subprocess.run(
                [str(PEER_VENV / "bin" / "python"), str(PEER_LOADER), str(peer_db), str(ndjson)],
                capture_output=True,
                text=True,
                timeout=1800,
                check=True,
            )
            section["peer"]["load"] = {
                "resources": exported,
                "seconds": round(time.perf_counter() - started, 1),
                "loader": loaded.stdout.strip(),
            }
            log(f"  peer loaded {exported:,} resources in {section['peer']['load']['seconds']} s")
            peer_port = free_port()
            peer_work = folder / "peer-work"
            peer_work.mkdir()
            env = dict(
                os.environ,
                SEKMET_PORT=str(peer_port),
                SEKMET_DB=str(peer_db),
                SEKMET_BASE_URL=f"http://127.0.0.1:{peer_port}/fhir",
            )
            peer = Server(
                "peer-sekmet",
                [sekmet, "serve", "-c", str(PEER_SETTINGS)],
                env,
                peer_work,
                logs / "peer-sekmet.log",
            )
            stack.callback(peer.stop)
            peer.wait_ready(f"http://127.0.0.1:{peer_port}/fhir/metadata")
            peer_base = f"http://127.0.0.1:{peer_port}"
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", None) or ""
            section["peer"]["error"] = f"{type(exc).__name__}: {exc} {str(detail)[-1500:]}".strip()
            log(f"  peer unavailable: {section['peer']['error'][:300]}")

        bundles = [dumps(visit_bundle(p, diagnoses=("J18.9",))) for p in catchment[: args.bundles]]
        targets = [("ours", ours, his, app)]
        if args.workers > 1 and not args.no_sqlite_single:
            # The same app with one worker and as many threads: SQLite has one writer at a time, and
            # across processes the waiting is SQLite's busy handler (sleeps), within one it is a lock.
            single = argparse.Namespace(
                **{**vars(args), "workers": 1, "threads": args.workers * args.threads}
            )
            port1 = free_port()
            app1 = start_app("app-sqlite-1worker", url, port1, single, logs)
            stack.callback(app1.stop)
            base1 = f"http://127.0.0.1:{port1}"
            targets.append(("ours1w", base1, "Bearer " + client_token(base1, "township-his"), app1))
        if peer_base is not None and peer is not None:
            targets.append(("peer", peer_base, f"Bearer {PEER_TOKEN}", peer))
        planned: list[tuple[Scenario, Server]] = []
        for who, base, auth, server in targets:
            scenarios = [
                Scenario(
                    f"{who}_encounter_create",
                    base,
                    [("POST", "/fhir/Encounter", dumps(encounter(p.id))) for p in catchment],
                    (201,),
                    auth,
                ),
                Scenario(
                    f"{who}_search_identifier",
                    base,
                    [("GET", identifier_query(p), b"") for p in catchment],
                    (200,),
                    auth,
                ),
                Scenario(
                    f"{who}_bundle10",
                    base,
                    [("POST", "/fhir", b) for b in bundles],
                    (200,),
                    auth,
                    resources_per_request=10,
                ),
            ]
            planned += [(scenario, server) for scenario in scenarios]
        # By kind of request, each server in turn: the servers compared see the same outside load.
        kinds = ("encounter_create", "search_identifier", "bundle10")
        planned.sort(key=lambda item: kinds.index(item[0].name.split("_", 1)[1]))
        for scenario, server in planned:
            try:
                check_once(scenario, one_match if "search" in scenario.name else None)
            except RuntimeError as exc:
                section["measurements"][scenario.name] = {"error": str(exc)[:800]}
                log(f"  {scenario.name}: check failed: {str(exc)[:300]}")
                continue
            if not budget.allows(args.seconds + args.warmup + 30):
                section["measurements"][scenario.name] = {"skipped": "time budget spent"}
                continue
            section["measurements"][scenario.name] = loader.measure(scenario, server.pid)


def ensure_peer(logs: Path) -> str:
    """The sekmet executable of bench/.peer-venv, creating the venv and installing the package if needed."""
    sekmet = PEER_VENV / "bin" / "sekmet"
    python = PEER_VENV / "bin" / "python"
    if sekmet.exists():
        shown = subprocess.run(
            [str(python), "-m", "pip", "show", "sekmet-fhir"], capture_output=True, text=True, timeout=60
        )
        if "Version: 0.1.1" in shown.stdout:
            return str(sekmet)
    log(f"  installing {PEER_PACKAGE} into {PEER_VENV.relative_to(ROOT)}")
    base_python = getattr(sys, "_base_executable", None) or shutil.which("python3.11") or "python3"
    with (logs / "peer-install.log").open("w") as fh:
        subprocess.run(
            [base_python, "-m", "venv", str(PEER_VENV)],
            check=True,
            stdout=fh,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
        done = subprocess.run(
            [str(python), "-m", "pip", "install", PEER_PACKAGE],
            stdout=fh,
            stderr=subprocess.STDOUT,
            timeout=900,
        )
    if done.returncode != 0 or not sekmet.exists():
        tail = (logs / "peer-install.log").read_text()[-1500:]
        raise RuntimeError(f"pip install {PEER_PACKAGE} failed: {tail}")
    return str(sekmet)


# --------------------------------------------------------------------------- report


def conns(x: dict[str, Any]) -> str:
    """' (connections per worker a+b)' when recorded: a lopsided split leaves a core idle."""
    counts = x.get("connections_per_worker")
    return f" (conns {'+'.join(map(str, counts))})" if counts and len(counts) > 1 else ""


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def render(results: dict[str, Any]) -> str:
    """The markdown of the FHIR API section."""
    m = results["machine"]
    args = results["args"]
    lines = [
        f"## {SECTION}",
        "",
        f"Run {m['date_utc']} by `bench/bench_fhir.py {args['cmdline']}` "
        f"(total {results.get('elapsed_min', '?')} min). "
        f"Machine: nproc {m['nproc']}, {m['cpu_model']}, {m['memory_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, {m.get('postgres', 'PostgreSQL ?')}, {m.get('wrk', 'wrk ?')}; "
        f"load average at start {' '.join(m['loadavg_at_start'])}.",
        "",
        f"Load: `wrk` (C, event loop, {args['wrk_threads']} thread) with {args['clients']} keep-alive "
        f"connections, Lua scripts cycling through prepared requests; {args['warmup']} s warm-up, then "
        f"{args['seconds']} s measured per line. Servers under gunicorn "
        f"`--workers {args['workers']} --threads "
        f"{args['threads']} --worker-class gthread --reuse-port`, our app with ENV=production (JSON "
        "access log on), after pg_prewarm has read what the loads touch into the OS cache. "
        "Rates count only the expected status (201/200); p50/p95 are wrk's latency percentiles of all "
        "requests. **Caveat:** wrk, the servers and PostgreSQL share the 2 cores (closed loop: the client "
        "waits for answers, so it never over-drives the server); the `cpu` column gives the split "
        "in % of one "
        "core (app / PostgreSQL / wrk / other processes on the machine); anything in `other` is outside "
        "interference (other work on the machine at the time); `conns` is how the 8 keep-alive connections "
        "fell on the gunicorn workers (wrk is restarted, up to 15 times, until the split is even, "
        "4+4, for every server alike: 3+5 costs 30-40 % of the rate).",
        "",
    ]
    pg = results.get("postgres")
    if pg:
        s = pg.get("setup", {})
        ms = pg.get("measurements", {})
        setup = (
            f"Setup: database `{s['reused']}`, loaded by an earlier run of this script (`--keep`), "
            f"reused (`--reuse-database`); {s.get('database_size')}."
            if s.get("reused")
            else f"Setup: `seed_demo` {s.get('seed_s')} s ({s.get('registry_rows', 0):,} registry rows); "
            f"publish Organization + Patient ({s.get('publish_method')}) {s.get('publish_s')} s; database "
            f"{s.get('database_size')}."
        )
        lines += [f"### PostgreSQL, {s.get('patients', 0):,} patients", "", setup, ""]
        sample = s.get("materialize_sample")
        if sample:
            minutes = s.get("patients", 0) / max(sample["per_s"], 1) / 60
            lines += [
                "The service's own `materialize()` (what `flask fhir-publish` runs) managed "
                f"{sample['patients']:,} "
                f"patients in {sample['seconds']} s ({sample['per_s']}/s, first patients of an empty store, "
                f"rolled back): at best ~{minutes:.0f} min for {s.get('patients', 0):,} Patients alone, "
                "so this "
                "benchmark publishes with `publish_copy` (bench_fhir.py): the same mappers, JSON and index "
                "extraction, sent with COPY (checked row-for-row identical to materialize() on a "
                "3,000-patient "
                "registry).",
                "",
            ]
        lines += [
            "| measurement | ours /s | p50 ms | p95 ms | p99 ms | baseline | baseline /s | "
            "baseline p50 / p95 ms | "
            "ratio | target | | cpu app/pg/wrk/other % |",
            "|---|---:|---:|---:|---:|---|---:|---:|---:|---|---|---|",
        ]
        pairs = [
            ("Patient create", "patient_create", "baseline_insert_patient", TARGET_CREATE_VS_BASELINE),
            ("Encounter create", "encounter_create", "baseline_insert_encounter", TARGET_CREATE_VS_BASELINE),
            ("Patient read by id (township-his)", "patient_read", "baseline_select", TARGET_READ_VS_BASELINE),
            (
                "Patient read by id (county-platform)",
                "patient_read_platform",
                "baseline_select",
                TARGET_READ_VS_BASELINE,
            ),
            ("search Patient?identifier (township-his)", "search_identifier", None, None),
            ("search Patient?identifier (county-platform)", "search_identifier_platform", None, None),
            ("visit transaction Bundle, 11 entries", "visit_bundle", None, None),
        ]
        for label, ours_key, base_key, target in pairs:
            o = ms.get(ours_key, {})
            b = ms.get(base_key, {}) if base_key else {}
            if "per_s" not in o:
                lines.append(f"| {label} | {o.get('skipped') or o.get('error') or 'not run'} |||||||||||")
                continue
            r = ratio(o.get("per_s"), b.get("per_s")) if base_key else None
            if target is not None:
                goal = f">= {target}x baseline"
                met = verdict(r >= target if r is not None else None)
            elif "search" in ours_key:
                goal = f"p95 <= {TARGET_SEARCH_P95_MS:.0f} ms"
                met = verdict(o["p95_ms"] <= TARGET_SEARCH_P95_MS)
            else:
                goal, met = "-", ""
            cpu = o.get("cpu_pct_of_core", {})
            extra = (
                f" ({o['resources_per_s']} resources/s)" if o.get("resources_per_s") != o.get("per_s") else ""
            )
            bad = o["requests"] - o["ok"]
            flag = f" [{bad} failed]" if bad else ""
            lines.append(
                f"| {label} | {o['per_s']}{extra}{flag} | {o['p50_ms']} | {o['p95_ms']} | {o['p99_ms']} | "
                f"{base_key or '-'} | {b.get('per_s', '-')} | "
                f"{str(b.get('p50_ms', '-')) + ' / ' + str(b.get('p95_ms', '-')) if b else '-'} | "
                f"{r if r is not None else '-'} | {goal} | {met} | "
                f"{cpu.get('server', '?')}/{cpu.get('postgres', '?')}/"
                f"{cpu.get('wrk', '?')}/{cpu.get('other', '?')}{conns(o)} |"
            )
        for key in ("baseline_insert_patient", "baseline_insert_encounter", "baseline_select"):
            b = ms.get(key, {})
            if "cpu_pct_of_core" in b:
                cpu = b["cpu_pct_of_core"]
                lines.append(
                    f"| ({key}) | | | | | | {b['per_s']} | {b['p50_ms']} / {b['p95_ms']} | | | | "
                    f"{cpu['server']}/{cpu['postgres']}/{cpu['wrk']}/{cpu['other']}{conns(b)} |"
                )
        failures = [(k, v) for k, v in ms.items() if v.get("first_error")]
        if failures:
            lines += ["", "Errors seen (first one per measurement):"]
            lines += [f"- `{k}`: {v['first_error'][:300]}" for k, v in failures]
        st = pg.get("statements") or {}
        if st and "error" not in st:
            lines += [
                "",
                "Database work of one request of each kind (in-process, same database): SQL statements sent, "
                "pool checkouts (each adds a `SELECT 1` pre-ping round trip) and commits "
                "(each transaction also "
                "costs a BEGIN and a COMMIT round trip; a commit after an INSERT waits for the WAL flush).",
                "",
                "| request | HTTP | statements | checkouts | commits | statements by kind |",
                "|---|---:|---:|---:|---:|---|",
            ]
            for name, c in st.items():
                kinds = ", ".join(f"{k} {n}" for k, n in c.get("by_kind", {}).items())
                lines.append(
                    f"| {name} | {c.get('status')} | {c.get('statements', 0)} | {c.get('checkouts', 0)} | "
                    f"{c.get('commits', 0)} | {kinds} |"
                )
        elif st:
            lines += ["", f"(statement count failed: {st['error'][:300]})"]
        lines.append("")
    sq = results.get("sqlite")
    if sq:
        s = sq.get("setup", {})
        ms = sq.get("measurements", {})
        peer = sq.get("peer", {})
        lines += [
            f"### SQLite: ours next to {PEER_PACKAGE}, {s.get('patients', 0):,} patients",
            "",
            f"Both on SQLite files with the same {s.get('published', {}).get('Patient', 0):,} Patients and "
            f"{s.get('published', {}).get('Organization', 0)} Organizations "
            f"(ours: `seed_demo` {s.get('seed_s')} s + "
            f"`materialize` {s.get('publish_s')} s; peer: loaded through its own `Store.create` "
            f"{peer.get('load', {}).get('seconds', '?')} s). Ours: gunicorn as above. Peer: `sekmet serve -c "
            "bench/peer/settings.yaml` (one uvicorn process, its default; static bearer token, "
            "strict structural "
            "validation, simulator off, traffic log off as its docs advise for load).",
            "",
        ]
        if peer.get("error"):
            lines += [f"Peer could not be run: {peer['error'][:1200]}", ""]
        w, t = args["workers"], args["threads"]
        who_label = {
            "ours": f"ours ({w} workers x {t} threads)",
            "ours1w": f"ours (1 worker x {w * t} threads)",
            "peer": "sekmet-fhir (1 uvicorn process)",
        }
        lines += [
            "| measurement | server | /s | p50 / p95 ms | vs peer | target | |",
            "|---|---|---:|---:|---:|---|---|",
        ]
        rows = [
            ("Encounter create", "encounter_create", "per_s", TARGET_CREATE_VS_PEER),
            ("search Patient?identifier", "search_identifier", "p95", None),
            (
                "transaction Bundle, 10 entries (resources/s)",
                "bundle10",
                "resources_per_s",
                TARGET_BUNDLE_RESOURCES_VS_PEER,
            ),
        ]
        for label, key, metric, target in rows:
            p = ms.get(f"peer_{key}", {})
            for who in ("ours", "ours1w", "peer"):
                x = ms.get(f"{who}_{key}")
                if x is None:
                    continue
                value = "resources_per_s" if metric == "resources_per_s" else "per_s"
                if value not in x:
                    shown = (x.get("error") or x.get("skipped") or "not run")[:300].replace("|", "/")
                    lines.append(f"| {label} | {who_label[who]} | {shown} | | | | |")
                    continue
                bad = x["requests"] - x["ok"]
                rate = f"{x[value]}{f' [{bad} failed]' if bad else ''}"
                latency = f"{x['p50_ms']} / {x['p95_ms']}"
                if who == "peer":
                    lines.append(f"| {label} | {who_label[who]} | {rate} | {latency} | | | |")
                    continue
                if metric == "p95":
                    r = ratio(x.get("p95_ms"), p.get("p95_ms"))
                    vs = f"p95 {r}x" if r is not None else "-"
                    goal = "p95 no worse than peer"
                    met = verdict(x["p95_ms"] <= p["p95_ms"] if "p95_ms" in p else None)
                else:
                    r = ratio(x.get(value), p.get(value))
                    vs = f"{r}x" if r is not None else "-"
                    goal = f">= {target:.0f}x peer"
                    met = verdict(r >= target if r is not None and target else None)
                if who != "ours":
                    goal, met = "(variant)", ""
                lines.append(f"| {label} | {who_label[who]} | {rate} | {latency} | {vs} | {goal} | {met} |")
        cpus = [(k, v["cpu_pct_of_core"]) for k, v in ms.items() if "cpu_pct_of_core" in v]
        if cpus:
            lines += [
                "",
                "CPU split (% of one core, server/PostgreSQL/wrk/other): "
                + "; ".join(f"{k} {c['server']}/{c['postgres']}/{c['wrk']}/{c['other']}" for k, c in cpus)
                + ".",
            ]
        failures = [(k, v) for k, v in ms.items() if v.get("first_error")]
        if failures:
            lines += ["", "Errors seen (first one per measurement):"]
            lines += [f"- `{k}`: {v['first_error'][:300]}" for k, v in failures]
        lines.append("")
    profiles = (pg or {}).get("profiles", {})
    if profiles:
        lines += ["### Where the time goes (py-spy, CPU samples of the gunicorn workers, PostgreSQL)", ""]
        if profiles.get("skipped"):
            lines += [f"Not profiled: {profiles['skipped']}", ""]
        for name, p in profiles.items():
            if not isinstance(p, dict) or "buckets_pct" not in p:
                continue
            lines += [
                f"**{name}** ({p['samples_in_requests']} samples inside requests, "
                f"{p['per_s_while_sampled']}/s while "
                f"sampled; raw stacks `{p['file']}`). Share of request CPU, inclusive (buckets overlap):",
                "",
            ]
            lines += [f"- {label}: {pct} %" for label, pct in p["buckets_pct"] if pct >= 1.0]
            lines += [
                "",
                "Top functions by own CPU: "
                + "; ".join(f"`{n}` {pct} %" for n, pct in p["top_self_pct"][:10])
                + ".",
                "",
            ]
    if results.get("notes"):
        lines += ["### Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    return "\n".join(lines).rstrip() + "\n"


def target_lines(results: dict[str, Any]) -> list[str]:
    """One 'target ...: met/MISSED' line per target of the brief (for run_all.py's summary)."""
    out: list[str] = []
    pg = (results.get("postgres") or {}).get("measurements", {})
    sq = (results.get("sqlite") or {}).get("measurements", {})

    def line(label: str, value: float | None, goal: str, ok: bool | None) -> None:
        shown = "n/a" if value is None else f"{value}"
        out.append(
            f"target {label} {goal}: {shown} -> {'not measured' if ok is None else 'met' if ok else 'MISSED'}"
        )

    for label, ours, base in (
        ("Patient create", "patient_create", "baseline_insert_patient"),
        ("Encounter create", "encounter_create", "baseline_insert_encounter"),
    ):
        r = ratio(pg.get(ours, {}).get("per_s"), pg.get(base, {}).get("per_s"))
        line(
            f"{label} vs baseline insert",
            r,
            f">= {TARGET_CREATE_VS_BASELINE}x",
            None if r is None else r >= TARGET_CREATE_VS_BASELINE,
        )
    for label, ours in (
        ("read by id (township-his)", "patient_read"),
        ("read by id (county-platform)", "patient_read_platform"),
    ):
        r = ratio(pg.get(ours, {}).get("per_s"), pg.get("baseline_select", {}).get("per_s"))
        line(
            f"{label} vs baseline select",
            r,
            f">= {TARGET_READ_VS_BASELINE}x",
            None if r is None else r >= TARGET_READ_VS_BASELINE,
        )
    for label, key in (
        ("search by identifier p95 ms (township-his)", "search_identifier"),
        ("search by identifier p95 ms (county-platform)", "search_identifier_platform"),
    ):
        p95 = pg.get(key, {}).get("p95_ms")
        line(
            label, p95, f"<= {TARGET_SEARCH_P95_MS:.0f}", None if p95 is None else p95 <= TARGET_SEARCH_P95_MS
        )
    r = ratio(
        sq.get("ours_encounter_create", {}).get("per_s"), sq.get("peer_encounter_create", {}).get("per_s")
    )
    line(
        "SQLite Encounter creates vs sekmet-fhir",
        r,
        f">= {TARGET_CREATE_VS_PEER:.0f}x",
        None if r is None else r >= TARGET_CREATE_VS_PEER,
    )
    r = ratio(
        sq.get("ours_bundle10", {}).get("resources_per_s"), sq.get("peer_bundle10", {}).get("resources_per_s")
    )
    line(
        "SQLite transaction resources/s vs sekmet-fhir",
        r,
        f">= {TARGET_BUNDLE_RESOURCES_VS_PEER:.0f}x",
        None if r is None else r >= TARGET_BUNDLE_RESOURCES_VS_PEER,
    )
    o, p = (
        sq.get("ours_search_identifier", {}).get("p95_ms"),
        sq.get("peer_search_identifier", {}).get("p95_ms"),
    )
    line(
        "SQLite search p95 ms vs sekmet-fhir", o, f"<= peer ({p})", None if o is None or p is None else o <= p
    )
    return out


def write_section(markdown: str, path: Path = RESULTS) -> None:
    """Replace (or add) only the '## FHIR API' section of RESULTS.md."""
    if path.exists():
        text = path.read_text()
    else:
        text = (
            "# Benchmark results\n\nFigures from the scripts in bench/ (`make bench` runs them all). "
            "Each section belongs to its script and is rewritten by it.\n\n"
        )
    pattern = re.compile(rf"^## {re.escape(SECTION)}\s*$.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: markdown + "\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + markdown
    path.write_text(text.rstrip() + "\n")


def ensure_wrk() -> None:
    """Install wrk from Debian when we are root and apt-get is there (the load generator)."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    log("installing wrk (apt-get install wrk)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    quiet = {"capture_output": True, "timeout": 600, "env": env, "check": False}
    if subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], **quiet).returncode != 0:  # type: ignore[call-overload]
        subprocess.run(["apt-get", "update", "-q"], **quiet)  # type: ignore[call-overload]
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], **quiet)  # type: ignore[call-overload]


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1_000_000, help="PostgreSQL registry size")
    parser.add_argument(
        "--sqlite-patients", type=int, default=100_000, help="SQLite registry size (both servers)"
    )
    parser.add_argument("--seconds", type=int, default=20, help="measured seconds per load")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up seconds before each load")
    parser.add_argument("--clients", type=int, default=8, help="concurrent keep-alive connections")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (app and baseline)")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    parser.add_argument("--sample", type=int, default=5000, help="distinct patients per request list")
    parser.add_argument("--bundles", type=int, default=1000, help="distinct transaction Bundles")
    parser.add_argument("--profile-seconds", type=int, default=15)
    parser.add_argument(
        "--publish",
        choices=("copy", "materialize"),
        default="copy",
        help="PostgreSQL: publish with COPY (fast, same rows) or the service's materialize()",
    )
    parser.add_argument(
        "--materialize-sample",
        type=int,
        default=20000,
        help="with --publish copy: time materialize() on this many patients first (rolled back)",
    )
    parser.add_argument(
        "--server",
        default="host=127.0.0.1 port=5432 user=postgres dbname=postgres",
        help="libpq conninfo of the PostgreSQL server (scratch databases are made there)",
    )
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30,
        help="before each load, wait up to this many seconds for other work on the machine to stop (0: off)",
    )
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument(
        "--no-sqlite-single", action="store_true", help="skip our app with 1 worker x all threads on SQLite"
    )
    parser.add_argument("--no-results", action="store_true", help="do not touch bench/RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL database (debugging)")
    parser.add_argument(
        "--reuse-database",
        metavar="NAME",
        help="measure on a database kept by an earlier --keep run (no loading; iterating on the code)",
    )
    parser.add_argument(
        "--only", metavar="NAMES", help="comma-separated measurements to run (default: all)"
    )
    parser.add_argument("--max-minutes", type=float, default=80, help="skip remaining loads after this")
    args = parser.parse_args()

    if shutil.which("wrk") is None:
        ensure_wrk()
    if shutil.which("wrk") is None:
        print("bench_fhir.py needs wrk (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop servers, drop databases

    started = time.monotonic()
    budget = Budget(args.max_minutes)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    OUT.mkdir(parents=True, exist_ok=True)
    logs = OUT / f"fhir-{stamp}"
    logs.mkdir()
    results: dict[str, Any] = {
        "stamp": stamp,
        "machine": machine_info(),
        "args": {**vars(args), "cmdline": " ".join(sys.argv[1:]) or "(defaults)"},
        "notes": [],
    }
    with contextlib.suppress(Exception):
        import psycopg

        with psycopg.connect(args.server) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            results["machine"]["postgres"] = f"PostgreSQL {version.split()[0]}"
    status = 0
    with tempfile.TemporaryDirectory(prefix="bench-fhir-") as tmp:
        work = Path(tmp)
        loader = Loader(work, args.clients, args.seconds, args.warmup, args.wrk_threads, args.quiet_wait)
        try:
            if not args.skip_postgres:
                postgres_phase(args, loader, work, logs, results, budget)
            if not args.skip_sqlite:
                sqlite_phase(args, loader, work, logs, results, budget)
        except Exception as exc:  # record what happened, still write what was measured
            status = 1
            results["error"] = f"{type(exc).__name__}: {exc}"
            log(f"FAILED: {results['error']}")
            import traceback

            traceback.print_exc()
        finally:
            results["elapsed_min"] = round((time.monotonic() - started) / 60, 1)
            (OUT / f"fhir-{stamp}.json").write_text(json.dumps(results, indent=2, default=str))
            markdown = render(results)
            if results.get("error"):
                markdown += f"\nThe run stopped early: {results['error'][:500]}\n"
            print(markdown)
            print("\n".join(target_lines(results)))
            if not args.no_results:
                write_section(markdown)
                log(f"wrote the '{SECTION}' section of {RESULTS.relative_to(ROOT)}")
            log(
                f"raw figures: {(OUT / f'fhir-{stamp}.json').relative_to(ROOT)}; "
                f"logs: {logs.relative_to(ROOT)}"
            )
    return status


if __name__ == "__main__":
    sys.exit(main())
