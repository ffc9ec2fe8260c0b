"""Monitoring records: alerts raised by scans, their history, scheduled job runs and the job store."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import Base, UTCDateTime, utcnow

ALERT_STATUSES = ("open", "acknowledged", "resolved")


class Alert(Base):
    """One condition found by a scan, once per subject, reason and scope, with the figures behind it."""

    __tablename__ = "monitoring_alert"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    reason: Mapped[str] = mapped_column(String(48))  # e.g. catastrophic-health-expenditure, referral-timeout
    category: Mapped[str] = mapped_column(String(16))  # poverty, payment, referral, follow-up
    subject_type: Mapped[str] = mapped_column(String(40))  # Group, Organization, Task, CarePlan, Encounter
    subject_id: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(64), default="")  # the fund for payment delays, else ''
    status: Mapped[str] = mapped_column(String(16), default="open")  # open, acknowledged, resolved
    condition_holds: Mapped[bool] = mapped_column(Boolean, default=True)  # at the latest scan
    figures: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    household_id: Mapped[str | None] = mapped_column(String(64), index=True)
    organization_id: Mapped[str | None] = mapped_column(String(64), index=True)  # the facility concerned
    district: Mapped[str | None] = mapped_column(String(100))
    township: Mapped[str | None] = mapped_column(String(100))
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)  # start of the current episode
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledged_by: Mapped[str | None] = mapped_column(String(100))
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[str | None] = mapped_column(String(100))
    resolution_note: Mapped[str | None] = mapped_column(Text)

    events: Mapped[list[AlertEvent]] = relationship(
        back_populates="alert", order_by="AlertEvent.id", cascade="all, delete-orphan"
    )

    __table_args__ = (
        UniqueConstraint("subject_type", "subject_id", "reason", "scope"),
        Index("ix_monitoring_alert_reason_status", "reason", "status"),
        Index("ix_monitoring_alert_township_status", "township", "status"),
    )

    @property
    def flag_id(self) -> str:
        """The id of the FHIR Flag that mirrors this alert."""
        return f"alert-{self.id}"


class AlertEvent(Base):
    """Who did what to an alert and when: raised, acknowledged, resolved, reopened."""

    __tablename__ = "monitoring_alert_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("monitoring_alert.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    action: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(100))
    actor_kind: Mapped[str] = mapped_column(String(16))  # client, user, system
    organization_id: Mapped[str | None] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)

    alert: Mapped[Alert] = relationship(back_populates="events")


class JobRun(Base):
    """One run of a scheduled job (by the scheduler or by hand) and how it ended."""

    __tablename__ = "job_run"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    trigger: Mapped[str] = mapped_column(String(16))  # scheduled, manual
    runner: Mapped[str] = mapped_column(String(100))  # host:pid of the process that ran it
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(16), default="running")  # running, success, failure, skipped
    summary: Mapped[str | None] = mapped_column(String(500))
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_job_run_name_started", "name", "started_at"),)


class SchedulerJob(Base):
    """APScheduler's persistent job store (SQLAlchemyJobStore), declared here so Alembic owns it."""

    __tablename__ = "scheduler_job"

    # Column names and types are those APScheduler 3 expects.
    id: Mapped[str] = mapped_column(String(191), primary_key=True)
    next_run_time: Mapped[float | None] = mapped_column(Float(25), index=True)
    job_state: Mapped[bytes] = mapped_column(LargeBinary)
