"""Declarative base, naming convention and column types shared by every model."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import DateTime, MetaData, Numeric, String
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetime stored as UTC; naive values are refused, SQLite reads come back aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: times are stored timezone-aware (UTC)")
        value = value.astimezone(UTC)
        # SQLite has no zone type: store naive UTC so string comparison sorts correctly.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Money(TypeDecorator[Decimal]):
    """Yuan amounts as exact decimals with two places (fen)."""

    impl = Numeric(16, 2, asdecimal=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if isinstance(value, float):
            raise TypeError("money must be Decimal, not float")
        return Decimal(value).quantize(Decimal("0.01"))

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(str(value)).quantize(Decimal("0.01"))


def utcnow() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.now(UTC)


def new_id() -> str:
    """A fresh FHIR-compatible logical id."""
    return uuid.uuid4().hex


IdColumn = String(64)

# Integer keys and version numbers are 32-bit columns: a larger number from a URL names nothing.
MAX_INT_KEY = 2**31 - 1


def int_key(text: str) -> int | None:
    """The text as an integer key (decimal digits, within the column's range), else None."""
    if not (text.isascii() and text.isdigit()) or len(text) > 10:
        return None
    value = int(text)
    return value if value <= MAX_INT_KEY else None


class Base(DeclarativeBase):
    """Base of every mapped class."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
