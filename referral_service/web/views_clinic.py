"""Township and village clinic: patients, registration, first visits, decisions, referrals, follow-ups."""

from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from marshmallow import ValidationError

from ..domain.errors import NotFound
from ..services import registration, visits
from . import decision_pages, settlement_pages
from .auth import role_required, work
from .blueprint import bp
from .forms import FormState, charge_rows, checkboxes, code_list, text_fields, with_blank_rows

DIAGNOSIS_ROWS = 4
CHARGE_ROWS = 4

REGISTRATION_TEXT = (
    "family_name",
    "given_name",
    "gender",
    "birth_date",
    "resident_id",
    "phone",
    "district",
    "township",
    "village",
    "address_line",
    "household_mode",
    "household_code",
    "household_income",
    "poverty_start",
    "poverty_end",
    "coverage_member_number",
    "coverage_start",
)
REGISTRATION_CHECKS = ("poverty_registered", "coverage_basic")
VISIT_TEXT = (
    "complaint",
    "respiration_rate",
    "spo2",
    "systolic_bp",
    "diastolic_bp",
    "pulse",
    "consciousness",
    "temperature",
    "pregnancy",
)


@bp.get("/clinic")
@role_required("clinic")
def clinic_home() -> ResponseReturnValue:
    """The clinic's overview: decisions to confirm, referrals in flight, follow-ups due.

    The down-referred patients to accept and the follow-ups due come from the follow-ups page's own
    list (`visits.follow_ups`), so the overview's counts are the rows that page shows.
    """
    with work() as (db, actor):
        up, _down = visits.clinic_referrals(db, actor)
        plans = visits.follow_ups(db, actor)
    to_confirm = [r for r in up if r.status == "draft"]
    declined = [r for r in up if r.status == "active" and r.task_status == "rejected"]
    in_flight = [r for r in up if r.status == "active" and r.task_status != "rejected"]
    due = [p for p in plans if p.next_due is not None]
    return render_template(
        "web/clinic/home.html",
        to_confirm=to_confirm,
        declined=declined,
        in_flight=in_flight,
        due=due[:10],
        incoming=[p for p in plans if p.to_accept],
    )


@bp.get("/clinic/patients")
@role_required("clinic")
def patient_search() -> ResponseReturnValue:
    """Find a patient by name, resident identity number or household number."""
    query = request.args.get("q", "").strip()
    found: list[registration.PatientRow] = []
    if query:
        with work() as (db, actor):
            found = registration.search_patients(db, actor, query)
    return render_template("web/clinic/patients.html", query=query, found=found)


@bp.route("/clinic/patients/new", methods=["GET", "POST"])
@role_required("clinic")
def patient_new() -> ResponseReturnValue:
    """Register a patient (建档) with household, poverty registration and insurance."""
    form = FormState()
    if request.method == "GET":
        with work() as (db, actor):
            form.values = registration.clinic_defaults(db, actor)
        return render_template("web/clinic/register.html", form=form)
    payload, form.values = text_fields(request.form, REGISTRATION_TEXT)
    checks = checkboxes(request.form, REGISTRATION_CHECKS)
    payload.update(checks)
    form.values.update(checks)
    try:
        with work() as (db, actor):
            registered = registration.register_patient(db, actor, payload)
    except ValidationError as exc:
        form.fail(exc.messages)
        return render_template("web/clinic/register.html", form=form), 422
    flash(_("The patient is registered."), "success")
    return redirect(url_for("web.patient_view", patient_id=registered.patient_id))


@bp.get("/clinic/patients/<patient_id>")
@role_required("clinic")
def patient_view(patient_id: str) -> ResponseReturnValue:
    """A patient's registration, visits and referrals."""
    with work() as (db, actor):
        record = registration.patient_record(db, actor, patient_id)
        history = visits.patient_visits(db, actor, patient_id)
        referral_list = visits.patient_referrals(db, actor, patient_id)
    return render_template("web/clinic/patient.html", record=record, visits=history, referrals=referral_list)


def _visit_form(
    form: FormState, record: registration.PatientRecord, status: int = 200
) -> ResponseReturnValue:
    return render_template(
        "web/clinic/visit.html",
        form=form,
        record=record,
        diagnoses=with_blank_rows(form.value("diagnoses", []), DIAGNOSIS_ROWS, ""),
        charges=with_blank_rows(form.value("charges", []), CHARGE_ROWS, {}),
        vitals=visits.VITALS,
    ), status


@bp.route("/clinic/patients/<patient_id>/visit", methods=["GET", "POST"])
@role_required("clinic")
def visit_new(patient_id: str) -> ResponseReturnValue:
    """The first-visit form: complaint, vital signs, diagnoses, charges; the rules decide on saving."""
    form = FormState()
    with work() as (db, actor):
        record = registration.patient_record(db, actor, patient_id)
    if request.method == "GET":
        return _visit_form(form, record)
    payload, form.values = text_fields(request.form, VISIT_TEXT)
    oxygen = checkboxes(request.form, ("supplemental_oxygen",))
    payload.update(oxygen)
    form.values.update(oxygen)
    payload["diagnoses"] = form.values["diagnoses"] = code_list(request.form, "diagnosis")
    payload["charges"] = form.values["charges"] = charge_rows(request.form)
    try:
        with work() as (db, actor):
            encounter_id = visits.record_first_visit(db, actor, patient_id, payload)
    except ValidationError as exc:
        form.fail(exc.messages)
        return _visit_form(form, record, 422)
    return redirect(url_for("web.visit_decision", encounter_id=encounter_id))


