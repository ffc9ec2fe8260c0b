"""Calendar days people type into report periods and filters: one accepted range everywhere.

The pages and JSON APIs that take a day (insurance office settlements, payments and exports, the
settlement export download, the monitoring indicators, the admin audit log) turn it into instants
(local midnight in UTC, the day after the period) and step through months. Near year 1 or year 9999
that arithmetic leaves the calendar (OverflowError, a 500), and a period of centuries is a mistake
anyway. So a day outside [EARLIEST_DAY, LATEST_DAY] is refused where it is read, like a malformed one:
a form error beside the field on the web pages, a 400 on the APIs. It is refused, not clamped, so
that no page silently answers for a period other than the one asked for.
"""

from __future__ import annotations

from datetime import date

EARLIEST_DAY = date(1900, 1, 1)
LATEST_DAY = date(2199, 12, 31)


class DayOutOfRange(ValueError):
    """A well-formed day outside [EARLIEST_DAY, LATEST_DAY]."""


def check_day(day: date) -> date:
    """The day itself; DayOutOfRange when it lies outside [EARLIEST_DAY, LATEST_DAY]."""
    if not EARLIEST_DAY <= day <= LATEST_DAY:
        raise DayOutOfRange(
            f"{day.isoformat()} is outside {EARLIEST_DAY.isoformat()} to {LATEST_DAY.isoformat()}"
        )
    return day


def parse_day(text: str) -> date:
    """A day written YYYY-MM-DD within the accepted range.

    ValueError when it is no date; DayOutOfRange (a ValueError) when it is outside the range.
    """
    return check_day(date.fromisoformat(text))
