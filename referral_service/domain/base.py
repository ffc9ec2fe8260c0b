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


# Exact decimals on SQLite: its NUMERIC keeps binary floats (5.35 is then not 5.35), so a number is
# stored as a text key whose code-point order is the numbers' order (`decimal_key`).
_KEY_EXPONENT = 499  # adjusted exponents from -499 to 499 (1e-499 .. 9.99e499)
DECIMAL_KEY_LENGTH = 80  # the longest key: a sign, three exponent digits, 75 digits and an end mark
MAX_KEY_DIGITS = DECIMAL_KEY_LENGTH - 5


def decimal_key(value: Decimal) -> str:
    """A text whose order is the number's order, equal for equal numbers (5.4 and 5.40 alike).

    Negative numbers start with "1", zero is "2", positive numbers start with "3"; then the adjusted
    exponent (the power of ten of the first digit) in three digits, then the significant digits. For a
    negative number the exponent and the digits are complemented (a greater magnitude sorts first)
    and a "~" ends the digits, so -1.23 ("...876~") sorts before -1.2 ("...87~"). ValueError for a
    number that is not finite, has more than MAX_KEY_DIGITS significant digits or lies beyond 1e±499.
    """
    if not value.is_finite():
        raise ValueError(f"not a finite number: {value}")
    if value.is_zero():
        return "2"
    sign, digits, _ = value.as_tuple()
    text = "".join(map(str, digits)).rstrip("0")
    adjusted = value.adjusted()
    if not -_KEY_EXPONENT <= adjusted <= _KEY_EXPONENT or len(text) > MAX_KEY_DIGITS:
        raise ValueError(f"a number beyond what is stored exactly: {value}")
    if sign == 0:
        return f"3{adjusted + _KEY_EXPONENT:03d}{text}"
    flipped = "".join(str(9 - int(d)) for d in text)
    return f"1{_KEY_EXPONENT - adjusted:03d}{flipped}~"


def decimal_from_key(key: str) -> Decimal:
    """The number of a `decimal_key`."""
    if key == "2":
        return Decimal(0)
    if key[0] == "3":
        sign, adjusted, text = 0, int(key[1:4]) - _KEY_EXPONENT, key[4:]
    else:
        sign, adjusted = 1, _KEY_EXPONENT - int(key[1:4])
        text = "".join(str(9 - int(d)) for d in key[4:-1])
    return Decimal((sign, tuple(int(d) for d in text), adjusted - len(text) + 1))


class ExactDecimal(TypeDecorator[Decimal]):
    """Decimal numbers compared exactly, any scale: NUMERIC on PostgreSQL; on SQLite the text of
    `decimal_key` (its NUMERIC would compare binary floats). Floats are refused."""

    impl = Numeric(asdecimal=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(DECIMAL_KEY_LENGTH))
        return dialect.type_descriptor(Numeric(asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, float):
            raise TypeError("exact decimals must be Decimal or int, not float")
        number = Decimal(value)
        return decimal_key(number) if dialect.name == "sqlite" else number

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return decimal_from_key(value) if dialect.name == "sqlite" else Decimal(value)


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
