"""Stored FHIR resources: every version's JSON, plus search-index rows (HAPI JPA style)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, ExactDecimal, UTCDateTime

# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias).
PkType = BigInteger().with_variant(Integer(), "sqlite")


class StoredResource(Base):
    """The current version of one resource, with the JSON served on reads."""

    __tablename__ = "fhir_resource"

    pk: Mapped[int] = mapped_column(PkType, primary_key=True, autoincrement=True)
    res_type: Mapped[str] = mapped_column(String(40))
    res_id: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(Integer)
    last_updated: Mapped[datetime] = mapped_column(UTCDateTime)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    # Access policy inputs: who created it, and whose record it is (patient compartment).
    owner_org_id: Mapped[str | None] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        UniqueConstraint("res_type", "res_id"),
        Index("ix_fhir_resource_type_updated", "res_type", "last_updated", "pk"),
        Index("ix_fhir_resource_patient", "patient_id", "res_type"),
    )


class ResourceVersion(Base):
    """Every version of every resource, for vread and _history."""

    __tablename__ = "fhir_resource_version"

    resource_pk: Mapped[int] = mapped_column(
        PkType, ForeignKey("fhir_resource.pk", ondelete="CASCADE"), primary_key=True
    )
    version_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    res_type: Mapped[str] = mapped_column(String(40))
    last_updated: Mapped[datetime] = mapped_column(UTCDateTime)
    method: Mapped[str] = mapped_column(String(8))  # POST, PUT, DELETE
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    content: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (Index("ix_fhir_version_type_updated", "res_type", "last_updated"),)


class TokenIndex(Base):
    """token search parameters: identifiers, codes, status values."""

    __tablename__ = "fhir_idx_token"

    id: Mapped[int] = mapped_column(PkType, primary_key=True, autoincrement=True)
    resource_pk: Mapped[int] = mapped_column(PkType, ForeignKey("fhir_resource.pk", ondelete="CASCADE"))
    res_type: Mapped[str] = mapped_column(String(40))
    param: Mapped[str] = mapped_column(String(64))
    system: Mapped[str | None] = mapped_column(String(200))
    code: Mapped[str] = mapped_column(String(200))

    __table_args__ = (
        Index("ix_fhir_idx_token_lookup", "res_type", "param", "code", "system", "resource_pk"),
        Index("ix_fhir_idx_token_resource", "resource_pk"),
    )


class StringIndex(Base):
    """string search parameters (normalised for the default starts-with match)."""

    __tablename__ = "fhir_idx_string"

    id: Mapped[int] = mapped_column(PkType, primary_key=True, autoincrement=True)
    resource_pk: Mapped[int] = mapped_column(PkType, ForeignKey("fhir_resource.pk", ondelete="CASCADE"))
    res_type: Mapped[str] = mapped_column(String(40))
    param: Mapped[str] = mapped_column(String(64))
    value: Mapped[str] = mapped_column(String(200))  # lower-cased, accents removed
    exact: Mapped[str] = mapped_column(String(200))

    __table_args__ = (
        Index("ix_fhir_idx_string_lookup", "res_type", "param", "value", "resource_pk"),
        Index("ix_fhir_idx_string_resource", "resource_pk"),
    )


class DateIndex(Base):
    """date search parameters as the instant range [low, high] they cover."""

    __tablename__ = "fhir_idx_date"

    id: Mapped[int] = mapped_column(PkType, primary_key=True, autoincrement=True)
    resource_pk: Mapped[int] = mapped_column(PkType, ForeignKey("fhir_resource.pk", ondelete="CASCADE"))
    res_type: Mapped[str] = mapped_column(String(40))
    param: Mapped[str] = mapped_column(String(64))
    low: Mapped[datetime] = mapped_column(UTCDateTime)
    high: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_fhir_idx_date_low", "res_type", "param", "low", "resource_pk"),
        Index("ix_fhir_idx_date_high", "res_type", "param", "high", "resource_pk"),
        Index("ix_fhir_idx_date_resource", "resource_pk"),
    )


class ReferenceIndex(Base):
    """reference search parameters (and the links _include / _revinclude follow)."""

    __tablename__ = "fhir_idx_reference"

    id: Mapped[int] = mapped_column(PkType, primary_key=True, autoincrement=True)
    resource_pk: Mapped[int] = mapped_column(PkType, ForeignKey("fhir_resource.pk", ondelete="CASCADE"))
    res_type: Mapped[str] = mapped_column(String(40))
    param: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(40))
    target_id: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_fhir_idx_ref_lookup", "res_type", "param", "target_id", "target_type", "resource_pk"),
        Index("ix_fhir_idx_ref_target", "target_type", "target_id"),
        Index("ix_fhir_idx_ref_resource", "resource_pk"),
    )


class QuantityIndex(Base):
    """quantity search parameters: the value as an exact decimal, with its unit's system, code and
    human-readable unit (`||mg` matches the code or the unit)."""

    __tablename__ = "fhir_idx_quantity"

    id: Mapped[int] = mapped_column(PkType, primary_key=True, autoincrement=True)
    resource_pk: Mapped[int] = mapped_column(PkType, ForeignKey("fhir_resource.pk", ondelete="CASCADE"))
    res_type: Mapped[str] = mapped_column(String(40))
    param: Mapped[str] = mapped_column(String(64))
    system: Mapped[str | None] = mapped_column(String(200))
    code: Mapped[str | None] = mapped_column(String(200))
    unit: Mapped[str | None] = mapped_column(String(200))
    value: Mapped[Decimal] = mapped_column(ExactDecimal())

    __table_args__ = (
        # A range of values (`gt140`, the precision range of `5.4`), with or without a unit code.
        Index("ix_fhir_idx_quantity_lookup", "res_type", "param", "value", "resource_pk"),
        Index("ix_fhir_idx_quantity_code", "res_type", "param", "code", "value", "resource_pk"),
        Index("ix_fhir_idx_quantity_resource", "resource_pk"),
    )


class PatientAccess(Base):
    """An organisation's standing link to a patient: treated, referred, received, registered."""

    __tablename__ = "patient_access"

    patient_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(16))

    __table_args__ = (Index("ix_patient_access_org", "org_id", "patient_id"),)
