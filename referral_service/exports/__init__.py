"""Exports for the insurance office: settlement detail files (CSV, XLSX) with manifests, the monthly run."""

from .commands import export_commands
from .jobs import export_month, monthly_export
from .settlements import SettlementExportRequest, export_dir, export_settlements

__all__ = [
    "SettlementExportRequest",
    "export_commands",
    "export_dir",
    "export_month",
    "export_settlements",
    "monthly_export",
]
