"""Scheduled jobs: jobs as data, one run per scheduled time across two real scheduler processes, a missed
run after downtime, failures that do not stop other jobs, and the CLI (both engines)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from referral_service.config import PROJECT_ROOT
from referral_service.domain.monitoring import JobRun, SchedulerJob
from referral_service.extensions import database
from referral_service.monitoring import scheduler as sched
from referral_service.monitoring.jobs import (
    JobsConfig,
    JobsConfigError,
    job_statuses,
    load_jobs,
    parse_jobs,
    run_job,
)
from referral_service.monitoring.locks import lock_for

HERE = "tests.integration.test_scheduler"
TICKS: list[Any] = []


def tick(session: Session, argument: Any) -> str:
    """A job target that only counts its runs."""
    TICKS.append(argument)
    return f"tick {len(TICKS)}"


def explode(session: Session, argument: Any) -> None:
    """A job target that always fails."""
    raise RuntimeError("boom: the export server is unreachable")


def config_of(*jobs: dict[str, Any], timezone: str = "Asia/Shanghai") -> JobsConfig:
    return parse_jobs({"timezone": timezone, "job": list(jobs)})


def job(
    name: str,
    target: str,
    *,
    argument: str = "now",
    trigger: str = "interval",
    misfire_grace_seconds: int = 3600,
    **fields: Any,
) -> dict[str, Any]:
    return {
        "name": name,
        "target": target,
        "argument": argument,
        "trigger": trigger,
        "misfire_grace_seconds": misfire_grace_seconds,
        **fields,
    }


def runs(name: str | None = None) -> list[JobRun]:
    with database.unit_of_work() as session:
        stmt = select(JobRun).order_by(JobRun.id)
        return list(session.scalars(stmt.where(JobRun.name == name) if name else stmt))


def wait_for(condition: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


@pytest.fixture(autouse=True)
def _fresh_ticks() -> Iterator[None]:
    TICKS.clear()
    yield
    TICKS.clear()


# ------------------------------------------------------------------- jobs as data


def test_the_shipped_jobs_file() -> None:
    config = load_jobs(PROJECT_ROOT / "config" / "jobs.toml")
    assert config.timezone == "Asia/Shanghai"
    assert config.names == [
        "referral-timeouts",
        "follow-up-reminders",
        "payment-delays",
        "poverty-risk",
        "monthly-export",
    ]
    spec = config.get("referral-timeouts")
    assert spec is not None and str(spec.build_trigger(config.timezone)) == "interval[0:15:00]"
    export = config.get("monthly-export")
    assert export is not None and export.target == "referral_service.exports.jobs:monthly_export"
    assert str(export.build_trigger(config.timezone)) == "cron[day='1', hour='3', minute='0']"
    for name in ("follow-up-reminders", "payment-delays", "poverty-risk"):
        found = config.get(name)
        assert found is not None and found.trigger == "cron" and "day" not in found.trigger_args


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"job": [job("x", f"{HERE}:tick", minutes=1), job("x", f"{HERE}:tick", minutes=2)]}, "used twice"),
        ({"job": [job("x", "no-colon", minutes=1)]}, "target must be"),
        ({"job": [job("x", f"{HERE}:tick", minutes=1, argument="yesterday")]}, "argument must be"),
        ({"job": [job("x", f"{HERE}:tick", trigger="cron", hour=25)]}, "invalid cron trigger"),
        ({"job": [job("x", f"{HERE}:tick", trigger="cron", minutes=5)]}, "unknown field(s) minutes"),
        ({"job": [job("Bad Name", f"{HERE}:tick", minutes=1)]}, "name must be"),
        ({"timezone": "Mars/Olympus"}, "unknown timezone"),
        ({"jobz": []}, "unknown key"),
    ],
)
def test_a_broken_jobs_file_names_the_problem(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(JobsConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_jobs(raw)


# ------------------------------------------------------------------- running one job


def test_a_run_is_recorded_with_its_result(app: Flask) -> None:
    config = config_of(job("tick", f"{HERE}:tick", argument="today", minutes=5))
    spec = config.get("tick")
    assert spec is not None
    result = run_job(
        database, spec, config.timezone, trigger="manual", now=datetime(2024, 6, 30, 17, 0, tzinfo=UTC)
    )
    assert (result.outcome, result.summary) == ("success", "tick 1")
    assert [date(2024, 7, 1)] == TICKS  # 17:00 UTC is already the next day in Shanghai
    [run] = runs("tick")
    assert (run.outcome, run.trigger, run.summary, run.error) == ("success", "manual", "tick 1", None)
    assert run.finished_at is not None and run.runner.endswith(f":{os.getpid()}")


def test_a_failing_job_is_logged_and_recorded(app: Flask) -> None:
    config = config_of(
        job("boom", f"{HERE}:explode", minutes=5),
        job("later", "referral_service.not_there:monthly_export", minutes=5),
    )
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("referral_service.monitoring.jobs").addHandler(handler)
    try:
        boom = run_job(database, config.jobs[0], config.timezone)
        missing = run_job(database, config.jobs[1], config.timezone)
    finally:
        logging.getLogger("referral_service.monitoring.jobs").removeHandler(handler)
    assert boom.outcome == "failure" and boom.error and "RuntimeError: boom" in boom.error
    assert missing.outcome == "failure" and missing.error
    assert "target referral_service.not_there:monthly_export is not available" in missing.error
    messages = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    assert "job boom failed: RuntimeError: boom: the export server is unreachable" in messages
    assert [r.outcome for r in runs()] == ["failure", "failure"]


def test_a_job_never_runs_twice_at_once(app: Flask) -> None:
    config = config_of(job("tick", f"{HERE}:tick", minutes=5))
    lock = lock_for(database.engine, "job:tick")  # another process is running it
    assert lock.acquire()
    try:
        result = run_job(database, config.jobs[0], config.timezone)
    finally:
        lock.release()
    assert (result.outcome, TICKS) == ("skipped", [])
    assert [(r.outcome, r.summary) for r in runs("tick")] == [("skipped", "already running elsewhere")]
    assert run_job(database, config.jobs[0], config.timezone).outcome == "success"


# ------------------------------------------------------------------- the scheduler in this process


def test_a_failing_job_does_not_stop_the_others(app: Flask) -> None:
    config = config_of(job("boom", f"{HERE}:explode", seconds=1), job("tick", f"{HERE}:tick", seconds=1))
    scheduler = sched.start(database, config)
    try:
        wait_for(lambda: len(TICKS) >= 3 and sum(r.outcome == "failure" for r in runs("boom")) >= 3)
    finally:
        scheduler.shutdown(wait=True)
    assert {r.outcome for r in runs("boom")} == {"failure"}
    assert {r.outcome for r in runs("tick")} == {"success"}


def test_a_run_missed_during_downtime_runs_once_at_start_up(app: Flask) -> None:
    config = config_of(job("tick", f"{HERE}:tick", hours=1, misfire_grace_seconds=4 * 3600))
    # the job as stored by a scheduler that then "was down" for three hours: three runs were missed
    scheduler = sched.build_scheduler(database, config)
    scheduler.start(paused=True)  # paused throughout: it runs nothing
    sched.sync_jobs(scheduler, config)
    scheduler.modify_job("tick", next_run_time=datetime.now(UTC) - timedelta(hours=3, seconds=1))
    scheduler.shutdown(wait=True)
    assert TICKS == []

    restarted = sched.start(database, config)
    try:
        wait_for(lambda: len(runs("tick")) >= 1 and runs("tick")[0].outcome != "running")
        time.sleep(1.5)  # no second catch-up run follows
        next_run = restarted.get_job("tick").next_run_time
    finally:
        restarted.shutdown(wait=True)
    assert [r.outcome for r in runs("tick")] == ["success"] and len(TICKS) == 1
    assert next_run > datetime.now(UTC) + timedelta(minutes=55)


def test_restarting_keeps_the_schedule_and_follows_the_jobs_file(app: Flask) -> None:
    first = config_of(job("tick", f"{HERE}:tick", hours=1), job("gone", f"{HERE}:tick", hours=2))
    scheduler = sched.start(database, first)
    before = scheduler.get_job("tick").next_run_time
    scheduler.shutdown(wait=True)
    second = config_of(job("tick", f"{HERE}:tick", hours=1), job("new", f"{HERE}:tick", hours=3))
    scheduler = sched.start(database, second)
    try:
        assert scheduler.get_job("tick").next_run_time == before  # unchanged job: same next run
        assert sorted(j.id for j in scheduler.get_jobs()) == ["new", "tick"]
    finally:
        scheduler.shutdown(wait=True)
    with database.unit_of_work() as session:
        assert sorted(session.scalars(select(SchedulerJob.id))) == ["new", "tick"]


def test_a_standby_scheduler_waits_for_the_lock(app: Flask) -> None:
    config = config_of(job("tick", f"{HERE}:tick", seconds=1))
    holder = lock_for(database.engine, sched.SCHEDULER_LOCK)
    assert holder.acquire()
    stop = threading.Event()
    thread = threading.Thread(
        target=sched.run_forever, args=(database, config, stop), kwargs={"heartbeat": 0.2, "standby": 0.2}
    )
    thread.start()
    try:
        time.sleep(2)
        assert TICKS == []  # on standby: nothing scheduled
        holder.release()
        wait_for(lambda: len(TICKS) >= 1)
    finally:
        stop.set()
        thread.join(timeout=20)
        holder.release()
    assert not thread.is_alive()


# ------------------------------------------------------------------- two real scheduler processes


def _scheduler_process(url: str, jobs_file: Path, log_file: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "ENV": "testing",
        "JOBS_CONFIG": str(jobs_file),
        "LOG_LEVEL": "INFO",
        "LOG_JSON": "false",
        "SCHEDULER_HEARTBEAT_SECONDS": "1",
        "SCHEDULER_STANDBY_SECONDS": "1",
    }
    with log_file.open("wb") as out:  # the child keeps its own handle
        return subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "referral_service:create_app", "scheduler", "run"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_two_scheduler_processes_run_each_job_once(app: Flask, tmp_path: Path) -> None:
    jobs_file = tmp_path / "jobs.toml"
    jobs_file.write_text(
        'timezone = "Asia/Shanghai"\n[[job]]\nname = "referral-timeouts"\n'
        'target = "referral_service.services.alerts:scan_referral_timeouts"\nargument = "now"\n'
        'trigger = "interval"\nseconds = 1\nmisfire_grace_seconds = 60\n'
    )
    url = database.engine.url.render_as_string(hide_password=False)
    first = _scheduler_process(url, jobs_file, tmp_path / "first.log")
    second = None
    try:
        wait_for(lambda: len(runs()) >= 1, seconds=60)
        second = _scheduler_process(url, jobs_file, tmp_path / "second.log")
        wait_for(lambda: "standing by" in (tmp_path / "second.log").read_text(), seconds=60)
        time.sleep(4)
        together = runs()
        # while the leader lives, the standby runs nothing
        assert {r.runner.rsplit(":", 1)[1] for r in together} == {str(first.pid)}
        assert all(r.outcome in ("success", "running") for r in together)

        _stop(first)  # the standby takes over
        wait_for(lambda: any(r.runner.endswith(f":{second.pid}") for r in runs()), seconds=60)
    finally:
        _stop(first)
        if second is not None:
            _stop(second)
    by_runner = {r.runner.rsplit(":", 1)[1] for r in runs()}
    assert by_runner == {str(first.pid), str(second.pid)}
    assert first.returncode == 0, (tmp_path / "first.log").read_text()
    everything = runs()
    assert {r.outcome for r in everything} == {"success"}
    # one run per one-second slot: never two at once, never more runs than slots
    for a, b in pairwise(everything):
        assert a.finished_at is not None and b.started_at >= a.finished_at, (a.runner, b.runner)
    span = (everything[-1].started_at - everything[0].started_at).total_seconds()
    assert len(everything) <= span + 2, [(r.runner, r.started_at) for r in everything]


# ------------------------------------------------------------------- the CLI


def test_jobs_list_and_run_from_the_command_line(
    app: Flask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = app.test_cli_runner()
    listed = cli.invoke(args=["jobs", "list"])
    assert listed.exit_code == 0, listed.output
    for name in (
        "referral-timeouts",
        "follow-up-reminders",
        "payment-delays",
        "poverty-risk",
        "monthly-export",
    ):
        assert name in listed.output
    assert "last run: never" in listed.output and "(not yet in the scheduler)" in listed.output

    ran = cli.invoke(args=["jobs", "run", "poverty-risk", "--at", "2024-06-30"])
    assert ran.exit_code == 0, ran.output
    assert "poverty-risk: success: poverty-risk as of 2024-06-30: 0 found, 0 raised" in ran.output
    listed = cli.invoke(args=["jobs", "list"])
    assert "manual on" in listed.output and ": success" in listed.output

    unknown = cli.invoke(args=["jobs", "run", "nap"])
    assert unknown.exit_code == 2 and "referral-timeouts" in unknown.output

    jobs_file = tmp_path / "jobs.toml"
    jobs_file.write_text(
        f'[[job]]\nname = "boom"\ntarget = "{HERE}:explode"\nargument = "now"\n'
        'trigger = "interval"\nminutes = 5\n'
    )
    monkeypatch.setitem(app.config, "JOBS_CONFIG", str(jobs_file))
    failed = cli.invoke(args=["jobs", "run", "boom"])
    assert failed.exit_code == 1 and "boom: failure" in failed.output
    listed = cli.invoke(args=["jobs", "list"])
    assert "error: RuntimeError: boom: the export server is unreachable" in listed.output
    with database.unit_of_work() as session:
        assert session.scalar(select(func.count()).select_from(JobRun)) == 2


def test_jobs_list_shows_the_stored_next_run(app: Flask) -> None:
    config = config_of(job("tick", f"{HERE}:tick", hours=1))
    scheduler = sched.start(database, config)
    expected = scheduler.get_job("tick").next_run_time
    scheduler.shutdown(wait=True)
    [status] = job_statuses(database, config)
    assert status.scheduled and status.next_run is not None
    assert abs((status.next_run - expected).total_seconds()) < 0.001
