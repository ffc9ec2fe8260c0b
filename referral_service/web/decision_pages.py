"""A referral decision's actions, shared by the clinic (the up-referral proposed at triage) and the
county hospital (the down-referral proposed at discharge): confirm it, or override it with a reason.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import flash, redirect, request, url_for
from flask.typing import ResponseReturnValue
from marshmallow import ValidationError

from ..services import visits
from .auth import work
from .forms import FormState, text_fields

# The decision page of a visit: (encounter id, the override form, HTTP status) -> response.
Page = Callable[[str, FormState, int], ResponseReturnValue]


def confirm(sr_id: str, confirmed: str, result_endpoint: str) -> ResponseReturnValue:
    """Send the proposed referral; back to the visit's decision with `confirmed` flashed."""
    with work() as (db, actor):
        visits.confirm(db, actor, sr_id)
        encounter_id = visits.visit_of_referral(db, actor, sr_id)
    flash(confirmed, "success")
    return redirect(url_for(result_endpoint, encounter_id=encounter_id))


def override(
    sr_id: str, fields: tuple[str, ...], page: Page, message: Callable[[bool], str], result_endpoint: str
) -> ResponseReturnValue:
    """Override the proposal with the form's reason (`fields`); the decision page again (422) with
    the form's errors, else back to it with `message(withdrawn)` flashed."""
    payload, values = text_fields(request.form, fields)
    form = FormState(values=values)
    with work() as (db, actor):
        encounter_id = visits.visit_of_referral(db, actor, sr_id)
    try:
        with work() as (db, actor):
            visits.override(db, actor, sr_id, payload)
    except ValidationError as exc:
        form.fail(exc.messages)
        return page(encounter_id, form, 422)
    flash(message(payload.get("action") == "no-referral"), "success")
    return redirect(url_for(result_endpoint, encounter_id=encounter_id))
