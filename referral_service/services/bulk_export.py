"""FHIR Bulk Data `$export`: jobs kept in the database, NDJSON files, a worker that claims its job.

State lives in `bulk_export_job`, so any process can answer a status poll. The worker claims a job
with one conditional UPDATE (accepted -> in-progress), reads in short keyset-paged transactions
(no long transaction holds a lock, SQLite included) and beats a heartbeat after every page; the
heartbeat is conditional on the claim, so a cancelled or failed job stops its worker at the next
page. A job never claimed (its process died before the worker started) is started again by the
next poll; a claimed job whose heartbeat is older than the stuck limit is failed with a message.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import false, select, update
from sqlalchemy.orm import Session

from ..domain.actor import Actor
from ..domain.base import new_id, utcnow
from ..domain.errors import BadRequest, Forbidden, Gone, NotFound
from ..domain.exports import BulkExportJob, ExportLog
from ..domain.fhir_store import StoredResource
from ..fhir.resources import RESOURCES
from ..fhir.store import instant, now_ms, visible
from .actors import actor_for
from .resources import audit

log = logging.getLogger(__name__)

BULK_TYPES = ("Patient", "Coverage", "Claim", "ClaimResponse", "ExplanationOfBenefit")
OUTPUT_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
PAGE_SIZE = 1000
OpenSession = Callable[[], AbstractContextManager[Session]]


@dataclass(frozen=True)
class BulkSettings:
    """Where files go, how long they live, when a silent job counts as stuck."""

    directory: Path
    ttl: timedelta = timedelta(hours=24)
    stuck_after: timedelta = timedelta(minutes=10)
    resume_after: timedelta = timedelta(seconds=30)
    page_size: int = PAGE_SIZE

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> BulkSettings:
        """From the app settings: EXPORT_DIR, BULK_EXPORT_TTL_HOURS, BULK_EXPORT_STUCK_MINUTES."""
        from ..config import PROJECT_ROOT

        def setting(key: str, default: Any) -> Any:
            return settings.get(key) or os.environ.get(key) or default

        base = Path(str(setting("EXPORT_DIR", "instance/exports")))
        base = base if base.is_absolute() else PROJECT_ROOT / base
        return cls(
            directory=base / "bulk",
            ttl=timedelta(hours=float(setting("BULK_EXPORT_TTL_HOURS", 24))),
            stuck_after=timedelta(minutes=float(setting("BULK_EXPORT_STUCK_MINUTES", 10))),
        )


def supported_types() -> list[str]:
    """The exportable types this server has registered."""
    return [t for t in BULK_TYPES if t in RESOURCES]


def kick_off(
    session: Session,
    actor: Actor,
    *,
    level: str,
    types: list[str] | None,
    since: datetime | None,
    request_url: str,
    may_read: Callable[[str], bool],
    request_id: str | None = None,
) -> BulkExportJob:
    """Accept an export request: check the types against what exists and what the caller may read."""
    supported = supported_types()
    if types:
        unknown = [t for t in types if t not in supported]
        if unknown:
            raise BadRequest(
                f"_type {', '.join(unknown)} cannot be exported; exportable: {', '.join(supported)}"
            )
        refused = [t for t in types if not may_read(t)]
        if refused:
            raise Forbidden(f"the token's scopes do not allow reading {', '.join(refused)}")
        chosen = list(dict.fromkeys(types))
    else:
        chosen = [t for t in supported if may_read(t)]
        if not chosen:
            raise Forbidden("the token's scopes allow reading none of the exportable types")
    if actor.organization_id is None:
        raise Forbidden("a bulk export needs a client acting for an organisation")
    job = BulkExportJob(
        id=new_id(), status="accepted", level=level, types=chosen, since=since,
        request_url=request_url[:2000], client_id=actor.name, organization_id=actor.organization_id,
        created_at=utcnow(), attempts=0, output=[],
    )
    session.add(job)
    audit(session, actor, action="E", interaction="operation", entity_type=None,
          query=request_url, request_id=request_id)
    session.flush()
    return job


def _job(session: Session, client_id: str, job_id: str) -> BulkExportJob:
    job = session.get(BulkExportJob, job_id)
    if job is None or job.client_id != client_id or job.status == "cancelled":
        raise NotFound(f"no export job {job_id}")
    return job


def poll(session: Session, client_id: str, job_id: str, settings: BulkSettings,
         now: datetime | None = None) -> BulkExportJob:
    """The caller's job, after failing it when stuck and expiring its files when too old (commit after)."""
    now = now or utcnow()
    job = _job(session, client_id, job_id)
    if job.status == "in-progress" and job.heartbeat_at and now - job.heartbeat_at > settings.stuck_after:
        _fail_stuck(job, settings, now)
    if job.status == "completed" and job.expires_at and job.expires_at <= now:
        _expire(job, now)
    return job


def needs_worker(job: BulkExportJob, settings: BulkSettings, now: datetime | None = None) -> bool:
    """An accepted job nobody claimed in time: its process died before the work started."""
    return job.status == "accepted" and (now or utcnow()) - job.created_at > settings.resume_after


