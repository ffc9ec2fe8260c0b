"""Pages every role shares: home, error pages, ICD-10 look-up, the live identity-number check, offices."""

from __future__ import annotations

from datetime import date

from flask import jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from ..domain.errors import Conflict, DomainError, Forbidden, NotFound
from ..extensions import database
from ..services import registration, visits
from .auth import HOME, language, role_required
from .blueprint import bp

ALL_ROLES = ("clinic", "hospital", "insurer", "monitor", "admin")


@bp.get("/")
def home() -> ResponseReturnValue:
    """The signed-in user's start page."""
    if not current_user.is_authenticated:
        return redirect(url_for("web.login"))
    return redirect(url_for(HOME.get(current_user.role, "web.office_home")))


def _error_page(status: int, title: str, detail: str | None = None) -> ResponseReturnValue:
    return render_template("web/error.html", status=status, title=title, detail=detail), status


@bp.errorhandler(CSRFError)
def _csrf(exc: CSRFError) -> ResponseReturnValue:
    return _error_page(
        400,
        _(
            "The form could not be accepted: it expired or did not come from this site. "
            "Go back, reload the page and send it again."
        ),
    )


@bp.errorhandler(DomainError)
def _domain(exc: DomainError) -> ResponseReturnValue:
    if isinstance(exc, NotFound):
        return _error_page(404, _("Not found, or not visible to your organisation."))
    if isinstance(exc, Forbidden):
        return _error_page(403, _("Your role or organisation may not do this."), exc.message)
    if isinstance(exc, Conflict):
        return _error_page(409, _("This cannot be done in the record's current state."), exc.message)
    return _error_page(exc.status, _("The request was refused."), exc.message)


@bp.errorhandler(HTTPException)
def _http(exc: HTTPException) -> ResponseReturnValue:
    status = exc.code or 500
    titles = {
        403: _("Your role may not open this page."),
        404: _("Page not found."),
        405: _("This page does not accept that request."),
        429: _("Too many attempts. Wait a minute and try again."),
    }
    return _error_page(status, titles.get(status, _("The request was refused.")))


@bp.get("/icd10")
@role_required("clinic", "hospital")
def icd10() -> ResponseReturnValue:
    """Search the shipped ICD-10 list by code or name (works without JavaScript)."""
    query = request.args.get("q", "").strip()
    found = visits.search_icd10(query, limit=50) if query else []
    return render_template("web/icd10.html", query=query, found=found)


@bp.get("/api/icd10")
@role_required("clinic", "hospital")
def icd10_json() -> ResponseReturnValue:
    """ICD-10 suggestions for the diagnosis fields (JSON)."""
    lang = language()
    found = visits.search_icd10(request.args.get("q", ""), limit=20)
    return jsonify([{"code": c.code, "name": c.name(lang)} for c in found])


@bp.get("/api/resident-id")
@role_required("clinic", "hospital")
def resident_id_json() -> ResponseReturnValue:
    """Live check of a resident identity number with the API's rules (JSON)."""
    value = request.args.get("value", "")
    birth = None
    try:
        birth = date.fromisoformat(request.args.get("birth_date", ""))
    except ValueError:
        birth = None
    with database.unit_of_work() as db:
        result = registration.check_resident_id(
            db, value, birth_date=birth, gender=request.args.get("gender") or None, language=language()
        )
    problems = list(result.problems)
    if result.registered:
        problems.append(_("A patient with this resident identity number is already registered."))
    return jsonify(
        valid=result.valid,
        problems=problems,
        birth_date=result.birth_date,
        gender=result.gender,
        registered=result.registered,
    )


@bp.get("/office")
@role_required("insurer", "monitor", "admin")
def office_home() -> ResponseReturnValue:
    """Start page of the insurance office, the poverty-alleviation office and administrators."""
    return render_template("web/office_home.html")
