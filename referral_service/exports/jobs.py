"""Scheduled exports: the monthly settlement files for the insurance office."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from ..domain.exports import Recipient
from ..domain.ledger import FUNDS
from .settlements import LOCAL_TZ, SettlementExportRequest, export_dir, export_settlements

SCHEDULER = Recipient(name="scheduler", kind="system", role=None)


def month_bounds(day: date) -> tuple[date, date]:
    """First and last day of the calendar month holding `day`."""
    first = day.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return first, following - timedelta(days=1)


def previous_month(day: date) -> date:
    """The first day of the month before the one holding `day`."""
    return (day.replace(day=1) - timedelta(days=1)).replace(day=1)


def export_month(
    session: Session, month: date, *, settings: Mapping[str, Any] | None = None, out_dir: Path | None = None
) -> list[Path]:
    """Export the calendar month holding `month`, all funds, CSV + XLSX, to EXPORT_DIR/monthly/YYYY-MM."""
    start, end = month_bounds(month)
    target = out_dir or export_dir(settings) / "monthly" / start.strftime("%Y-%m")
    paths: list[Path] = []
    for fund in FUNDS:
        request = SettlementExportRequest(start, end, fund=fund, formats=("csv", "xlsx"))
        paths += export_settlements(session, SCHEDULER, request, target).paths
    return paths


def run_day(today: date | datetime) -> date:
    """The run's calendar day in Asia/Shanghai (an aware instant is converted; a date is taken as is)."""
    if isinstance(today, datetime):
        return (today if today.tzinfo else today.replace(tzinfo=LOCAL_TZ)).astimezone(LOCAL_TZ).date()
    return today


def monthly_export(
    session: Session, today: date | datetime, *, settings: Mapping[str, Any] | None = None,
    out_dir: Path | None = None,
) -> list[Path]:
    """The scheduled monthly run (config/jobs.toml, argument `today`): the month that has just ended.

    `today` is the run day in Asia/Shanghai (the scheduler's time zone); the export is the whole
    calendar month before it, so the run on 1 March exports February and the run on 1 January exports
    December of the year before. A run held up by downtime (up to the job's misfire grace) still
    exports the month before its run day. `flask export monthly --month` exports a chosen month.
    """
    return export_month(session, previous_month(run_day(today)), settings=settings, out_dir=out_dir)
