"""Merge the monitoring and the payments/exports branches (built in parallel).

Revision ID: e3f4a5b6c7d8
Revises: c0a1e2d3f4b5, d1b2c3e4f5a6
Create Date: 2026-11-30
"""
from __future__ import annotations

revision = "e3f4a5b6c7d8"
down_revision = ("c0a1e2d3f4b5", "d1b2c3e4f5a6")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
