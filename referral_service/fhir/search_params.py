"""Search parameter declarations and the extraction of index values from resource JSON."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Context, Decimal, localcontext
from typing import Any
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")
MIN_INSTANT = datetime(1, 1, 2, tzinfo=UTC)
MAX_INSTANT = datetime(9999, 12, 30, tzinfo=UTC)
_DATE = re.compile(
    r"^(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})(T(?P<H>\d{2}):(?P<M>\d{2})(:(?P<S>\d{2})(\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?\Z",
    re.ASCII,  # FHIR dates are ASCII digits, not ٢٠٢٦
)


@dataclass(frozen=True)
class SearchParam:
    """One search parameter: name, type, and the element paths it indexes."""

    name: str
    type: str  # token, string, date, reference, quantity
    paths: tuple[str, ...]
    targets: tuple[str, ...] = ()  # reference target types (empty: any)
    description: str = ""


def walk(node: Any, path: str) -> Iterator[Any]:
    """Values at a dotted path, flattening lists on the way."""
    values: list[Any] = [node]
    for part in path.split("."):
        nxt: list[Any] = []
        for v in values:
            if isinstance(v, dict) and part in v:
                child = v[part]
                if isinstance(child, list):
                    nxt.extend(child)
                else:
                    nxt.append(child)
        values = nxt
        if not values:
            return
    yield from values


def normalise(text: str) -> str:
    """Lower case, accents removed, whitespace folded: the default string match form."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _column(" ".join(stripped.lower().split()))


def _column(text: str) -> str:
    """A value as an index column holds it: at most 200 characters, no NUL (PostgreSQL refuses it)."""
    return text.replace("\x00", "")[:200]


def tokens_of(value: Any) -> Iterator[tuple[str | None, str]]:
    """(system, code) pairs of an Identifier, CodeableConcept, Coding, code or boolean."""
    if isinstance(value, bool):
        yield None, "true" if value else "false"
    elif isinstance(value, str):
        yield None, value
    elif isinstance(value, dict):
        if "coding" in value:
            for coding in value["coding"]:
                if isinstance(coding, dict) and coding.get("code"):
                    yield coding.get("system"), str(coding["code"])
        elif "code" in value and isinstance(value["code"], str):
            yield value.get("system"), value["code"]
        elif "value" in value and isinstance(value["value"], str):  # Identifier
            yield value.get("system"), value["value"]


TEXT_SUFFIX = ":text"  # the string index rows of a token parameter's texts (`code:text=`)


def texts_of(value: Any) -> Iterator[str]:
    """The words a token's `:text` modifier searches: a CodeableConcept's text and its codings'
    displays, or a Coding's display (an Identifier or a code has none)."""
    if not isinstance(value, dict):
        return
    for key in ("text", "display"):
        if isinstance(value.get(key), str) and value[key].strip():
            yield value[key]
    for coding in value.get("coding") or []:
        if isinstance(coding, dict) and isinstance(coding.get("display"), str) and coding["display"].strip():
            yield coding["display"]


