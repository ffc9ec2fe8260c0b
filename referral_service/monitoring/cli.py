"""Flask commands: `flask scheduler run`, `flask jobs list`, `flask jobs run NAME`."""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from zoneinfo import ZoneInfo

import click
from flask import Flask, current_app

from ..config import PROJECT_ROOT
from ..extensions import database
from .jobs import JobsConfig, JobsConfigError, job_statuses, load_jobs, run_job
from .scheduler import run_forever


def jobs_config() -> JobsConfig:
    """The jobs file named by JOBS_CONFIG (relative to the project root unless absolute)."""
    path = Path(current_app.config["JOBS_CONFIG"])
    try:
        return load_jobs(path if path.is_absolute() else PROJECT_ROOT / path)
    except JobsConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _when(value: str | None, timezone: str) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"not an ISO date or date-time: {value!r}", param_hint="--at") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(timezone))
    return moment.astimezone(UTC)


def register(app: Flask) -> None:
    """Attach the scheduler and jobs command groups."""

    @app.cli.group("scheduler")
    def scheduler() -> None:
        """The scheduler process."""

    @scheduler.command("run")
    def scheduler_run() -> None:
        """Run the scheduler in the foreground until SIGTERM or Ctrl-C (one leader among processes)."""
        config = jobs_config()
        stop = threading.Event()

        def _stop(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        click.echo(f"scheduler: {len(config.jobs)} job(s) from the jobs file; Ctrl-C to stop")
        run_forever(database, config, stop, heartbeat=float(app.config["SCHEDULER_HEARTBEAT_SECONDS"]),
                    standby=float(app.config["SCHEDULER_STANDBY_SECONDS"]))

    @app.cli.group("jobs")
    def jobs() -> None:
        """Scheduled jobs: list them, run one by hand."""

    @jobs.command("list")
    def jobs_list() -> None:
        """Each job: schedule, next run time, last run and its result."""
        config = jobs_config()
        for status in job_statuses(database, config):
            spec, last = status.spec, status.last
            trigger = ", ".join(f"{k}={v}" for k, v in spec.trigger_args.items())
            click.echo(f"{spec.name}  ({spec.trigger}: {trigger})  {spec.description}")
            when = status.next_run.isoformat(timespec="seconds") if status.next_run else "never"
            click.echo(f"    next run: {when}" + ("" if status.scheduled else " (not yet in the scheduler)"))
            if last is None:
                click.echo("    last run: never")
                continue
            took = ""
            if last.finished_at is not None:
                took = f", {(last.finished_at - last.started_at).total_seconds():.1f} s"
            started = last.started_at.astimezone(ZoneInfo(config.timezone)).isoformat(timespec="seconds")
            click.echo(f"    last run: {started} {last.trigger} on {last.runner}: {last.outcome}{took}")
            if last.summary:
                click.echo(f"      {last.summary}")
            if last.error:
                click.echo(f"      error: {last.error.strip().splitlines()[-1]}")

    @jobs.command("run")
    @click.argument("name")
    @click.option("--at", "at", default=None,
                  help="Run as if it were this ISO date or date-time (default: now), e.g. 2024-07-01")
    def jobs_run(name: str, at: str | None) -> None:
        """Run the job NAME now, once (it waits for nobody: skipped if it is already running)."""
        config = jobs_config()
        spec = config.get(name)
        if spec is None:
            raise click.UsageError(f"no job {name!r}; jobs: {', '.join(config.names)}")
        result = run_job(database, spec, config.timezone, trigger="manual", now=_when(at, config.timezone))
        click.echo(f"{name}: {result.outcome}" + (f": {result.summary}" if result.summary else ""))
        if result.error:
            click.echo(result.error, err=True)
        if result.outcome != "success":
            raise SystemExit(1)

