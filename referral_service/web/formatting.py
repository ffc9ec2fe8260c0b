"""Template helpers: money, dates in Asia/Shanghai, ages, and translated labels of codes."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from flask import Flask
from flask_babel import format_currency, format_date, format_datetime, ngettext
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf.csrf import generate_csrf

from ..fhir import codes, profiles
from ..fhir.search_params import SHANGHAI
from . import auth, forms

LABELS: dict[str, dict[str, Any]] = {
    "gender": {"male": _l("male"), "female": _l("female"), "other": _l("other"), "unknown": _l("unknown")},
    "priority": {
        "stat": _l("emergency"),
        "urgent": _l("urgent"),
        "asap": _l("urgent"),
        "routine": _l("routine"),
    },
    "urgency": {"emergency": _l("emergency"), "urgent": _l("urgent"), "routine": _l("routine")},
    "outcome": {
        "refer-up": _l("Refer up to the county hospital"),
        "treat-here": _l("Treat here at the clinic"),
        "down-referral": _l("Down-referral to the township clinic (recover at home)"),
        "none": _l("No down-referral"),
    },
    "capability": {
        "general": _l("general"),
        "obstetrics": _l("obstetrics"),
        "paediatrics": _l("paediatrics"),
        "tcm": _l("traditional Chinese medicine"),
    },
    "sr_status": {
        "draft": _l("proposed, not yet confirmed"),
        "active": _l("sent"),
        "revoked": _l("withdrawn"),
        "completed": _l("completed"),
        "on-hold": _l("on hold"),
        "entered-in-error": _l("entered in error"),
    },
    "task_status": {
        "draft": _l("draft"),
        "requested": _l("waiting for the hospital"),
        "received": _l("received"),
        "accepted": _l("accepted"),
        "rejected": _l("declined"),
        "in-progress": _l("admitted"),
        "completed": _l("completed"),
        "cancelled": _l("cancelled"),
        "failed": _l("failed"),
    },
    "kind": {"up-referral": _l("up-referral"), "down-referral": _l("down-referral")},
    "claim_type": {"inpatient": _l("inpatient stay"), "outpatient": _l("outpatient visit")},
    # Notes the referral workflow stores on a decision (GuidanceResponse.note, English for integrators).
    "decision_note": {
        "no county hospital is registered for this county": _l(
            "No county hospital is registered for this county."
        ),
        "no township clinic found for the patient: no down-referral (down-referral-no-clinic)": _l(
            "No township clinic was found for the patient: no down-referral."
        ),
    },
    "encounter_class": {"AMB": _l("outpatient visit"), "IMP": _l("inpatient stay"), "EMER": _l("emergency")},
    "encounter_status": {
        "planned": _l("planned"),
        "arrived": _l("arrived"),
        "in-progress": _l("in progress"),
        "finished": _l("finished"),
        "cancelled": _l("cancelled"),
    },
    "consciousness": {
        "A": _l("A: alert"),
        "C": _l("C: new confusion"),
        "V": _l("V: responds to voice"),
        "P": _l("P: responds to pain"),
        "U": _l("U: unresponsive"),
    },
    "pregnancy": {"pregnant": _l("pregnant"), "not-pregnant": _l("not pregnant")},
    "charge_class": {
        "A": _l("class A (甲类)"),
        "B": _l("class B (乙类)"),
        "C": _l("class C, not covered (丙类)"),
    },
    "disposition": {
        "home": _l("home"),
        "alt-home": _l("alternative home"),
        "other-hcf": _l("other health care facility"),
        "hosp": _l("hospice"),
        "long": _l("long-term care"),
        "aadvice": _l("left against advice"),
        "exp": _l("died"),
        "psy": _l("psychiatric hospital"),
        "rehab": _l("rehabilitation"),
        "snf": _l("skilled nursing facility"),
        "oth": _l("other"),
    },
    "follow_up": {"scheduled": _l("scheduled"), "completed": _l("done"), "cancelled": _l("cancelled")},
    "coverage": {"basic": _l("basic medical insurance")},
    "coverage_status": {
        "active": _l("in force"),
        "cancelled": _l("cancelled"),
        "draft": _l("draft"),
        "entered-in-error": _l("entered in error"),
    },
    "role": {
        "clinic": _l("clinic"),
        "hospital": _l("county hospital"),
        "insurer": _l("insurance office"),
        "monitor": _l("poverty-alleviation office"),
        "admin": _l("administrator"),
    },
}

LABELS["task_status_down"] = {
    **LABELS["task_status"],
    "requested": _l("waiting for the clinic"),
    "accepted": _l("accepted by the clinic"),
    "in-progress": _l("in follow-up"),
    "completed": _l("follow-ups complete"),
}

NEWS2_UNITS = {
    "respiration_rate": "/min",
    "spo2": "%",
    "systolic_bp": "mmHg",
    "pulse": "/min",
    "temperature": "°C",
}


def label(kind: str, code: Any) -> str:
    """The translated label of a code (the code itself when unknown)."""
    if code is None or code == "":
        return "—"
    text = LABELS.get(kind, {}).get(str(code))
    return str(text) if text is not None else str(code)


def money(value: Any) -> str:
    """An amount in yuan in the user's locale: ¥1,234.50 (zh), CN¥1,234.50 (en)."""
    if value is None or value == "":
        return "—"
    return str(format_currency(Decimal(str(value)), "CNY"))


