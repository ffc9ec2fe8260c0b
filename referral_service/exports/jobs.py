"""Scheduled exports: the monthly settlement files for the insurance office."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from ..domain.exports import Recipient
from ..domain.ledger import FUNDS
from .settlements import SettlementExportRequest, export_dir, export_settlements

SCHEDULER = Recipient(name="scheduler", kind="system", role=None)


def month_bounds(day: date) -> tuple[date, date]:
    """First and last day of the calendar month holding `day`."""
    first = day.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return first, following - timedelta(days=1)


def previous_month(day: date) -> date:
    """The first day of the month before the one holding `day`."""
    return (day.replace(day=1) - timedelta(days=1)).replace(day=1)


def monthly_export(
    session: Session, month: date, *, settings: Mapping[str, Any] | None = None, out_dir: Path | None = None
) -> list[Path]:
    """Export the calendar month holding `month`, all funds, CSV + XLSX, to EXPORT_DIR/monthly/YYYY-MM."""
    # The scheduler passes the first day of the previous month (config/jobs.toml, `previous-month`).
    start, end = month_bounds(month)
    target = out_dir or export_dir(settings) / "monthly" / start.strftime("%Y-%m")
    paths: list[Path] = []
    for fund in FUNDS:
        request = SettlementExportRequest(start, end, fund=fund, formats=("csv", "xlsx"))
        paths += export_settlements(session, SCHEDULER, request, target).paths
    return paths
