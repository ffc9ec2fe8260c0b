"""The scheduler process (`flask scheduler run`): APScheduler 3 with its job store in the service database.

Only the process holding the scheduler lock (a PostgreSQL advisory lock; a file lock on SQLite)
schedules; any other waits on standby and takes over when the holder stops or loses its
connection, so with several scheduler processes each run happens once. Each run also takes the
job's own lock, so a run by hand (`flask jobs run`) never overlaps a scheduled one. Jobs are
coalesced and have a misfire grace time: after downtime a missed run happens once, at start-up.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_STOPPED

from ..domain.db import Database
from ..domain.monitoring import SchedulerJob
from .jobs import JobsConfig, run_job
from .locks import lock_for

log = logging.getLogger(__name__)

SCHEDULER_LOCK = "scheduler"
JOB_FUNCTION = f"{__name__}:run_scheduled"  # stored by reference in the job store
JOB_STORE_TABLE = SchedulerJob.__tablename__


@dataclass
class _Context:
    """What stored jobs need when they fire in this process."""

    db: Database | None = None
    config: JobsConfig | None = None


_context = _Context()


def run_scheduled(name: str) -> None:
    """Entry point of every stored job: run the named job from the current jobs file."""
    config, db = _context.config, _context.db
    spec = config.get(name) if config else None
    if spec is None or db is None or config is None:
        log.error("scheduled job %s is not in the jobs file any more; nothing run", name)
        return
    run_job(db, spec, config.timezone, trigger="scheduled")


class _JobStore(SQLAlchemyJobStore):
    """The job store on the service's own engine, which must outlive the scheduler."""

    def shutdown(self) -> None:
        """Leave the shared engine alone (APScheduler's store would dispose of its pool)."""


class _Scheduler(BackgroundScheduler):
    """A BackgroundScheduler that processes no due job once it is stopping: APScheduler 3 would hand it
    to the stopped executor and count it as run, losing a run at every shutdown that meets one."""

    def _process_jobs(self) -> float | None:
        if self.state == STATE_STOPPED:
            return None
        wait: float | None = super()._process_jobs()
        return wait


def build_scheduler(db: Database, config: JobsConfig, *, workers: int = 4) -> BackgroundScheduler:
    """A scheduler whose job store is the `scheduler_job` table of the service database."""
    return _Scheduler(
        jobstores={"default": _JobStore(engine=db.engine, tablename=JOB_STORE_TABLE)},
        executors={"default": ThreadPoolExecutor(workers)},
        job_defaults={"coalesce": True, "max_instances": 1},
        timezone=config.timezone,
    )


def sync_jobs(scheduler: BackgroundScheduler, config: JobsConfig) -> list[str]:
    """Make the job store match the jobs file; unchanged jobs keep their next run time (and so a
    run missed while the scheduler was down). Returns what changed."""
    changes = []
    for spec in config.jobs:
        trigger = spec.build_trigger(config.timezone)
        existing = scheduler.get_job(spec.name)
        if (
            existing is not None
            and str(existing.trigger) == str(trigger)
            and str(getattr(existing.trigger, "timezone", "")) == str(getattr(trigger, "timezone", ""))
            and existing.misfire_grace_time == spec.misfire_grace_seconds
            and existing.func_ref == JOB_FUNCTION
            and tuple(existing.args) == (spec.name,)
        ):
            continue
        scheduler.add_job(
            JOB_FUNCTION, trigger=trigger, args=[spec.name], id=spec.name, name=spec.name,
            replace_existing=True, coalesce=True, max_instances=1,
            misfire_grace_time=spec.misfire_grace_seconds,
        )
        changes.append(f"{'changed' if existing else 'added'} {spec.name}")
    for job in scheduler.get_jobs():
        if config.get(job.id) is None:
            scheduler.remove_job(job.id)
            changes.append(f"removed {job.id}")
    return changes


def start(db: Database, config: JobsConfig) -> BackgroundScheduler:
    """Start scheduling: sync the store while paused, then resume (due and missed runs fire now)."""
    _context.db, _context.config = db, config
    scheduler = build_scheduler(db, config)
    scheduler.start(paused=True)
    for change in sync_jobs(scheduler, config):
        log.info("scheduler: %s", change)
    scheduler.resume()
    for job in scheduler.get_jobs():
        log.info("scheduler: %s next at %s", job.id, job.next_run_time)
    return scheduler


def run_forever(db: Database, config: JobsConfig, stop: threading.Event, *, heartbeat: float = 10,
                standby: float = 15) -> None:
    """Schedule while holding the scheduler lock; stand by while another process holds it."""
    lock = lock_for(db.engine, SCHEDULER_LOCK)
    waiting_logged = False
    while not stop.is_set():
        try:
            leader = lock.acquire()
        except Exception as exc:  # the database is down: try again later
            log.warning("scheduler: cannot reach the database for the lock (%s); retrying", exc)
            stop.wait(standby)
            continue
        if not leader:
            if not waiting_logged:
                log.info("scheduler: another scheduler process holds the lock; standing by")
                waiting_logged = True
            stop.wait(standby)
            continue
        waiting_logged = False
        log.info("scheduler: lock taken at %s; scheduling %d job(s)", datetime.now(UTC).isoformat(),
                 len(config.jobs))
        scheduler = None
        try:
            scheduler = start(db, config)
            while not stop.wait(heartbeat):
                if not lock.alive():
                    log.error("scheduler: lock lost (database connection gone); stopping and standing by")
                    break
        except Exception:
            log.exception("scheduler: stopped by an error; standing by")
            stop.wait(standby)
        finally:
            if scheduler is not None and scheduler.running:
                scheduler.shutdown(wait=True)
            lock.release()
    log.info("scheduler: stopped")