def cancel(session: Session, client_id: str, job_id: str, settings: BulkSettings) -> None:
    """Cancel a job (or delete a finished one): its files go and later polls answer 404."""
    job = _job(session, client_id, job_id)
    job.status = "cancelled"
    job.finished_at = job.finished_at or utcnow()
    job.worker = None
    _remove_files(job, settings)


def output_file(session: Session, client_id: str, job_id: str, name: str, settings: BulkSettings,
                actor: Actor | None = None, request_id: str | None = None) -> Path:
    """The path of one output file of the caller's completed job (404 otherwise, 410 once expired)."""
    job = _job(session, client_id, job_id)
    expired = job.status == "completed" and job.expires_at is not None and job.expires_at <= utcnow()
    if job.status == "expired" or expired:
        raise Gone(f"export job {job_id} expired; its files were deleted")
    entry = next((o for o in job.output if o["file"] == name), None)
    if job.status != "completed" or entry is None or job.directory is None:
        raise NotFound(f"no file {name} in export job {job_id}")
    path = Path(job.directory) / name
    if not path.is_file():
        raise Gone(f"the file {name} of export job {job_id} is no longer there")
    if actor is not None:
        audit(session, actor, action="R", interaction="operation", entity_type=entry["type"],
              query=f"$export-file/{job_id}/{name}", request_id=request_id)
    return path


def manifest(job: BulkExportJob, file_url: Callable[[str, str], str]) -> dict[str, Any]:
    """The completion manifest of the Bulk Data specification."""
    return {
        "transactionTime": instant(job.transaction_time or job.created_at),
        "request": job.request_url,
        "requiresAccessToken": True,
        "output": [{"type": o["type"], "url": file_url(job.id, o["file"]), "count": o["count"]}
                   for o in job.output],
        "error": [],
        "extension": {"sha256": {o["file"]: o["sha256"] for o in job.output}},
    }


def sweep(session: Session, settings: BulkSettings, now: datetime | None = None) -> tuple[int, int]:
    """Fail stuck jobs and delete expired files; returns (failed, expired) counts."""
    now = now or utcnow()
    failed = expired = 0
    for job in session.scalars(select(BulkExportJob).where(BulkExportJob.status == "in-progress")):
        if job.heartbeat_at and now - job.heartbeat_at > settings.stuck_after:
            _fail_stuck(job, settings, now)
            failed += 1
    for job in session.scalars(
        select(BulkExportJob).where(BulkExportJob.status == "completed", BulkExportJob.expires_at <= now)
    ):
        _expire(job, now)
        expired += 1
    return failed, expired