def _decision_page(
    encounter_id: str, override_form: FormState | None = None, status: int = 200
) -> ResponseReturnValue:
    with work() as (db, actor):
        decision = visits.visit_decision(db, actor, encounter_id)
        targets = visits.referral_targets(db, actor) if decision.referral else []
        try:
            charged = visits.visit_has_charges(db, actor, encounter_id)
        except NotFound:  # another clinic's visit: its settlement is that clinic's
            charged = False
        settled = visits.visit_settlement(db, actor, encounter_id) if charged else None
    return render_template(
        "web/clinic/decision.html",
        decision=decision,
        targets=targets,
        form=override_form or FormState(),
        charged=charged,
        settled=settled,
    ), status


@bp.get("/clinic/visits/<encounter_id>")
@role_required("clinic")
def visit_decision(encounter_id: str) -> ResponseReturnValue:
    """The rules' decision on a visit, with its explanation, NEWS2 and the proposed hospital."""
    return _decision_page(encounter_id)


VISIT_DESK = settlement_pages.Desk(
    page="web.visit_settlement_page",
    confirm="web.visit_settlement_confirm",
    reverse="web.visit_settlement_reverse",
    slip="web.visit_settlement_slip",
    back="web.visit_decision",
    back_label=lambda: _("Back to the visit"),
    settled_message=lambda: _("The visit is settled. Print the settlement slip for the patient."),
    outpatient=True,
    current=visits.visit_settlement,
    preview=visits.visit_settlement_preview,
    settle=visits.settle_visit,
    reverse_with=visits.reverse_visit_settlement,
)


@bp.get("/clinic/visits/<encounter_id>/settlement")
@role_required("clinic")
def visit_settlement_page(encounter_id: str) -> ResponseReturnValue:
    """The visit's one-stop settlement, made when the visit was saved (or why it could not be)."""
    return settlement_pages.page(VISIT_DESK, encounter_id, FormState())


@bp.post("/clinic/visits/<encounter_id>/settlement/confirm")
@role_required("clinic")
def visit_settlement_confirm(encounter_id: str) -> ResponseReturnValue:
    """Settle the visit (again after a reversal); settling twice changes nothing."""
    return settlement_pages.confirm(VISIT_DESK, encounter_id)


@bp.post("/clinic/visits/<encounter_id>/settlement/reverse")
@role_required("clinic")
def visit_settlement_reverse(encounter_id: str) -> ResponseReturnValue:
    """Reverse the visit's settlement with a reason (冲销); later settlements of the person are listed."""
    return settlement_pages.reverse(VISIT_DESK, encounter_id)


@bp.get("/clinic/visits/<encounter_id>/settlement/slip")
@role_required("clinic")
def visit_settlement_slip(encounter_id: str) -> ResponseReturnValue:
    """The visit's settlement slip (结算单) on A4, in Chinese whatever the screen language."""
    return settlement_pages.slip(VISIT_DESK, encounter_id)


@bp.post("/clinic/referrals/<sr_id>/confirm")
@role_required("clinic")
def referral_confirm(sr_id: str) -> ResponseReturnValue:
    """Confirm the proposed referral: it is sent to the hospital."""
    return decision_pages.confirm(sr_id, _("The referral is confirmed and sent to the hospital."),
                                  "web.visit_decision")


@bp.post("/clinic/referrals/<sr_id>/override")
@role_required("clinic")
def referral_override(sr_id: str) -> ResponseReturnValue:
    """Override the proposal with a reason."""
    return decision_pages.override(
        sr_id, ("action", "reason", "target_id", "priority"), _decision_page,
        lambda withdrawn: _("The referral is withdrawn.") if withdrawn
        else _("The referral is changed and sent."),
        "web.visit_decision",
    )


@bp.get("/clinic/referrals")
@role_required("clinic")
def clinic_referrals() -> ResponseReturnValue:
    """The clinic's referrals with their status, and the patients referred back to it."""
    with work() as (db, actor):
        up, down = visits.clinic_referrals(db, actor)
    return render_template("web/clinic/referrals.html", up=up, down=down)


@bp.get("/clinic/follow-ups")
@role_required("clinic")
def follow_ups() -> ResponseReturnValue:
    """Down-referred patients and their follow-up visits, the next due first."""
    with work() as (db, actor):
        plans = visits.follow_ups(db, actor)
    return render_template("web/clinic/follow_ups.html", plans=plans)


@bp.post("/clinic/down-referrals/<task_id>/accept")
@role_required("clinic")
def down_referral_accept(task_id: str) -> ResponseReturnValue:
    """Take over a down-referred patient."""
    with work() as (db, actor):
        visits.acknowledge_down_referral(db, actor, task_id)
    flash(_("The down-referred patient is accepted."), "success")
    return redirect(url_for("web.follow_ups"))


@bp.route("/clinic/follow-ups/<care_plan_id>", methods=["GET", "POST"])
@role_required("clinic")
def follow_up_record(care_plan_id: str) -> ResponseReturnValue:
    """Record a follow-up visit."""
    form = FormState()
    with work() as (db, actor):
        plan = visits.follow_up_plan(db, actor, care_plan_id)
    if request.method == "GET":
        return render_template("web/clinic/follow_up.html", plan=plan, form=form)
    payload, form.values = text_fields(request.form, ("notes",))
    try:
        with work() as (db, actor):
            remaining = visits.record_follow_up_visit(db, actor, care_plan_id, payload)
    except ValidationError as exc:
        form.fail(exc.messages)
        return render_template("web/clinic/follow_up.html", plan=plan, form=form), 422
    flash(
        _("The follow-up is recorded; %(num)d more scheduled.", num=remaining)
        if remaining
        else _("The follow-up is recorded; the plan is complete."),
        "success",
    )
    return redirect(url_for("web.follow_ups"))