def strings_of(value: Any) -> Iterator[str]:
    """Searchable strings of a string, HumanName or Address."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key in ("text", "family", "district", "city", "state", "postalCode", "country"):
            if isinstance(value.get(key), str):
                yield value[key]
        for key in ("given", "prefix", "line"):
            for part in value.get(key) or []:
                if isinstance(part, str):
                    yield part
        family, given = value.get("family"), value.get("given")
        if isinstance(family, str) and given:
            yield family + "".join(g for g in given if isinstance(g, str))  # 王芳: Chinese full name


def parse_date_range(text: str) -> tuple[datetime, datetime]:
    """The instant range a FHIR date/dateTime/instant covers; zone-less values are Asia/Shanghai."""
    m = _DATE.match(text.strip())
    if not m:
        raise ValueError(f"not a FHIR date or dateTime: {text!r}")
    y, mo, d = int(m["y"]), m["m"], m["d"]
    tz: tzinfo = UTC if m["tz"] == "Z" else SHANGHAI
    if m["tz"] and m["tz"] != "Z":
        sign = 1 if m["tz"][0] == "+" else -1
        hh, mm = int(m["tz"][1:3]), int(m["tz"][4:6])
        tz = timezone(sign * timedelta(hours=hh, minutes=mm))
    unit: str | timedelta
    if mo is None:
        low, unit = datetime(y, 1, 1, tzinfo=tz), "year"
    elif d is None:
        low, unit = datetime(y, int(mo), 1, tzinfo=tz), "month"
    elif m["H"] is None:
        low, unit = datetime.combine(date(y, int(mo), int(d)), time(), tzinfo=tz), timedelta(days=1)
    else:
        seconds = int(m["S"] or 0)
        micro = int((m["f"] or "0")[:6].ljust(6, "0"))
        low = datetime(y, int(mo), int(d), int(m["H"]), int(m["M"]), seconds, micro, tzinfo=tz)
        if m["S"] is None:
            unit = timedelta(minutes=1)
        else:
            unit = timedelta(seconds=1) if m["f"] is None else timedelta(microseconds=1)
    try:
        high = _after(low, unit) - timedelta(microseconds=1)
    except (ValueError, OverflowError):  # the range reaches the end of the calendar
        high = MAX_INSTANT
    return _utc(low), _utc(high)


def shanghai_date(text: str) -> date:
    """The Asia/Shanghai calendar day of a FHIR date, dateTime or instant given to the day at least.

    An instant names the day it falls on in Asia/Shanghai ("2026-11-12T18:00:00Z" is 2026-11-13
    there); a date-only or zone-less value is read as Asia/Shanghai (DESIGN section 5). Slicing the
    first ten characters would give the day in the value's own zone. ValueError when the value is
    not a FHIR date or dateTime, or less precise than a day.
    """
    m = _DATE.match(text.strip())
    if not m or m["d"] is None:
        raise ValueError(f"not a FHIR date or dateTime to the day: {text!r}")
    day = date(int(m["y"]), int(m["m"]), int(m["d"]))
    if m["H"] is None or not m["tz"]:
        return day  # already a day (or a time) in Asia/Shanghai
    try:
        return parse_date_range(text)[0].astimezone(SHANGHAI).date() if 1 < day.year < 9999 else day
    except (OverflowError, ValueError):
        return day


def _after(low: datetime, unit: str | timedelta) -> datetime:
    """The first instant after the year, month or span that starts at `low`."""
    if unit == "year":
        return low.replace(year=low.year + 1)
    if unit == "month":
        return low.replace(year=low.year + low.month // 12, month=low.month % 12 + 1)
    assert isinstance(unit, timedelta)
    return low + unit


def _utc(moment: datetime) -> datetime:
    """The instant in UTC, kept within [MIN_INSTANT, MAX_INSTANT] (year 1 at +08:00 is before UTC's).

    An instant UTC cannot hold lies beyond the end of the calendar it is nearer to: year 1 at +14:00
    before the first, year 9999 at -12:00 after the last.
    """
    try:
        return min(max(moment.astimezone(UTC), MIN_INSTANT), MAX_INSTANT)
    except OverflowError:
        return MAX_INSTANT if moment.year > MAX_INSTANT.year // 2 else MIN_INSTANT


def dates_of(value: Any) -> Iterator[tuple[datetime, datetime]]:
    """Ranges of a date, dateTime, instant or Period."""
    if isinstance(value, str):
        yield parse_date_range(value)
    elif isinstance(value, dict) and ("start" in value or "end" in value):
        low = parse_date_range(value["start"])[0] if value.get("start") else MIN_INSTANT
        high = parse_date_range(value["end"])[1] if value.get("end") else MAX_INSTANT
        yield low, high


def references_of(value: Any) -> Iterator[tuple[str, str]]:
    """(type, id) of a relative or absolute literal Reference."""
    if isinstance(value, dict):
        ref = value.get("reference")
        # Contained (#x), urn: and absolute references point outside this server's store.
        if isinstance(ref, str) and not ref.startswith(("#", "urn:", "http://", "https://")):
            parts = ref.rstrip("/").split("/")
            if len(parts) >= 2:
                if len(parts) >= 4 and parts[-2] == "_history":
                    parts = parts[:-2]
                yield parts[-2], parts[-1]


# The numbers a quantity index row or search holds: at most this many significant digits, and an
# adjusted exponent within +-MAX_QUANTITY_EXPONENT (PostgreSQL's NUMERIC and SQLite's key hold more;
# the margin keeps a search's precision and approximation bounds exact).
MAX_QUANTITY_DIGITS = 60
MAX_QUANTITY_EXPONENT = 99
_EXACT = Context(prec=400)  # wide enough for every bound of such numbers: no rounding


def quantity_number(value: Any) -> Decimal | None:
    """A JSON number as an exact decimal within the indexed range, else None (a float, as a service
    may build one, by its shortest text: what the stored JSON holds)."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if not in_quantity_range(number) and number.is_finite():
        number = number.normalize(_EXACT)  # 100.000...0 with more digits than kept: 1E+2
    return number if in_quantity_range(number) else None


def in_quantity_range(number: Decimal) -> bool:
    """Whether a quantity index or search holds the number (finite, MAX_QUANTITY_DIGITS significant
    digits at most, within 1e+-MAX_QUANTITY_EXPONENT, its last digit no finer than that allows)."""
    if not number.is_finite():
        return False
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    if not -(MAX_QUANTITY_EXPONENT + MAX_QUANTITY_DIGITS) <= exponent <= MAX_QUANTITY_EXPONENT:
        return False
    if number.is_zero():
        return True
    digits = len(number.as_tuple().digits)
    return digits <= MAX_QUANTITY_DIGITS and abs(number.adjusted()) <= MAX_QUANTITY_EXPONENT


def quantities_of(value: Any) -> Iterator[tuple[str | None, str | None, str | None, Decimal]]:
    """(system, code, unit, value) of a Quantity (Age, Duration ... alike) with a numeric value."""
    if isinstance(value, dict):
        number = quantity_number(value.get("value"))
        if number is not None:
            system, code, unit = (value.get(k) for k in ("system", "code", "unit"))
            yield (
                _column(system) if isinstance(system, str) and system else None,
                _column(code) if isinstance(code, str) and code else None,
                _column(unit) if isinstance(unit, str) and unit else None,
                number,
            )


def quantity_bounds(prefix: str, number: Decimal) -> tuple[Decimal, ...]:
    """The bounds a quantity search compares stored values with (FHIR search.html#quantity):

    eq, ne: the number's implicit precision range [low, high), half a unit of its last digit either
    way (5.4: [5.35, 5.45); 100: [99.5, 100.5); 1e2: [50, 150)); sa: high (values from there up);
    eb: low (values below); gt, ge, lt, le: the number itself; ap: [low, high] both included, 10 %
    of the number either way (HAPI's), or the precision range when that is wider (ap0)."""
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)  # (a finite number)
    with localcontext(_EXACT):
        half = Decimal((0, (5,), exponent - 1))
        low, high = number - half, number + half
        if prefix in ("eq", "ne"):
            return low, high
        if prefix == "sa":
            return (high,)
        if prefix == "eb":
            return (low,)
        if prefix == "ap":
            spread = max(abs(number) * Decimal("0.1"), half)
            return number - spread, number + spread
    return (number,)


