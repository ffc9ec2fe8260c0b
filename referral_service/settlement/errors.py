"""Errors raised by the settlement layer (policy loading and the calculator)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable


class SettlementError(Exception):
    """Base class of every settlement-layer error."""


class PolicyError(SettlementError, ValueError):
    """One or more problems in policy files; `problems` lists all of them, each naming file and field."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems)
        count = len(self.problems)
        header = f"{count} problem{'s' if count != 1 else ''} in policy files:"
        super().__init__("\n".join([header, *(f"- {p}" for p in self.problems)]))


class NoPolicyError(SettlementError, LookupError):
    """No policy is in force for a region on a date."""

    def __init__(self, region: str, on_date: dt.date, known_regions: Iterable[str] = ()) -> None:
        self.region = region
        self.on_date = on_date
        known = ", ".join(sorted(set(known_regions))) or "none"
        super().__init__(
            f"no settlement policy in force for region {region!r} on {on_date.isoformat()}"
            f" (regions with policies: {known})"
        )


class ClaimRefused(SettlementError):
    """A claim the calculator refuses to settle; `code` is stable, `message` is for people."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")
