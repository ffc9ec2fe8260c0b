"""Scheduled jobs as data (config/jobs.toml) and the one way every job runs: locked, in its own unit of
work, recorded in job_run, and never raising (a failure is logged with its error and recorded)."""

from __future__ import annotations

import importlib
import logging
import os
import re
import socket
import tomllib
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import func, select, update

from ..domain.db import Database
from ..domain.monitoring import JobRun, SchedulerJob
from .locks import lock_for

log = logging.getLogger(__name__)

ARGUMENTS = ("now", "today")
TRIGGER_FIELDS = {
    "interval": ("weeks", "days", "hours", "minutes", "seconds"),
    "cron": ("month", "day", "week", "day_of_week", "hour", "minute", "second"),
}
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class JobsConfigError(ValueError):
    """The jobs file is invalid (names the file, job and field)."""


@dataclass(frozen=True)
class JobSpec:
    """One scheduled job: what it calls, with which argument, and when."""

    name: str
    target: str  # "module:function", called as function(session, argument)
    argument: str  # now | today
    trigger: str  # interval | cron
    trigger_args: Mapping[str, int | str]
    misfire_grace_seconds: int
    description: str = ""

    def build_trigger(self, timezone: str) -> BaseTrigger:
        """The APScheduler trigger of the job."""
        if self.trigger == "interval":
            return IntervalTrigger(timezone=timezone, **self.trigger_args)
        return CronTrigger(timezone=timezone, **self.trigger_args)


@dataclass(frozen=True)
class JobsConfig:
    """Every scheduled job and the time zone their triggers and dates use."""

    timezone: str
    jobs: tuple[JobSpec, ...] = field(default_factory=tuple)

    def get(self, name: str) -> JobSpec | None:
        """The job of that name, if any."""
        return next((j for j in self.jobs if j.name == name), None)

    @property
    def names(self) -> list[str]:
        """Job names in file order."""
        return [j.name for j in self.jobs]


def parse_jobs(data: Mapping[str, Any], source: str = "jobs config") -> JobsConfig:
    """Jobs from parsed TOML; every problem raises JobsConfigError naming the job and field."""
    unknown = set(data) - {"timezone", "job"}
    if unknown:
        raise JobsConfigError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}")
    timezone = data.get("timezone", "Asia/Shanghai")
    try:
        ZoneInfo(str(timezone))
    except (ZoneInfoNotFoundError, ValueError):
        raise JobsConfigError(f"{source}: unknown timezone {timezone!r}") from None
    jobs: list[JobSpec] = []
    for i, raw in enumerate(data.get("job", [])):
        where = f"{source}: job {raw.get('name', f'#{i + 1}')!r}"
        spec = _parse_job(where, raw)
        if any(j.name == spec.name for j in jobs):
            raise JobsConfigError(f"{where}: the name is used twice")
        try:
            spec.build_trigger(str(timezone))
        except (TypeError, ValueError) as exc:
            raise JobsConfigError(f"{where}: invalid {spec.trigger} trigger: {exc}") from None
        jobs.append(spec)
    return JobsConfig(str(timezone), tuple(jobs))


def _parse_job(where: str, raw: Mapping[str, Any]) -> JobSpec:
    base = {"name", "target", "argument", "trigger", "misfire_grace_seconds", "description"}
    name, target, argument, trigger = (raw.get(k) for k in ("name", "target", "argument", "trigger"))
    if not isinstance(name, str) or not _NAME.match(name):
        raise JobsConfigError(f"{where}: name must be lower-case letters, digits and dashes")
    if not isinstance(target, str) or not _TARGET.match(target):
        raise JobsConfigError(f"{where}: target must be 'package.module:function', got {target!r}")
    if argument not in ARGUMENTS:
        raise JobsConfigError(f"{where}: argument must be one of {', '.join(ARGUMENTS)}, got {argument!r}")
    if trigger not in TRIGGER_FIELDS:
        raise JobsConfigError(f"{where}: trigger must be interval or cron, got {trigger!r}")
    trigger_args = {k: v for k, v in raw.items() if k not in base}
    bad = sorted(set(trigger_args) - set(TRIGGER_FIELDS[trigger]))
    if bad:
        raise JobsConfigError(f"{where}: unknown field(s) {', '.join(bad)} for a {trigger} trigger "
                              f"(known: {', '.join(TRIGGER_FIELDS[trigger])})")
    if not trigger_args:
        raise JobsConfigError(f"{where}: the {trigger} trigger needs at least one of "
                              f"{', '.join(TRIGGER_FIELDS[trigger])}")
    grace = raw.get("misfire_grace_seconds", 3600)
    if isinstance(grace, bool) or not isinstance(grace, int) or grace < 1:
        raise JobsConfigError(f"{where}: misfire_grace_seconds must be a whole number >= 1")
    description = str(raw.get("description", ""))
    return JobSpec(name, target, str(argument), str(trigger), trigger_args, grace, description)


