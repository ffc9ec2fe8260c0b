"""County hospital: referral inbox, accept or decline, admit, discharge and the down-referral decision."""

from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from marshmallow import ValidationError

from ..services import visits
from . import decision_pages, settlement_pages
from .auth import role_required, work
from .blueprint import bp
from .forms import FormState, charge_rows, code_list, text_fields, with_blank_rows

DIAGNOSIS_ROWS = 4
CHARGE_ROWS = 5


@bp.get("/hospital")
@role_required("hospital")
def hospital_inbox() -> ResponseReturnValue:
    """Referrals waiting (urgent first, then the oldest), accepted ones, and admitted patients."""
    with work() as (db, actor):
        inbox = visits.hospital_inbox(db, actor)
    return render_template("web/hospital/inbox.html", inbox=inbox)


def _referral_page(task_id: str, form: FormState | None = None, status: int = 200) -> ResponseReturnValue:
    with work() as (db, actor):
        incoming = visits.incoming_referral(db, actor, task_id)
    return render_template("web/hospital/referral.html", incoming=incoming, form=form or FormState()), status


@bp.get("/hospital/referrals/<task_id>")
@role_required("hospital")
def hospital_referral(task_id: str) -> ResponseReturnValue:
    """One referral: the clinic's decision, NEWS2, diagnoses; accept, decline or admit."""
    return _referral_page(task_id)


@bp.post("/hospital/referrals/<task_id>/accept")
@role_required("hospital")
def referral_accept(task_id: str) -> ResponseReturnValue:
    """Accept the referral."""
    with work() as (db, actor):
        visits.accept(db, actor, task_id)
    flash(_("The referral is accepted."), "success")
    return redirect(url_for("web.hospital_referral", task_id=task_id))


@bp.post("/hospital/referrals/<task_id>/decline")
@role_required("hospital")
def referral_decline(task_id: str) -> ResponseReturnValue:
    """Decline the referral with a reason."""
    payload, values = text_fields(request.form, ("reason",))
    form = FormState(values=values)
    try:
        with work() as (db, actor):
            visits.decline(db, actor, task_id, payload)
    except ValidationError as exc:
        form.fail(exc.messages)
        return _referral_page(task_id, form, 422)
    flash(_("The referral is declined; the clinic sees your reason."), "success")
    return redirect(url_for("web.hospital_inbox"))


@bp.post("/hospital/referrals/<task_id>/admit")
@role_required("hospital")
def referral_admit(task_id: str) -> ResponseReturnValue:
    """Admit the referred patient."""
    with work() as (db, actor):
        encounter_id = visits.admit(db, actor, task_id)
    flash(_("The patient is admitted."), "success")
    return redirect(url_for("web.discharge_form", encounter_id=encounter_id))


def _discharge_page(encounter_id: str, form: FormState, status: int = 200) -> ResponseReturnValue:
    with work() as (db, actor):
        encounter, patient = visits.admission(db, actor, encounter_id)
    if encounter.get("status") == "finished" and status == 200:
        return redirect(url_for("web.discharge_result", encounter_id=encounter_id))
    return render_template(
        "web/hospital/discharge.html",
        form=form,
        encounter=encounter,
        patient=patient,
        encounter_id=encounter_id,
        admitted=visits.encounter_start(encounter),
        patient_name=visits.patient_name(patient),
        diagnoses=with_blank_rows(form.value("diagnoses", []), DIAGNOSIS_ROWS, ""),
        charges=with_blank_rows(form.value("charges", []), CHARGE_ROWS, {}),
        dispositions=visits.DISPOSITIONS,
    ), status


@bp.route("/hospital/admissions/<encounter_id>/discharge", methods=["GET", "POST"])
@role_required("hospital")
def discharge_form(encounter_id: str) -> ResponseReturnValue:
    """Discharge: disposition, discharge diagnoses and charges; the down-referral rules decide."""
    form = FormState(values={"disposition": "home"})
    if request.method == "GET":
        return _discharge_page(encounter_id, form)
    payload, form.values = text_fields(request.form, ("disposition", "summary"))
    payload["diagnoses"] = form.values["diagnoses"] = code_list(request.form, "diagnosis")
    payload["charges"] = form.values["charges"] = charge_rows(request.form)
    try:
        with work() as (db, actor):
            visits.discharge(db, actor, encounter_id, payload)
    except ValidationError as exc:
        form.fail(exc.messages)
        return _discharge_page(encounter_id, form, 422)
    flash(_("The patient is discharged."), "success")
    return redirect(url_for("web.discharge_result", encounter_id=encounter_id))


