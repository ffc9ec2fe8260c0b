"""Form state for the templates: what was typed, and errors beside each field in the user's language."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from flask_babel import gettext
from flask_babel import lazy_gettext as _l
from werkzeug.datastructures import MultiDict

from ..domain.days import EARLIEST_DAY, LATEST_DAY, DayOutOfRange, parse_day
from ..services.registration import Msg
from .auth import language

# marshmallow's own messages, in words a clerk understands (and in the catalogue).
BUILTIN: dict[str, Any] = {
    "Missing data for required field.": _l("This field is required."),
    "Field may not be null.": _l("This field is required."),
    "Not a valid number.": _l("Enter a number."),
    "Not a valid integer.": _l("Enter a whole number."),
    "Special numeric values (nan or infinity) are not permitted.": _l("Enter a number."),
    "Not a valid date.": _l("Enter a date as YYYY-MM-DD."),
    "Not a valid boolean.": _l("Choose yes or no."),
    "Not a valid string.": _l("Enter text."),
    "Not a valid list.": _l("Enter one or more values."),
    "Invalid input type.": _l("Enter the values of this row."),
    "Unknown field.": _l("This field is not expected."),
}


def read_day(raw: str) -> tuple[date | None, list[str]]:
    """A day typed into a period or filter field: (day, []) or (None, [the error, in the user's language]).

    Days outside domain.days' range are refused like malformed ones (see that module for why).
    """
    try:
        return parse_day(raw), []
    except DayOutOfRange:
        return None, [gettext("Enter a date between %(low)s and %(high)s.", low=EARLIEST_DAY.isoformat(),
                              high=LATEST_DAY.isoformat())]
    except ValueError:
        return None, [gettext("Enter a date as YYYY-MM-DD.")]


def _translate(message: Any) -> str:
    if isinstance(message, Msg):
        return message.render(gettext, language())
    text = str(message)
    known = BUILTIN.get(text)
    return str(known) if known is not None else gettext(text)


def localise(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested errors as {"field" or "list.0.field": [messages]} in the user's language."""
    out: dict[str, list[str]] = {}
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            for sub, texts in localise(value, name).items():
                out.setdefault(sub, []).extend(texts)
    elif isinstance(messages, list | tuple):
        for item in messages:
            if isinstance(item, Mapping):
                for sub, texts in localise(item, prefix).items():
                    out.setdefault(sub, []).extend(texts)
            else:
                out.setdefault(prefix or "_schema", []).append(_translate(item))
    else:
        out.setdefault(prefix or "_schema", []).append(_translate(messages))
    return out


def anchor(name: str) -> str:
    """The input an error belongs to: diagnoses.1 -> diagnosis-1, charges.0.amount -> charges-0-amount."""
    parts = name.split(".")
    if parts[0] == "diagnoses":
        return f"diagnosis-{parts[1] if len(parts) > 1 else 0}"
    if parts[0] == "charges":
        return "-".join(parts) if len(parts) == 3 else "charges-0-description"
    return parts[0]


@dataclass
class FormState:
    """Values as typed (kept on errors) and localised errors per field."""

    values: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # filled as the fields render, for the summary

    def value(self, name: str, default: Any = "") -> Any:
        """What was typed (or the default)."""
        found = self.values.get(name)
        return default if found is None else found

    def error(self, name: str) -> list[str]:
        """Errors of one field."""
        return self.errors.get(name, [])

    def row_errors(self, name: str) -> bool:
        """Whether any field of a list row (e.g. charges.0) has an error."""
        return any(key == name or key.startswith(name + ".") for key in self.errors)

    @property
    def invalid(self) -> bool:
        """True when there is any error."""
        return bool(self.errors)

    def labelled(self, name: str, label: Any) -> str:
        """Remember the label a field was rendered with (the error summary names it); renders nothing."""
        self.labels.setdefault(name, str(label))
        return ""

    def summary(self) -> list[tuple[str, str]]:
        """(field, message) of every error, for the summary at the top of the form."""
        return [(name, text) for name, texts in self.errors.items() for text in texts]

    def fail(self, messages: Any) -> FormState:
        """Record a validation failure."""
        self.errors = localise(messages)
        return self


def text_fields(form: MultiDict[str, str], names: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(payload, values): non-blank text fields for the schema, everything as typed for the form."""
    payload: dict[str, Any] = {}
    values: dict[str, Any] = {}
    for name in names:
        raw = form.get(name, "")
        values[name] = raw
        if raw.strip():
            payload[name] = raw.strip()
    return payload, values


def checkboxes(form: MultiDict[str, str], names: Iterable[str]) -> dict[str, bool]:
    """Checked boxes are true, absent ones false."""
    return {name: name in form for name in names}


def code_list(form: MultiDict[str, str], name: str) -> list[str]:
    """Non-blank values of a repeated field, in order (blank rows dropped)."""
    return [v.strip() for v in form.getlist(name) if v.strip()]


def with_blank_rows(typed: Iterable[Any], rows: int, blank: Any) -> list[Any]:
    """The rows typed, then blank ones up to `rows`; always at least one blank row to add another."""
    shown = list(typed)
    return shown + [blank] * max(rows - len(shown), 1)


MAX_ROWS = 50
_ROW = re.compile(r"^charges-(\d+)-")


def charge_rows(form: MultiDict[str, str]) -> list[dict[str, str]]:
    """Charge rows (charges-<n>-<field>) that have anything typed in them, in order; blank rows dropped."""
    indexes = sorted({int(m.group(1)) for key in form for m in [_ROW.match(key)] if m})
    out = []
    for i in indexes[:MAX_ROWS]:
        row = {
            "description": form.get(f"charges-{i}-description", "").strip(),
            "charge_class": form.get(f"charges-{i}-charge_class", "").strip(),
            "amount": form.get(f"charges-{i}-amount", "").strip().replace(",", "").lstrip("¥"),
        }
        if row["description"] or row["amount"]:
            out.append({k: v for k, v in row.items() if v})
    return out
