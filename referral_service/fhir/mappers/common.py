"""Small helpers shared by the mappers."""

from __future__ import annotations

import calendar
import re
from datetime import date
from typing import Any

from ...domain.errors import Problem, Unprocessable
from ..search_params import shanghai_date


def ref_id(reference: Any, expected_type: str) -> str | None:
    """The id of a literal `Type/id` reference of the expected type (None when absent)."""
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        return None
    if reference["reference"].startswith(("http://", "https://", "urn:", "#")):
        return None  # a resource on another server (or contained): not one of our registry rows
    parts = reference["reference"].rstrip("/").split("/")
    if len(parts) < 2 or parts[-2] != expected_type:
        return None
    return parts[-1]


def require_ref(resource: dict[str, Any], element: str, expected_type: str) -> str:
    """A required reference; 422 naming the element when missing or of another type."""
    value = resource.get(element)
    if isinstance(value, list):
        value = value[0] if value else None
    rid = ref_id(value, expected_type)
    if rid is None:
        path = f"{resource['resourceType']}.{element}"
        raise Unprocessable(
            f"{path} must reference a {expected_type}",
            [Problem(f"{path} must reference a {expected_type}", expression=path, code="required")],
        )
    return rid


def fhir_date(text: str | None) -> date | None:
    """The day of a full FHIR date or dateTime (Asia/Shanghai), or None; partial dates give None.

    A dateTime with a zone is the day it falls on in Asia/Shanghai (a Coverage ending at
    2026-12-31T18:00:00Z ends on 2027-01-01 there); a date or zone-less dateTime is that day.
    """
    if not text or len(text) < 10:
        return None
    try:
        return shanghai_date(text)
    except ValueError:
        return date.fromisoformat(text[:10])


_PARTIAL_DATE = re.compile(r"^(\d{4})(?:-(\d{2}))?\Z", re.ASCII)


def period_bound(text: str | None, *, end: bool) -> date | None:
    """The first (or, for `end`, the last) day a Period bound covers, in Asia/Shanghai, or None.

    A full date or dateTime is its day (`fhir_date`); a partial date covers its whole year or month
    (FHIR's implicit precision, as HAPI reads it): `start` "2016-03" is 2016-03-01, `end` "2018-06"
    is 2018-06-30. Before, such a start was dropped and such an end read as open.
    """
    if not isinstance(text, str):
        return None
    match = _PARTIAL_DATE.match(text)
    if match is None:
        return fhir_date(text)
    year, month = int(match.group(1)), int(match.group(2) or 0)
    try:
        if not month:
            return date(year, 12, 31) if end else date(year, 1, 1)
        return date(year, month, calendar.monthrange(year, month)[1] if end else 1)
    except ValueError:
        return None


def coding_code(concepts: Any, system: str) -> str | None:
    """The first code of the system among CodeableConcepts (list or single)."""
    items = concepts if isinstance(concepts, list) else [concepts]
    for concept in items:
        for coding in (concept or {}).get("coding", []):
            if coding.get("system") == system and coding.get("code"):
                return str(coding["code"])
    return None


def identifier_value(resource: dict[str, Any], system: str) -> str | None:
    """The value of the first identifier of the system."""
    for ident in resource.get("identifier") or []:
        if ident.get("system") == system and ident.get("value"):
            return str(ident["value"])
    return None


def clip(value: Any, size: int) -> str | None:
    """A string cut to the column size (registry columns are bounded; the stored JSON keeps it whole)."""
    if value is None:
        return None
    text = str(value).strip()
    return text[:size] if text else None


def ensure_unique(session: Any, model: Any, column: Any, value: str | None, own_id: str, what: str,
                  expression: str, **also: Any) -> None:
    """409 when another row already holds the business key."""
    from sqlalchemy import select

    from ...domain.errors import Conflict

    if value is None:
        return
    stmt = select(model.id).where(column == value, model.id != own_id)
    for name, wanted in also.items():
        stmt = stmt.where(getattr(model, name) == wanted)
    with session.no_autoflush:  # the row being written must not be flushed (and collide) first
        other = session.scalar(stmt)
    if other is not None:
        raise Conflict(f"another resource ({other}) already has this {what}", [
            Problem(f"duplicate {what}", expression=expression, code="duplicate")])
