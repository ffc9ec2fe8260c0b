"""payments and exports: export log, FHIR bulk export jobs

Revision ID: d1b2c3e4f5a6
Revises: 447f810a49b9
Create Date: 2026-11-30 09:00:00.000000
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
import referral_service.domain.base


revision = 'd1b2c3e4f5a6'
down_revision = '447f810a49b9'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('export_log',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('created_at', referral_service.domain.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('actor_name', sa.String(length=100), nullable=False),
    sa.Column('actor_kind', sa.String(length=16), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=True),
    sa.Column('organization_id', sa.String(length=64), nullable=True),
    sa.Column('parameters', sa.JSON(), nullable=False),
    sa.Column('identity', sa.String(length=8), nullable=False),
    sa.Column('row_count', sa.Integer(), nullable=False),
    sa.Column('totals', sa.JSON(), nullable=False),
    sa.Column('files', sa.JSON(), nullable=False),
    sa.Column('location', sa.String(length=500), nullable=True),
    sa.Column('request_id', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_export_log'))
    )
    with op.batch_alter_table('export_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_export_log_actor_name'), ['actor_name'], unique=False)
        batch_op.create_index(batch_op.f('ix_export_log_created_at'), ['created_at'], unique=False)

    op.create_table('bulk_export_job',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('level', sa.String(length=16), nullable=False),
    sa.Column('types', sa.JSON(), nullable=False),
    sa.Column('since', referral_service.domain.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('request_url', sa.String(length=2000), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('organization_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', referral_service.domain.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('transaction_time', referral_service.domain.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('started_at', referral_service.domain.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', referral_service.domain.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', referral_service.domain.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('expires_at', referral_service.domain.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('worker', sa.String(length=100), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('progress', sa.String(length=200), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('output', sa.JSON(), nullable=False),
    sa.Column('directory', sa.String(length=500), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bulk_export_job'))
    )
    with op.batch_alter_table('bulk_export_job', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bulk_export_job_client_id'), ['client_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_bulk_export_job_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_bulk_export_job_status'), ['status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('bulk_export_job', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_bulk_export_job_status'))
        batch_op.drop_index(batch_op.f('ix_bulk_export_job_expires_at'))
        batch_op.drop_index(batch_op.f('ix_bulk_export_job_client_id'))

    op.drop_table('bulk_export_job')
    with op.batch_alter_table('export_log', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_export_log_created_at'))
        batch_op.drop_index(batch_op.f('ix_export_log_actor_name'))

    op.drop_table('export_log')