def _discharged_page(
    encounter_id: str, override_form: FormState | None = None, status: int = 200
) -> ResponseReturnValue:
    with work() as (db, actor):
        charged = visits.has_charges(db, actor, encounter_id)
        decision = visits.visit_decision(db, actor, encounter_id)
        targets = visits.down_referral_targets(db, actor) if decision.referral else []
    return render_template(
        "web/hospital/discharged.html",
        decision=decision,
        charged=charged,
        targets=targets,
        form=override_form or FormState(),
    ), status


@bp.get("/hospital/discharges/<encounter_id>")
@role_required("hospital")
def discharge_result(encounter_id: str) -> ResponseReturnValue:
    """The down-referral decision at discharge (康复回家): the rules that fired and why, the proposed
    township clinic and follow-up plan, to confirm or override with a reason."""
    return _discharged_page(encounter_id)


@bp.post("/hospital/down-referrals/<sr_id>/confirm")
@role_required("hospital")
def down_referral_confirm(sr_id: str) -> ResponseReturnValue:
    """Confirm the proposed down-referral: it is sent to the township clinic, its follow-ups planned."""
    return decision_pages.confirm(
        sr_id, _("The down-referral is confirmed and sent to the township clinic."), "web.discharge_result"
    )


@bp.post("/hospital/down-referrals/<sr_id>/override")
@role_required("hospital")
def down_referral_override(sr_id: str) -> ResponseReturnValue:
    """Override the proposed down-referral with a reason: none, or another township clinic."""
    return decision_pages.override(
        sr_id, ("action", "reason", "target_id"), _discharged_page,
        lambda withdrawn: _("The down-referral is withdrawn.") if withdrawn
        else _("The down-referral is changed and sent to the township clinic."),
        "web.discharge_result",
    )


DISCHARGE_DESK = settlement_pages.Desk(
    page="web.settlement_page",
    confirm="web.settlement_confirm",
    reverse="web.settlement_reverse",
    slip="web.settlement_slip",
    back="web.discharge_result",
    back_label=lambda: _("Back to the discharge"),
    settled_message=lambda: _("The stay is settled. Print the settlement slip for the patient."),
    outpatient=False,
    current=visits.settlement_at_desk,
    preview=visits.settlement_preview,
    settle=visits.settle_at_discharge,
    reverse_with=visits.reverse_at_desk,
)


@bp.get("/hospital/settlements/<encounter_id>")
@role_required("hospital")
def settlement_page(encounter_id: str) -> ResponseReturnValue:
    """One-stop settlement at the discharge desk: the preview with its trace, or the settlement made."""
    return settlement_pages.page(DISCHARGE_DESK, encounter_id, FormState())


@bp.post("/hospital/settlements/<encounter_id>/confirm")
@role_required("hospital")
def settlement_confirm(encounter_id: str) -> ResponseReturnValue:
    """Settle for every payer at once; the patient pays only their share."""
    return settlement_pages.confirm(DISCHARGE_DESK, encounter_id)


@bp.post("/hospital/settlements/<encounter_id>/reverse")
@role_required("hospital")
def settlement_reverse(encounter_id: str) -> ResponseReturnValue:
    """Reverse the settlement with a reason (冲销); later settlements of the person and year are listed."""
    return settlement_pages.reverse(DISCHARGE_DESK, encounter_id)


@bp.get("/hospital/settlements/<encounter_id>/slip")
@role_required("hospital")
def settlement_slip(encounter_id: str) -> ResponseReturnValue:
    """The settlement slip (结算单) on A4, in Chinese whatever the screen language."""
    return settlement_pages.slip(DISCHARGE_DESK, encounter_id)
