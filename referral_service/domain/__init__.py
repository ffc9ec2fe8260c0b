"""Domain models and persistence (no Flask)."""

from .accounts import ApiClient, User
from .base import Base
from .registry import (
    AuditRecord,
    Coverage,
    Household,
    Organization,
    Patient,
    PovertyRegistration,
    Practitioner,
    PractitionerRole,
)

__all__ = [
    "ApiClient",
    "AuditRecord",
    "Base",
    "Coverage",
    "Household",
    "Organization",
    "Patient",
    "PovertyRegistration",
    "Practitioner",
    "PractitionerRole",
    "User",
]
