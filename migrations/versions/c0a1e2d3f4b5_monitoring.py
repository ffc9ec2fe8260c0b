"""monitoring: alerts, alert events, job runs, the scheduler's job store

Revision ID: c0a1e2d3f4b5
Revises: 447f810a49b9
Create Date: 2026-11-30 05:10:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
import referral_service.domain.base


revision = "c0a1e2d3f4b5"
down_revision = "447f810a49b9"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "monitoring_alert",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("reason", sa.String(length=48), nullable=False),
        sa.Column("category", sa.String(length=16), nullable=False),
        sa.Column("subject_type", sa.String(length=40), nullable=False),
        sa.Column("subject_id", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("condition_holds", sa.Boolean(), nullable=False),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("household_id", sa.String(length=64), nullable=True),
        sa.Column("organization_id", sa.String(length=64), nullable=True),
        sa.Column("district", sa.String(length=100), nullable=True),
        sa.Column("township", sa.String(length=100), nullable=True),
        sa.Column("raised_at", referral_service.domain.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", referral_service.domain.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_at", referral_service.domain.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by", sa.String(length=100), nullable=True),
        sa.Column("resolved_at", referral_service.domain.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.String(length=100), nullable=True),
        sa.Column("resolution_note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitoring_alert")),
        sa.UniqueConstraint(
            "subject_type", "subject_id", "reason", "scope",
            name=op.f("uq_monitoring_alert_subject_type_subject_id_reason_scope"),
        ),
    )
    with op.batch_alter_table("monitoring_alert", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_monitoring_alert_patient_id"), ["patient_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_monitoring_alert_household_id"), ["household_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_monitoring_alert_organization_id"), ["organization_id"], unique=False
        )
        batch_op.create_index("ix_monitoring_alert_reason_status", ["reason", "status"], unique=False)
        batch_op.create_index("ix_monitoring_alert_township_status", ["township", "status"], unique=False)

    op.create_table(
        "monitoring_alert_event",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=False),
        sa.Column("at", referral_service.domain.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("actor_kind", sa.String(length=16), nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["monitoring_alert.id"],
            name=op.f("fk_monitoring_alert_event_alert_id_monitoring_alert"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitoring_alert_event")),
    )
    with op.batch_alter_table("monitoring_alert_event", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_monitoring_alert_event_alert_id"), ["alert_id"], unique=False)

    op.create_table(
        "job_run",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("runner", sa.String(length=100), nullable=False),
        sa.Column("started_at", referral_service.domain.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", referral_service.domain.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("summary", sa.String(length=500), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_run")),
    )
    with op.batch_alter_table("job_run", schema=None) as batch_op:
        batch_op.create_index("ix_job_run_name_started", ["name", "started_at"], unique=False)

    op.create_table(
        "scheduler_job",
        sa.Column("id", sa.String(length=191), nullable=False),
        sa.Column("next_run_time", sa.Float(precision=25), nullable=True),
        sa.Column("job_state", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scheduler_job")),
    )
    with op.batch_alter_table("scheduler_job", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_scheduler_job_next_run_time"), ["next_run_time"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("scheduler_job", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_scheduler_job_next_run_time"))
    op.drop_table("scheduler_job")
    with op.batch_alter_table("job_run", schema=None) as batch_op:
        batch_op.drop_index("ix_job_run_name_started")
    op.drop_table("job_run")
    with op.batch_alter_table("monitoring_alert_event", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_monitoring_alert_event_alert_id"))
    op.drop_table("monitoring_alert_event")
    with op.batch_alter_table("monitoring_alert", schema=None) as batch_op:
        batch_op.drop_index("ix_monitoring_alert_township_status")
        batch_op.drop_index("ix_monitoring_alert_reason_status")
        batch_op.drop_index(batch_op.f("ix_monitoring_alert_organization_id"))
        batch_op.drop_index(batch_op.f("ix_monitoring_alert_household_id"))
        batch_op.drop_index(batch_op.f("ix_monitoring_alert_patient_id"))
    op.drop_table("monitoring_alert")
