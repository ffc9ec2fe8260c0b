"""Scheduled exports: the monthly settlement files for the insurance office."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from ..domain.exports import Recipient
from ..domain.ledger import FUNDS
from ..domain.registry import Organization
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


def bureau_recipient(organization_id: str) -> Recipient:
    """The scheduled run on behalf of one insurance bureau: its files hold what the bureau may see."""
    return Recipient(name="scheduler", kind="system", role="insurer", organization_id=organization_id)


def _bureaus() -> Select[str]:
    """Ids of the active insurance bureaus."""
    return select(Organization.id).where(Organization.kind == "insurer", Organization.active.is_(True))


def is_bureau(session: Session, organization_id: str) -> bool:
    """Whether the organisation is an active insurance bureau."""
    return session.scalar(_bureaus().where(Organization.id == organization_id)) is not None


def export_month(
    session: Session, month: date, *, settings: Mapping[str, Any] | None = None, out_dir: Path | None = None
) -> list[Path]:
    """Export the calendar month holding `month`, all funds, CSV + XLSX, to EXPORT_DIR/monthly/YYYY-MM.

    The folder itself gets the whole network's files (a system run, listed to no insurer); each active
    insurance bureau gets its own set in a subfolder named by its Organization id (`bureau_folder`),
    holding the settlements it may see (its county's residents, as on its pages and in its own exports) and
    recorded for it, so that it alone lists and downloads them.
    """
    start, end = month_bounds(month)
    target = out_dir or export_dir(settings) / "monthly" / start.strftime("%Y-%m")
    bureaus = session.scalars(_bureaus().order_by(Organization.id)).all()
    paths: list[Path] = []
    runs = [(SCHEDULER, target)] + [(bureau_recipient(b), bureau_folder(target, b)) for b in bureaus]
    for recipient, folder in runs:
        for fund in FUNDS:
            request = SettlementExportRequest(start, end, fund=fund, formats=("csv", "xlsx"))
            paths += export_settlements(session, recipient, request, folder).paths
    return paths


def bureau_folder(target: Path, org_id: str) -> Path:
    """A bureau's subfolder of a monthly export: `bureau-{id}`, always inside `target` (an id may be
    `..` in FHIR's id grammar, and any other character is replaced)."""
    return target / ("bureau-" + re.sub(r"[^A-Za-z0-9.-]", "_", org_id))


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