def _fail_stuck(job: BulkExportJob, settings: BulkSettings, now: datetime) -> None:
    minutes = int(settings.stuck_after.total_seconds() // 60)
    job.status = "failed"
    job.finished_at = now
    job.error = (
        f"the export made no progress since {instant(job.heartbeat_at or now)} (more than {minutes} "
        "minutes); it was stopped, probably by a server restart. Start a new export."
    )
    job.worker = None
    _remove_files(job, settings)


def _expire(job: BulkExportJob, now: datetime) -> None:
    job.status = "expired"
    if job.directory:
        shutil.rmtree(job.directory, ignore_errors=True)


def _remove_files(job: BulkExportJob, settings: BulkSettings) -> None:
    directory = Path(job.directory) if job.directory else settings.directory / job.id
    shutil.rmtree(directory, ignore_errors=True)


# ------------------------------------------------------------------------------------ the worker


def worker_name() -> str:
    """A name unique to this process and thread, recorded as the job's claim."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{new_id()[:8]}"


def start_worker(open_session: OpenSession, job_id: str, settings: BulkSettings) -> threading.Thread:
    """Run the job in a background thread of this process (the claim keeps it to one worker)."""
    thread = threading.Thread(
        target=run_job, args=(open_session, job_id, settings), name=f"bulk-export-{job_id[:8]}", daemon=True
    )
    thread.start()
    return thread


def run_job(open_session: OpenSession, job_id: str, settings: BulkSettings, worker: str | None = None) -> str:
    """Claim the job and write its files; returns the final status seen by this worker."""
    worker = worker or worker_name()
    if not claim(open_session, job_id, worker):
        return "not-claimed"
    try:
        return export_claimed(open_session, job_id, worker, settings)
    except Exception as exc:
        log.exception("bulk export %s failed", job_id)
        _finish_failed(open_session, job_id, worker, settings, f"the export failed: {exc.__class__.__name__}")
        return "failed"


def claim(open_session: OpenSession, job_id: str, worker: str) -> bool:
    """Take an accepted job for this worker (one conditional UPDATE: exactly one claimer wins)."""
    now = now_ms()
    with open_session() as session:
        result = session.execute(
            update(BulkExportJob)
            .where(BulkExportJob.id == job_id, BulkExportJob.status == "accepted")
            .values(status="in-progress", worker=worker, started_at=now, heartbeat_at=now,
                    transaction_time=now, attempts=BulkExportJob.attempts + 1, progress="started")
        )
        return bool(getattr(result, "rowcount", 0) == 1)


def _heartbeat(open_session: OpenSession, job_id: str, worker: str, progress: str) -> bool:
    """Record progress; False when the job is no longer this worker's (cancelled, failed)."""
    with open_session() as session:
        result = session.execute(
            update(BulkExportJob)
            .where(BulkExportJob.id == job_id, BulkExportJob.worker == worker,
                   BulkExportJob.status == "in-progress")
            .values(heartbeat_at=utcnow(), progress=progress[:200])
        )
        return bool(getattr(result, "rowcount", 0) == 1)


def export_claimed(open_session: OpenSession, job_id: str, worker: str, settings: BulkSettings) -> str:
    """Write one NDJSON file per type for a job this worker claimed; returns the final status."""
    with open_session() as session:
        job = session.get(BulkExportJob, job_id)
        if job is None or job.worker != worker:
            return "not-claimed"
        actor = actor_for(session, name=job.client_id, kind="client", organization_id=job.organization_id)
        types, since, level = list(job.types), job.since, job.level
        until = job.transaction_time or utcnow()
    directory = settings.directory / job_id
    directory.mkdir(parents=True, exist_ok=True)
    outputs: list[dict[str, Any]] = []
    for index, res_type in enumerate(types):
        written = _write_type(open_session, job_id, worker, settings, directory, actor,
                              res_type, since, until, level, f"({index + 1}/{len(types)} types)")
        if written is None:
            shutil.rmtree(directory, ignore_errors=True)
            return "stopped"
        if written["count"]:
            outputs.append(written)
    finished = utcnow()
    with open_session() as session:
        result = session.execute(
            update(BulkExportJob)
            .where(BulkExportJob.id == job_id, BulkExportJob.worker == worker,
                   BulkExportJob.status == "in-progress")
            .values(status="completed", output=outputs, finished_at=finished, heartbeat_at=finished,
                    expires_at=finished + settings.ttl, directory=str(directory.resolve()),
                    progress=f"completed: {sum(o['count'] for o in outputs)} resources")
        )
        if getattr(result, "rowcount", 0) != 1:
            shutil.rmtree(directory, ignore_errors=True)
            return "stopped"
        session.add(ExportLog(
            kind="bulk", actor_name=actor.name, actor_kind="client", role=None,
            organization_id=actor.organization_id,
            parameters={"job": job_id, "level": level, "types": types,
                        "since": instant(since) if since else None, "transactionTime": instant(until)},
            identity="full", row_count=sum(o["count"] for o in outputs), totals={},
            files=[{"name": o["file"], "sha256": o["sha256"], "bytes": o["bytes"], "rows": o["count"]}
                   for o in outputs],
            location=str(directory.resolve()),
        ))
    return "completed"


def _write_type(open_session: OpenSession, job_id: str, worker: str, settings: BulkSettings, directory: Path,
                actor: Actor, res_type: str, since: datetime | None, until: datetime, level: str,
                of_types: str) -> dict[str, Any] | None:
    """Stream one type into `<Type>.ndjson`, a page per short transaction; None when told to stop."""
    rdef = RESOURCES[res_type]
    name = f"{res_type}.ndjson"
    path = directory / name
    digest = hashlib.sha256()
    count = size = 0
    after = 0
    if not _heartbeat(open_session, job_id, worker, f"{res_type}: 0 {of_types}"):
        return None
    with path.open("wb") as fh:
        while True:
            stmt = (
                select(StoredResource.pk, StoredResource.content)
                .where(StoredResource.res_type == res_type, StoredResource.deleted == false(),
                       StoredResource.pk > after, StoredResource.last_updated <= until, visible(actor, rdef))
                .order_by(StoredResource.pk)
                .limit(settings.page_size)
            )
            if since is not None:
                stmt = stmt.where(StoredResource.last_updated >= since)
            if level == "patient":
                stmt = stmt.where(StoredResource.patient_id.is_not(None))
            with open_session() as session:
                rows = session.execute(stmt).all()
            if not rows:
                break
            for row in rows:
                line = bytes(row.content) + b"\n"
                fh.write(line)
                digest.update(line)
                size += len(line)
            count += len(rows)
            after = rows[-1].pk
            if not _heartbeat(open_session, job_id, worker, f"{res_type}: {count} {of_types}"):
                return None
    if not count:
        path.unlink(missing_ok=True)
    return {"type": res_type, "file": name, "count": count, "sha256": digest.hexdigest(), "bytes": size}


def _finish_failed(open_session: OpenSession, job_id: str, worker: str, settings: BulkSettings,
                   message: str) -> None:
    with open_session() as session:
        session.execute(
            update(BulkExportJob)
            .where(BulkExportJob.id == job_id, BulkExportJob.worker == worker)
            .values(status="failed", error=message, finished_at=utcnow())
        )
    shutil.rmtree(settings.directory / job_id, ignore_errors=True)
