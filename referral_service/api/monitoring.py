"""Monitoring JSON for the dashboard: /api/monitoring (indicators, alerts and their lifecycle).

Callers are API clients (bearer token) of the poverty-alleviation office, the health commission or
the medical insurance bureau (or the county platform). Reads need the scope `system/Flag.rs` (or
`s`), acknowledging and resolving `system/Flag.u`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from flask import Blueprint, Response, jsonify, request
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema
from sqlalchemy.orm import Session

from ..domain.actor import Actor
from ..domain.days import EARLIEST_DAY, LATEST_DAY
from ..domain.errors import BadRequest, NotFound, Problem
from ..domain.ledger import FUNDS
from ..domain.monitoring import ALERT_STATUSES
from ..extensions import csrf, database
from ..fhir import jsonio
from ..services import alerts, indicators
from ..services.actors import actor_for
from .guard import require

bp = Blueprint("monitoring", __name__, url_prefix="/api/monitoring")
csrf.exempt(bp)
T = TypeVar("T")


class IndicatorArgs(Schema):
    """Query string of the indicator endpoints."""

    class Meta:
        unknown = EXCLUDE

    start = fields.Date(load_default=None, validate=validate.Range(EARLIEST_DAY, LATEST_DAY))
    end = fields.Date(load_default=None, validate=validate.Range(EARLIEST_DAY, LATEST_DAY))
    hospital = fields.String(load_default=None)
    fund = fields.String(load_default=None, validate=validate.OneOf(FUNDS))
    township = fields.String(load_default=None)

    @validates_schema
    def _order(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("start") and data.get("end") and data["start"] > data["end"]:
            raise ValidationError("start must not be after end", "start")


class AlertArgs(Schema):
    """Query string of the alert list."""

    class Meta:
        unknown = EXCLUDE

    reason = fields.String(load_default=None, validate=validate.OneOf(list(alerts.REASONS)))
    status = fields.String(load_default=None, validate=validate.OneOf(ALERT_STATUSES))
    category = fields.String(load_default=None, validate=validate.OneOf(alerts.CATEGORIES))
    township = fields.String(load_default=None)
    organization = fields.String(load_default=None)
    household = fields.String(load_default=None)
    patient = fields.String(load_default=None)
    before = fields.Integer(load_default=None, validate=validate.Range(min=1))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class NoteBody(Schema):
    """Body of acknowledge (note optional) and resolve (note required)."""

    class Meta:
        unknown = EXCLUDE

    note = fields.String(load_default=None, validate=validate.Length(max=4000))


def _parse(schema: Schema, data: Mapping[str, Any]) -> dict[str, Any]:
    try:
        parsed: dict[str, Any] = schema.load(data)
    except ValidationError as exc:
        messages = exc.normalized_messages()
        problems = [Problem(f"{name}: {'; '.join(map(str, errs)) if isinstance(errs, list) else errs}",
                            expression=name) for name, errs in messages.items()]
        raise BadRequest(problems[0].message, problems) from None
    return parsed


def _body() -> dict[str, Any]:
    """The JSON object sent, read as strictly as FHIR bodies (no lone surrogate, NUL or 5000-digit number)."""
    if not request.content_length:
        return {}
    try:
        body = jsonio.loads_body(request.get_data(cache=True))
    except jsonio.JsonError as exc:
        raise BadRequest(f"the body is not a usable JSON object: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _as_monitor(permission: str, work: Callable[[Session, Actor], T]) -> T:
    """Check token, scope and organisation, then run the work in one unit of work."""
    principal = require("Flag", permission)
    with database.unit_of_work() as session:
        actor = actor_for(session, name=principal.client_id, kind="client",
                          organization_id=principal.organization_id)
        alerts.ensure_may_monitor(actor)
        return work(session, actor)


def _period_and_filters(args: dict[str, Any]) -> tuple[indicators.Period, indicators.Filters]:
    end = args["end"] or indicators.local_today()
    start = args["start"] or end.replace(day=1)
    return indicators.Period(start, end), indicators.Filters(args["hospital"], args["fund"], args["township"])


@bp.get("/indicators")
def all_indicators() -> Response:
    """Every indicator section for ?start=&end= (default: this month) and hospital, fund, township."""
    period, filters = _period_and_filters(_parse(IndicatorArgs(), request.args))
    now = datetime.now(UTC)
    data = _as_monitor("s", lambda s, _a: indicators.all_indicators(s, period, filters, now=now))
    return jsonify(indicators.plain(data))


@bp.get("/indicators/<name>")
def one_indicator(name: str) -> Response:
    """One indicator section (discharge-to-settlement, payment-delays, households, ...)."""
    if name not in indicators.SECTIONS:
        raise NotFound(f"unknown indicator section {name!r}; one of {', '.join(indicators.SECTIONS)}")
    period, filters = _period_and_filters(_parse(IndicatorArgs(), request.args))
    now = datetime.now(UTC)
    data = _as_monitor("s", lambda s, _a: indicators.section(s, name, period, filters, now))
    return jsonify({"period": indicators.plain(period), "filters": indicators.plain(filters),
                    name: indicators.plain(data)})


@bp.get("/alerts")
def alert_list() -> Response:
    """Alerts, newest first, filtered by reason, status, category, township, organisation, household."""
    args = _parse(AlertArgs(), request.args)
    query = alerts.AlertQuery(
        reason=args["reason"], status=args["status"], category=args["category"], township=args["township"],
        organization_id=args["organization"], household_id=args["household"], patient_id=args["patient"],
        before_id=args["before"], limit=args["limit"],
    )
    items, cursor = _as_monitor("s", lambda s, a: alerts.list_alerts(s, a, query))
    return jsonify({"alerts": items, "next_before": cursor})


@bp.get("/alerts/<key:alert_id>")
def alert_detail(alert_id: int) -> Response:
    """One alert with the figures behind it and its history."""
    return jsonify(_as_monitor("r", lambda s, a: alerts.get_alert(s, a, alert_id)))


@bp.post("/alerts/<key:alert_id>/acknowledge")
def acknowledge(alert_id: int) -> Response:
    """open -> acknowledged (optional note)."""
    note = _parse(NoteBody(), _body())["note"]
    return jsonify(_as_monitor("u", lambda s, a: alerts.acknowledge(s, a, alert_id, note)))


@bp.post("/alerts/<key:alert_id>/resolve")
def resolve(alert_id: int) -> Response:
    """open or acknowledged -> resolved; the note saying what was done is required."""
    note = _parse(NoteBody(), _body())["note"]
    if not (note or "").strip():
        raise BadRequest("note: resolving an alert needs a note saying what was done", [
            Problem("note: resolving an alert needs a note saying what was done", expression="note")])
    return jsonify(_as_monitor("u", lambda s, a: alerts.resolve(s, a, alert_id, note)))
