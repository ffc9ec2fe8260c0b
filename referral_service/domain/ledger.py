"""The settlement ledger: settlements, yearly accumulators, what each fund owes each hospital."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, Boolean, Date, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import Base, IdColumn, Money, UTCDateTime, new_id, utcnow

ZERO = Decimal("0.00")
FUNDS = ("basic-insurance", "critical-illness", "medical-assistance", "poverty-safety-net")


class Settlement(Base):
    """One adjudicated claim (一站式结算): every component, the policy used, and its state."""

    __tablename__ = "settlement"

    id: Mapped[str] = mapped_column(IdColumn, primary_key=True, default=new_id)
    claim_id: Mapped[str] = mapped_column(String(64), index=True)  # Claim resource id
    claim_response_id: Mapped[str] = mapped_column(String(64))
    eob_id: Mapped[str] = mapped_column(String(64))
    provider_id: Mapped[str] = mapped_column(ForeignKey("organization.id"), index=True)
    identifier_system: Mapped[str] = mapped_column(String(200))
    identifier_value: Mapped[str] = mapped_column(String(200))
    content_hash: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(ForeignKey("patient.id"), index=True)
    household_id: Mapped[str | None] = mapped_column(String(64), index=True)
    claim_type: Mapped[str] = mapped_column(String(16))  # inpatient, outpatient
    facility_level: Mapped[str] = mapped_column(String(16))
    discharge_date: Mapped[date] = mapped_column(Date, index=True)
    accumulator_year: Mapped[int] = mapped_column(Integer)
    registered_poor: Mapped[bool] = mapped_column(Boolean)
    referred: Mapped[bool] = mapped_column(Boolean)
    unreferred_out_of_county: Mapped[bool] = mapped_column(Boolean)
    episode_id: Mapped[str | None] = mapped_column(String(64), index=True)  # root referral id
    policy_id: Mapped[str] = mapped_column(String(100))
    policy_version: Mapped[str] = mapped_column(String(32))
    total: Mapped[Decimal] = mapped_column(Money)
    eligible: Mapped[Decimal] = mapped_column(Money)
    basic_deductible: Mapped[Decimal] = mapped_column(Money)
    basic_insurance: Mapped[Decimal] = mapped_column(Money)
    critical_illness: Mapped[Decimal] = mapped_column(Money)
    medical_assistance: Mapped[Decimal] = mapped_column(Money)
    poverty_safety_net: Mapped[Decimal] = mapped_column(Money)
    class_b_self_pay: Mapped[Decimal] = mapped_column(Money)
    out_of_list: Mapped[Decimal] = mapped_column(Money)
    patient_pay: Mapped[Decimal] = mapped_column(Money)
    # What this settlement added to the accumulators (subtracted again on reversal).
    deductible_borne: Mapped[Decimal] = mapped_column(Money)
    ci_r1_added: Mapped[Decimal] = mapped_column(Money)
    trace: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active, reversed
    sequence: Mapped[int] = mapped_column(Integer)  # settlement order within the person's year
    settled_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    settled_by: Mapped[str | None] = mapped_column(String(100))
    reversed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    reversed_by: Mapped[str | None] = mapped_column(String(100))
    reversal_reason: Mapped[str | None] = mapped_column(Text)

    payables: Mapped[list[Payable]] = relationship(back_populates="settlement", order_by="Payable.fund")

    __table_args__ = (
        Index("ix_settlement_key", "provider_id", "identifier_system", "identifier_value", "status"),
        Index("ix_settlement_person_year", "patient_id", "accumulator_year", "sequence"),
        Index("ix_settlement_provider_discharge", "provider_id", "discharge_date"),
    )

    def amount_of(self, fund: str) -> Decimal:
        """What the fund pays on this settlement."""
        return {
            "basic-insurance": self.basic_insurance, "critical-illness": self.critical_illness,
            "medical-assistance": self.medical_assistance, "poverty-safety-net": self.poverty_safety_net,
        }[fund]


class YearAccumulator(Base):
    """A person's yearly totals per payer, changed only inside a settlement transaction under a row lock."""

    __tablename__ = "year_accumulator"

    patient_id: Mapped[str] = mapped_column(ForeignKey("patient.id"), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    inpatient_basic_paid: Mapped[Decimal] = mapped_column(Money, default=ZERO)
    outpatient_basic_paid: Mapped[Decimal] = mapped_column(Money, default=ZERO)
    critical_illness_cumulative_r1: Mapped[Decimal] = mapped_column(Money, default=ZERO)
    critical_illness_paid: Mapped[Decimal] = mapped_column(Money, default=ZERO)
    assistance_paid: Mapped[Decimal] = mapped_column(Money, default=ZERO)
    safety_net_paid: Mapped[Decimal] = mapped_column(Money, default=ZERO)
    patient_paid: Mapped[Decimal] = mapped_column(Money, default=ZERO)
    settlements: Mapped[int] = mapped_column(Integer, default=0)  # a sequence counter, never decreases


class EpisodeDeductible(Base):
    """Inpatient deductible already borne in one referral episode and year (上转补差)."""

    __tablename__ = "episode_deductible"

    episode_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    borne: Mapped[Decimal] = mapped_column(Money, default=ZERO)


class Payable(Base):
    """What one fund owes one hospital for one settlement, and whether it has been paid."""

    __tablename__ = "payable"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    settlement_id: Mapped[str] = mapped_column(ForeignKey("settlement.id"), index=True)
    fund: Mapped[str] = mapped_column(String(32))
    hospital_id: Mapped[str] = mapped_column(ForeignKey("organization.id"))
    amount: Mapped[Decimal] = mapped_column(Money)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default="unpaid")  # unpaid, partial, paid, cancelled
    paid_amount: Mapped[Decimal] = mapped_column(Money, default=ZERO)
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    payment_id: Mapped[str | None] = mapped_column(String(64), index=True)  # PaymentReconciliation id

    settlement: Mapped[Settlement] = relationship(back_populates="payables")

    __table_args__ = (
        UniqueConstraint("settlement_id", "fund"),
        Index("ix_payable_open", "hospital_id", "fund", "status", "created_at"),
    )