def when(value: Any) -> str:
    """Date and time in Asia/Shanghai (yyyy-MM-dd HH:mm)."""
    if not isinstance(value, datetime):
        return "—"
    if value.tzinfo is None:
        value = value.replace(tzinfo=SHANGHAI)
    return str(format_datetime(value, "yyyy-MM-dd HH:mm"))


def day(value: Any) -> str:
    """A date in the user's locale (medium)."""
    if isinstance(value, datetime):
        value = value.astimezone(SHANGHAI).date()
    if not isinstance(value, date):
        return "—"
    return str(format_date(value, "medium"))


def duration(value: Any) -> str:
    """An age such as '3 h' or '2 d' (how long a referral has waited)."""
    if not isinstance(value, timedelta):
        return "—"
    minutes = max(0, int(value.total_seconds() // 60))
    if minutes < 60:
        return ngettext("%(num)d minute", "%(num)d minutes", minutes)
    hours = minutes // 60
    if hours < 48:
        return ngettext("%(num)d hour", "%(num)d hours", hours)
    return ngettext("%(num)d day", "%(num)d days", hours // 24)


def age(birth: Any) -> str:
    """Age in completed years (months under two years)."""
    if not isinstance(birth, date):
        return "—"
    today = datetime.now(SHANGHAI).date()
    months = (today.year - birth.year) * 12 + today.month - birth.month - (today.day < birth.day)
    if months < 24:
        return ngettext("%(num)d month", "%(num)d months", max(months, 0))
    return ngettext("%(num)d year", "%(num)d years", months // 12)


def masked(number: Any) -> str:
    """An identity number with the middle hidden (lists show it masked)."""
    if not number:
        return "—"
    text = str(number)
    return text[:6] + "********" + text[-4:] if len(text) == 18 else text


def news2_value(parameter: str, value: str | None) -> str:
    """A NEWS2 input as measured, with its unit."""
    if value is None:
        return _("not measured")
    if parameter == "supplemental_oxygen":
        return _("yes") if value in ("True", "true") else _("no")
    if parameter == "consciousness":
        return label("consciousness", value)
    unit = NEWS2_UNITS.get(parameter, "")
    return f"{value} {_('/min') if unit == '/min' else unit}".strip()


def versioned(value: Any) -> tuple[str, str]:
    """(name, version) of a rule set canonical `id|version` or a policy `id version` ('' when none)."""
    text = str(value or "")
    for separator in ("|", " "):
        if separator in text:
            name, version = text.rsplit(separator, 1)
            return name, version
    return text, ""


def component_label(code: str, lang: str | None = None) -> str:
    """The name of a settlement component (from our CodeSystem) in the language."""
    zh = (lang or auth.language()).startswith("zh")
    return profiles.display(codes.SETTLEMENT_COMPONENT_SYSTEM, code, "zh-CN" if zh else "en") or code


def init_app(app: Flask) -> None:
    """Install the filters and globals."""
    app.add_template_filter(money, "money")
    app.add_template_filter(when, "when")
    app.add_template_filter(day, "day")
    app.add_template_filter(duration, "duration")
    app.add_template_filter(age, "age")
    app.add_template_filter(masked, "masked")
    app.add_template_global(label, "label")
    app.add_template_global(news2_value, "news2_value")
    app.add_template_global(auth.menu, "menu")
    app.add_template_global(auth.language, "language")
    app.add_template_global(generate_csrf, "csrf_token")
    app.add_template_global(forms.anchor, "anchor")
    app.add_template_global(component_label, "component_label")
    app.add_template_global(versioned, "versioned")
