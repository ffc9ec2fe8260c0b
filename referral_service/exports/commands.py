"""`flask export ...`: settlement files by hand, the monthly run, the bulk-export sweep."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import date, datetime
from pathlib import Path
from typing import Any

import click
from click._termui_impl import ProgressBar
from sqlalchemy.orm import Session

from ..domain.accounts import ROLES
from ..domain.days import DayOutOfRange, parse_day
from ..domain.errors import DomainError
from ..domain.exports import Recipient
from ..domain.ledger import FUNDS
from ..services import bulk_export
from ..services.ledger_scope import recipient_actor
from .jobs import export_month, is_bureau, previous_month
from .settlements import LOCAL_TZ, SettlementExportRequest, count_rows, export_dir, export_settlements

OpenSession = Callable[[], AbstractContextManager[Session]]


def _day(value: str, *, month: bool = False) -> date:
    """A day (YYYY-MM-DD; with `month`, YYYY-MM too) within the accepted range (`domain.days`)."""
    text = f"{value}-01" if month and len(value) == 7 else value
    try:
        return parse_day(text)
    except DayOutOfRange as exc:
        raise click.BadParameter(str(exc)) from None
    except ValueError:
        shape = "YYYY-MM or YYYY-MM-DD" if month else "YYYY-MM-DD"
        raise click.BadParameter(f"{value!r} is not a date ({shape})") from None


def export_commands(open_session: OpenSession, settings: Mapping[str, Any]) -> click.Group:
    """The `export` command group, bound to a unit-of-work factory and the app's settings."""

    @click.group("export")
    def export() -> None:
        """Exports for the insurance office (settlement files, FHIR bulk export upkeep)."""

    @export.command("settlements")
    @click.option("--fund", type=click.Choice([*FUNDS, "all"]), required=True)
    @click.option("--from", "start", required=True, help="first day (YYYY-MM-DD, Asia/Shanghai)")
    @click.option("--to", "end", required=True, help="last day, inclusive")
    @click.option("--format", "fmt", type=click.Choice(["csv", "xlsx", "both"]), default="csv")
    @click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="folder for the files (default: EXPORT_DIR)")
    @click.option("--hospital", default=None, help="Organization id of one hospital (default: all)")
    @click.option("--identity", type=click.Choice(["masked", "full"]), default="masked")
    @click.option("--recipient-role", type=click.Choice(ROLES), default="insurer",
                  help="role of the person the file is for (decides whether full numbers are allowed)")
    @click.option("--bureau", default=None,
                  help="Organization id of an insurance bureau: only the settlements it may see (its "
                       "county's residents), recorded for it so that it lists and downloads the files "
                       "(default: the whole network, listed to no one)")
    def settlements(fund: str, start: str, end: str, fmt: str, out: Path | None, hospital: str | None,
                    identity: str, recipient_role: str, bureau: str | None) -> None:
        """Settlement detail of a period per fund: CSV (UTF-8 with BOM) or XLSX, plus a manifest."""
        request = SettlementExportRequest(
            _day(start), _day(end), fund=None if fund == "all" else fund, hospital_id=hospital,
            formats=("csv", "xlsx") if fmt == "both" else (fmt,), identity=identity,
        )
        recipient = Recipient(name=f"cli:{getpass.getuser()}", kind="system", role=recipient_role,
                              organization_id=bureau)
        target = out or export_dir(settings)
        try:
            request.check()
            with open_session() as session:
                if bureau is not None and not is_bureau(session, bureau):
                    raise click.BadParameter(f"{bureau!r} is no active insurance bureau",
                                             param_hint="--bureau")
                total = count_rows(session, request, recipient_actor(session, recipient))
                bar: ProgressBar[int] = click.progressbar(
                    length=total, label="exporting", show_pos=True, file=sys.stderr
                )
                with bar:
                    result = export_settlements(session, recipient, request, target, progress=bar.update)
        except DomainError as exc:
            raise click.ClickException(exc.message) from None
        manifest = result.manifest
        for fund_code, amount in manifest["totals"].items():
            click.echo(f"{fund_code}: {manifest['rows_by_fund'][fund_code]} rows, {amount} yuan")
        for path in result.paths:
            click.echo(str(path))

    @export.command("monthly")
    @click.option("--month", default=None,
                  help="the month to export, YYYY-MM or a day in it (default: the previous month)")
    def monthly(month: str | None) -> None:
        """The monthly run: one month, every fund, CSV and XLSX, into EXPORT_DIR/monthly/YYYY-MM."""
        day = _day(month, month=True) if month else previous_month(datetime.now(LOCAL_TZ).date())
        try:
            with open_session() as session:
                paths = export_month(session, day, settings=settings)
        except DomainError as exc:
            raise click.ClickException(exc.message) from None
        for path in paths:
            click.echo(str(path))

    @export.command("bulk-sweep")
    def bulk_sweep() -> None:
        """Fail bulk exports stuck without progress and delete expired export files."""
        options = bulk_export.BulkSettings.from_settings(settings)
        with open_session() as session:
            failed, expired = bulk_export.sweep(session, options, now=datetime.now().astimezone())
        click.echo(f"{failed} stuck job(s) failed, {expired} expired job(s) removed")

    return export
