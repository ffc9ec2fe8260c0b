"""Small helpers shared by the mappers."""

from __future__ import annotations

from datetime import date
from typing import Any

from ...domain.errors import Problem, Unprocessable


def ref_id(reference: Any, expected_type: str) -> str | None:
    """The id of a literal `Type/id` reference of the expected type (None when absent)."""
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        return None
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
    """A full FHIR date (YYYY-MM-DD) or None; partial dates give None."""
    if not text or len(text) < 10:
        return None
    return date.fromisoformat(text[:10])


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
