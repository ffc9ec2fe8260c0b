"""Imports every mapped module so the metadata is complete (for Alembic and tests)."""

from . import accounts, exports, fhir_store, ledger, monitoring, registry  # noqa: F401
from .base import Base

metadata = Base.metadata
