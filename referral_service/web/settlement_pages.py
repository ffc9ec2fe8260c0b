"""The one-stop settlement page, shared by the hospital's discharge desk and the clinic's visits."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import force_locale, ngettext
from flask_babel import gettext as _
from marshmallow import ValidationError
from sqlalchemy.orm import Session

from ..domain.actor import Actor
from ..domain.errors import Unprocessable
from ..services.visits import LaterSettlement, SettlementView
from .auth import current, work
from .forms import FormState, text_fields

# Why a claim is refused, in the user's language: (element path, issue code) of the settlement
# service's first problem -> message. The service's own text is English, for integrators.
REFUSALS: dict[tuple[str, str | None], Callable[[], str]] = {
    ("Claim.insurance[0].coverage", None): lambda: _(
        "The patient has no active basic medical insurance on that date."
    ),
    ("Claim.billablePeriod.end", "business-rule"): lambda: _(
        "No settlement policy is in force for the patient's insured region on that date."
    ),
    ("Claim.referral", None): lambda: _(
        "The referral does not qualify: it must be this patient's, sent to this hospital and made "
        "before the discharge."
    ),
    ("Claim.patient", None): lambda: _("The patient is not known to the settlement service."),
}


def refusal(exc: Unprocessable) -> tuple[str, str | None]:
    """(message in the user's language, the service's English detail when there is no translation)."""
    problem = exc.problems[0] if exc.problems else None
    if problem is not None:
        path = problem.expression or ""
        for (expression, code), message in REFUSALS.items():
            if path == expression and (code is None or problem.code == code):
                return message(), None
    return _("The settlement service refused the claim."), exc.message


@dataclass(frozen=True)
class Urls:
    """Where the page's buttons and links go (the hospital's or the clinic's routes)."""

    confirm: str
    reverse: str
    slip: str
    back: str
    back_label: str


def review_url(item: LaterSettlement) -> str | None:
    """The settlement page of a later settlement, when the signed-in user's organisation made it here."""
    if not item.own or item.encounter_id is None:
        return None
    role = current().role
    if role == "hospital" and item.claim_type == "inpatient":
        return url_for("web.settlement_page", encounter_id=item.encounter_id)
    if role == "clinic" and item.claim_type == "outpatient":
        return url_for("web.visit_settlement_page", encounter_id=item.encounter_id)
    return None


def render(
    current_settlement: SettlementView | None,
    preview: Callable[[Session, Actor], SettlementView],
    form: FormState,
    urls: Urls,
    *,
    outpatient: bool,
    status: int = 200,
    refused: Unprocessable | None = None,
) -> ResponseReturnValue:
    """The settlement made, or (none yet, or reversed) the preview with its trace, or why it is refused.

    `refused`: the settlement service's refusal of a confirm just tried, shown like the preview's own.
    """
    problem = detail = None
    shown = current_settlement
    if refused is not None:
        problem, detail = refusal(refused)
    elif current_settlement is None or current_settlement.status == "reversed":
        try:
            with work() as (db, actor):
                shown = preview(db, actor)
        except Unprocessable as exc:  # e.g. no active basic insurance on the date
            shown = None
            problem, detail = refusal(exc)
    return render_template(
        "web/hospital/settlement.html",
        settlement=shown,
        current=current_settlement,
        problem=problem,
        problem_detail=detail,
        form=form,
        urls=urls,
        outpatient=outpatient,
        review_url=review_url,
    ), status


def flash_reversed(to_review: list[LaterSettlement]) -> None:
    """The reversal's message; with the later settlements to review, how many (listed on the page)."""
    if not to_review:
        flash(_("The settlement is reversed; every fund's share is taken back."), "success")
        return
    flash(
        ngettext(
            "The settlement is reversed; every fund's share is taken back. %(num)d later settlement of "
            "this person in the same year was computed before the reversal: review it below.",
            "The settlement is reversed; every fund's share is taken back. %(num)d later settlements of "
            "this person in the same year were computed before the reversal: review them below.",
            len(to_review),
        ),
        "warning",
    )


# --- the routes' work, shared by the two desks ---------------------------------------------------

Lookup = Callable[[Session, Actor, str], SettlementView | None]


@dataclass(frozen=True)
class Desk:
    """Where settlements are made: the hospital's discharge desk or the clinic's visit.

    Endpoints are this blueprint's routes (each takes `encounter_id`); the callables are the services
    of the desk: the settlement made, the preview, settling, and reversing with a reason.
    """

    page: str
    confirm: str
    reverse: str
    slip: str
    back: str
    back_label: Callable[[], str]
    settled_message: Callable[[], str]
    outpatient: bool
    current: Lookup
    preview: Callable[[Session, Actor, str], SettlementView]
    settle: Callable[[Session, Actor, str], object]
    reverse_with: Callable[[Session, Actor, str, Mapping[str, Any]], list[LaterSettlement]]


def page(
    desk: Desk, encounter_id: str, form: FormState, status: int = 200, refused: Unprocessable | None = None
) -> ResponseReturnValue:
    """The desk's settlement page for one encounter."""
    with work() as (db, actor):
        made = desk.current(db, actor, encounter_id)
    urls = Urls(
        confirm=url_for(desk.confirm, encounter_id=encounter_id),
        reverse=url_for(desk.reverse, encounter_id=encounter_id),
        slip=url_for(desk.slip, encounter_id=encounter_id),
        back=url_for(desk.back, encounter_id=encounter_id),
        back_label=desk.back_label(),
    )
    return render(made, lambda db, actor: desk.preview(db, actor, encounter_id), form, urls,
                  outpatient=desk.outpatient, status=status, refused=refused)


def confirm(desk: Desk, encounter_id: str) -> ResponseReturnValue:
    """Settle (again after a reversal; settling twice changes nothing); a refusal is shown on the page."""
    try:
        with work() as (db, actor):
            desk.settle(db, actor, encounter_id)
    except Unprocessable as exc:  # e.g. no active basic insurance on the date: the page says why
        return page(desk, encounter_id, FormState(), 422, refused=exc)
    flash(desk.settled_message(), "success")
    return redirect(url_for(desk.page, encounter_id=encounter_id))


def reverse(desk: Desk, encounter_id: str) -> ResponseReturnValue:
    """Reverse with the form's reason (冲销); the later settlements of the person are listed."""
    payload, values = text_fields(request.form, ("reason",))
    form = FormState(values=values)
    try:
        with work() as (db, actor):
            to_review = desk.reverse_with(db, actor, encounter_id, payload)
    except ValidationError as exc:
        form.fail(exc.messages)
        return page(desk, encounter_id, form, 422)
    flash_reversed(to_review)
    return redirect(url_for(desk.page, encounter_id=encounter_id))


def slip(desk: Desk, encounter_id: str) -> ResponseReturnValue:
    """The settlement slip (结算单) on A4, in Chinese whatever the screen language."""
    with work() as (db, actor):
        made = desk.current(db, actor, encounter_id)
    if made is None:
        abort(404)
    with force_locale("zh"):
        return render_template("web/hospital/slip.html", settlement=made)
