"""fhir quantity search index (fhir_idx_quantity)

Revision ID: f4a5b6c7d8e9
Revises: e3f4a5b6c7d8
Create Date: 2026-12-01 09:00:00.000000

Resources stored before this revision have no quantity rows: `flask fhir-reindex` extracts them.
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
import referral_service.domain.base


revision = 'f4a5b6c7d8e9'
down_revision = 'e3f4a5b6c7d8'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('fhir_idx_quantity',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('resource_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('res_type', sa.String(length=40), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('system', sa.String(length=200), nullable=True),
    sa.Column('code', sa.String(length=200), nullable=True),
    sa.Column('unit', sa.String(length=200), nullable=True),
    sa.Column('value', referral_service.domain.base.ExactDecimal(), nullable=False),
    sa.ForeignKeyConstraint(['resource_pk'], ['fhir_resource.pk'], name=op.f('fk_fhir_idx_quantity_resource_pk_fhir_resource'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fhir_idx_quantity'))
    )
    with op.batch_alter_table('fhir_idx_quantity', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_idx_quantity_code', ['res_type', 'param', 'code', 'value', 'resource_pk'], unique=False)
        batch_op.create_index('ix_fhir_idx_quantity_lookup', ['res_type', 'param', 'value', 'resource_pk'], unique=False)
        batch_op.create_index('ix_fhir_idx_quantity_resource', ['resource_pk'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('fhir_idx_quantity', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_idx_quantity_resource')
        batch_op.drop_index('ix_fhir_idx_quantity_lookup')
        batch_op.drop_index('ix_fhir_idx_quantity_code')

    op.drop_table('fhir_idx_quantity')