@dataclass(frozen=True)
class IndexRows:
    """The index values of one resource, by kind."""

    tokens: list[tuple[str, str | None, str]]
    strings: list[tuple[str, str, str]]
    dates: list[tuple[str, datetime, datetime]]
    references: list[tuple[str, str, str]]
    # (param, system, code, unit, value)
    quantities: list[tuple[str, str | None, str | None, str | None, Decimal]] = field(default_factory=list)


def extract(resource: dict[str, Any], params: list[SearchParam]) -> IndexRows:
    """Every index value the declared parameters find in the resource."""
    rows = IndexRows([], [], [], [])
    for p in params:
        for path in p.paths:
            for value in walk(resource, path):
                if p.type == "token":
                    rows.tokens.extend(
                        (p.name, _column(s) if s else s, _column(c)) for s, c in tokens_of(value)
                    )
                    rows.strings.extend(
                        (p.name + TEXT_SUFFIX, normalise(t), _column(t)) for t in texts_of(value)
                    )
                elif p.type == "string":
                    rows.strings.extend((p.name, normalise(s), _column(s)) for s in strings_of(value))
                elif p.type == "date":
                    rows.dates.extend((p.name, lo, hi) for lo, hi in dates_of(value))
                elif p.type == "quantity":
                    rows.quantities.extend((p.name, *q) for q in quantities_of(value))
                elif p.type == "reference":
                    rows.references.extend(
                        (p.name, t, i) for t, i in references_of(value)
                        # FHIR ids are at most 64 characters and type names short: longer is not ours.
                        if (not p.targets or t in p.targets) and len(t) <= 40 and len(i) <= 64
                    )
    # One row per distinct value keeps the indexes small and searches free of duplicates.
    return IndexRows(
        list(dict.fromkeys(rows.tokens)), list(dict.fromkeys(rows.strings)),
        list(dict.fromkeys(rows.dates)), list(dict.fromkeys(rows.references)),
        list(dict.fromkeys(rows.quantities)),  # 5.4 and 5.40 are one value (equal Decimals hash alike)
    )
