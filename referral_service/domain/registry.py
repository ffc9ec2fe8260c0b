"""Registry of the county network: organisations, practitioners, patients, households, coverage."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import JSON, Boolean, Date, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import Base, IdColumn, Money, UTCDateTime, new_id, utcnow

FACILITY_LEVELS = ("village", "township", "county", "city", "province")
ORGANIZATION_KINDS = ("insurer", "health-commission", "poverty-office")
CAPABILITIES = ("general", "obstetrics", "paediatrics", "tcm")
GENDERS = ("male", "female", "other", "unknown")


class Organization(Base):
    """A health facility (by level) or an office (insurance bureau, health commission, poverty office)."""

    __tablename__ = "organization"

    id: Mapped[str] = mapped_column(IdColumn, primary_key=True, default=new_id)
    code: Mapped[str | None] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    facility_level: Mapped[str | None] = mapped_column(String(16), index=True)
    kind: Mapped[str | None] = mapped_column(String(32))
    capabilities: Mapped[list[str]] = mapped_column(JSON, default=list)
    district: Mapped[str] = mapped_column(String(100), index=True)
    city: Mapped[str | None] = mapped_column(String(100))
    township: Mapped[str | None] = mapped_column(String(100))
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("organization.id"), index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    parent: Mapped[Organization | None] = relationship(remote_side=[id])

    @property
    def is_facility(self) -> bool:
        """True for a health facility (it has a facility level)."""
        return self.facility_level is not None


class Practitioner(Base):
    """A clinician or clerk."""

    __tablename__ = "practitioner"

    id: Mapped[str] = mapped_column(IdColumn, primary_key=True, default=new_id)
    license_number: Mapped[str | None] = mapped_column(String(64), unique=True)
    family_name: Mapped[str] = mapped_column(String(50))
    given_name: Mapped[str] = mapped_column(String(50))
    gender: Mapped[str | None] = mapped_column(String(16))
    phone: Mapped[str | None] = mapped_column(String(32))


class PractitionerRole(Base):
    """A practitioner's role at an organisation."""

    __tablename__ = "practitioner_role"

    id: Mapped[str] = mapped_column(IdColumn, primary_key=True, default=new_id)
    practitioner_id: Mapped[str] = mapped_column(ForeignKey("practitioner.id"), index=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organization.id"), index=True)
    role: Mapped[str] = mapped_column(String(32))  # doctor, nurse, clerk
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Household(Base):
    """A household (户): members, annual income, address."""

    __tablename__ = "household"

    id: Mapped[str] = mapped_column(IdColumn, primary_key=True, default=new_id)
    code: Mapped[str | None] = mapped_column(String(64), unique=True)
    annual_income: Mapped[Decimal] = mapped_column(Money)
    district: Mapped[str] = mapped_column(String(100), index=True)
    township: Mapped[str | None] = mapped_column(String(100), index=True)
    village: Mapped[str | None] = mapped_column(String(100))

    members: Mapped[list[Patient]] = relationship(back_populates="household")

    @property
    def size(self) -> int:
        """Number of members."""
        return len(self.members)


class Patient(Base):
    """A resident of the county (or beyond) who receives care."""

    __tablename__ = "patient"

    id: Mapped[str] = mapped_column(IdColumn, primary_key=True, default=new_id)
    resident_id: Mapped[str | None] = mapped_column(String(18), unique=True)
    family_name: Mapped[str] = mapped_column(String(50))
    given_name: Mapped[str] = mapped_column(String(50))
    gender: Mapped[str] = mapped_column(String(16))
    birth_date: Mapped[date | None] = mapped_column(Date)
    phone: Mapped[str | None] = mapped_column(String(32))
    district: Mapped[str | None] = mapped_column(String(100), index=True)
    township: Mapped[str | None] = mapped_column(String(100))
    village: Mapped[str | None] = mapped_column(String(100))
    address_line: Mapped[str | None] = mapped_column(String(200))
    general_practitioner_id: Mapped[str | None] = mapped_column(
        ForeignKey("organization.id"), index=True
    )
    household_id: Mapped[str | None] = mapped_column(ForeignKey("household.id"), index=True)
    created_by_org_id: Mapped[str | None] = mapped_column(ForeignKey("organization.id"), index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    household: Mapped[Household | None] = relationship(back_populates="members")
    poverty_registrations: Mapped[list[PovertyRegistration]] = relationship(
        back_populates="patient", cascade="all, delete-orphan", order_by="PovertyRegistration.start"
    )

    __table_args__ = (Index("ix_patient_name", "family_name", "given_name"),)

    @property
    def name(self) -> str:
        """Full name in Chinese order (family name first)."""
        return f"{self.family_name}{self.given_name}"

    def registered_poor_on(self, day: date) -> bool:
        """建档立卡: some registration period covers the day (both ends inclusive, no end = open)."""
        return any(r.covers(day) for r in self.poverty_registrations)


class PovertyRegistration(Base):
    """A period during which the patient is registered poor (建档立卡)."""

    __tablename__ = "poverty_registration"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    patient_id: Mapped[str] = mapped_column(
        ForeignKey("patient.id", ondelete="CASCADE"), index=True
    )
    start: Mapped[date] = mapped_column(Date)
    end: Mapped[date | None] = mapped_column(Date)

    patient: Mapped[Patient] = relationship(back_populates="poverty_registrations")

    def covers(self, day: date) -> bool:
        """Whether this period includes the day."""
        return self.start <= day and (self.end is None or day <= self.end)


class Coverage(Base):
    """Insurance enrolment; basic medical insurance (基本医保) carries critical illness with it."""

    __tablename__ = "coverage"

    id: Mapped[str] = mapped_column(IdColumn, primary_key=True, default=new_id)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patient.id"), index=True)
    type: Mapped[str] = mapped_column(String(32), default="basic")
    member_number: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="active")
    period_start: Mapped[date | None] = mapped_column(Date)
    period_end: Mapped[date | None] = mapped_column(Date)
    payor_id: Mapped[str | None] = mapped_column(ForeignKey("organization.id"))

    __table_args__ = (UniqueConstraint("type", "member_number"),)

    def active_on(self, day: date) -> bool:
        """Active status and the period covers the day."""
        return (
            self.status == "active"
            and (self.period_start is None or self.period_start <= day)
            and (self.period_end is None or day <= self.period_end)
        )


class AuditRecord(Base):
    """Who did what to which record, when, with what outcome (served as FHIR AuditEvent)."""

    __tablename__ = "audit_record"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    recorded: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    action: Mapped[str] = mapped_column(String(8))  # C R U D E (FHIR AuditEvent.action)
    interaction: Mapped[str] = mapped_column(String(32))  # read, search, create, login, ...
    outcome: Mapped[str] = mapped_column(String(4), default="0")
    agent_kind: Mapped[str] = mapped_column(String(16))  # client, user, system
    agent_name: Mapped[str | None] = mapped_column(String(100), index=True)
    organization_id: Mapped[str | None] = mapped_column(String(64))
    entity_type: Mapped[str | None] = mapped_column(String(64))
    entity_id: Mapped[str | None] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    query: Mapped[str | None] = mapped_column(String(2000))
    request_id: Mapped[str | None] = mapped_column(String(64))