def load_jobs(path: Path) -> JobsConfig:
    """Read and check a jobs file."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise JobsConfigError(f"{path}: no such jobs file") from None
    except tomllib.TOMLDecodeError as exc:
        raise JobsConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_jobs(data, str(path))


# ------------------------------------------------------------------------------ running one job


@dataclass(frozen=True)
class RunResult:
    """How one run ended."""

    name: str
    outcome: str  # success, failure, skipped
    summary: str | None = None
    error: str | None = None


def runner_name() -> str:
    """host:pid of this process (recorded with each run)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def job_argument(spec: JobSpec, timezone: str, now: datetime | None = None) -> datetime | date:
    """The argument the job's target receives: now (UTC) or today's date in the time zone."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return now if spec.argument == "now" else now.astimezone(ZoneInfo(timezone)).date()


def resolve_target(target: str) -> Callable[..., Any]:
    """The function named 'module:function'; LookupError saying what is missing."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise LookupError(f"target {target} is not available: {exc}") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise LookupError(f"target {target} is not available: {module_name} has no function {attr}")
    return function


def _summary(result: Any) -> str | None:
    if result is None:
        return None
    if isinstance(result, list | tuple):
        return f"{len(result)} item(s)" + (f": {', '.join(map(str, result[:3]))}" if result else "")
    return str(result)


def _record(db: Database, **values: Any) -> int:
    with db.unit_of_work() as session:
        run = JobRun(runner=runner_name(), **values)
        session.add(run)
        session.flush()
        return run.id


def run_job(db: Database, spec: JobSpec, timezone: str, *, trigger: str = "scheduled",
            now: datetime | None = None) -> RunResult:
    """Run one job now, once: under its lock, in its own unit of work, recorded; never raises."""
    lock = lock_for(db.engine, f"job:{spec.name}")
    try:
        if not lock.acquire():
            log.warning("job %s is already running in another process: this run is skipped", spec.name)
            message = "already running elsewhere"
            _record(db, name=spec.name, trigger=trigger, outcome="skipped", summary=message,
                    finished_at=datetime.now(UTC))
            return RunResult(spec.name, "skipped", message)
    except Exception as exc:  # the database is down: nothing can be run or recorded
        log.exception("job %s could not start: %s", spec.name, exc)
        return RunResult(spec.name, "failure", error=f"{type(exc).__name__}: {exc}")
    try:
        run_id = _record(db, name=spec.name, trigger=trigger, outcome="running")
        log.info("job %s started (%s)", spec.name, trigger)
        try:
            function = resolve_target(spec.target)
            argument = job_argument(spec, timezone, now)
            with db.unit_of_work() as session:
                summary = _summary(function(session, argument))
            result = RunResult(spec.name, "success", summary[:500] if summary else None)
            log.info("job %s succeeded: %s", spec.name, summary or "done")
        except Exception as exc:
            log.error("job %s failed: %s: %s", spec.name, type(exc).__name__, exc, exc_info=True)
            result = RunResult(spec.name, "failure", error=traceback.format_exc()[-4000:])
        with db.unit_of_work() as session:
            session.execute(
                update(JobRun).where(JobRun.id == run_id).values(
                    outcome=result.outcome, summary=result.summary, error=result.error,
                    finished_at=datetime.now(UTC))
            )
        return result
    except Exception as exc:
        log.exception("job %s could not be recorded: %s", spec.name, exc)
        return RunResult(spec.name, "failure", error=f"{type(exc).__name__}: {exc}")
    finally:
        lock.release()


# ------------------------------------------------------------------------------ status


@dataclass(frozen=True)
class JobStatus:
    """What `flask jobs list` shows for one job."""

    spec: JobSpec
    next_run: datetime | None
    scheduled: bool  # the next run comes from the scheduler's store (else computed from the trigger)
    last: JobRun | None


def job_statuses(db: Database, config: JobsConfig, now: datetime | None = None) -> list[JobStatus]:
    """Each job's next run time (from the job store) and its last run."""
    now = now or datetime.now(UTC)
    tz = ZoneInfo(config.timezone)
    with db.unit_of_work() as session:
        stored = dict(session.execute(select(SchedulerJob.id, SchedulerJob.next_run_time)).all())
        latest = (
            select(JobRun.name, func.max(JobRun.id).label("id")).group_by(JobRun.name).subquery()
        )
        last = {r.name: r for r in session.scalars(select(JobRun).join(latest, latest.c.id == JobRun.id))}
    statuses = []
    for spec in config.jobs:
        if spec.name in stored:
            ts = stored[spec.name]
            next_run = None if ts is None else datetime.fromtimestamp(ts, UTC).astimezone(tz)
            statuses.append(JobStatus(spec, next_run, True, last.get(spec.name)))
        else:
            computed = spec.build_trigger(config.timezone).get_next_fire_time(None, now.astimezone(tz))
            statuses.append(JobStatus(spec, computed, False, last.get(spec.name)))
    return statuses
