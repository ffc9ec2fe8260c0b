"""Administration (role admin): users, API clients (secret shown once), organisations, policy and rule-set
versions in force (read-only), and the audit log."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import abort, render_template, request
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..auth.scopes import ScopeError, parse_scopes
from ..domain.accounts import ROLES, ApiClient, User
from ..domain.errors import Conflict, Unprocessable
from ..domain.registry import AuditRecord, Organization
from ..services import accounts, referrals, settlement
from ..services.indicators import day_start, local_today
from .auth import role_required, work
from .blueprint import bp
from .formatting import label
from .forms import FormState, read_day

AUDIT_PAGE = 100
MIN_PASSWORD = 8


def _organisations(db: Session) -> list[Organization]:
    return list(db.scalars(select(Organization).order_by(Organization.id)))


def _org_options(db: Session) -> list[tuple[str, str]]:
    return [(o.id, f"{o.name} ({o.id})") for o in _organisations(db)]


# ------------------------------------------------------------------------------------------ users


def _users_page(form: FormState | None = None, status: int = 200,
                created: str | None = None, notice: str | None = None) -> ResponseReturnValue:
    with work() as (db, _actor):
        users = db.execute(
            select(User, Organization.name).outerjoin(Organization, Organization.id == User.organization_id)
            .order_by(User.username)
        ).all()
        orgs = _org_options(db)
    return render_template(
        "web/admin/users.html", users=users, orgs=orgs, form=form or FormState(values={"locale": "zh"}),
        roles=[(r, label("role", r)) for r in ROLES], created=created, notice=notice,
    ), status


@bp.get("/admin/users")
@role_required("admin")
def admin_users() -> ResponseReturnValue:
    """Staff users and the form to add one."""
    return _users_page()


@bp.post("/admin/users")
@role_required("admin")
def admin_user_create() -> ResponseReturnValue:
    """Create a staff user (argon2 password hash via the accounts service)."""
    names = ("username", "display_name", "role", "organization_id", "locale", "password")
    values = {n: request.form.get(n, "").strip() for n in names}
    values["password"] = request.form.get("password", "")
    errors: dict[str, list[str]] = {}
    for name in ("username", "role", "organization_id", "password"):
        if not values[name].strip():
            errors[name] = [_("This field is required.")]
    if values["role"] and values["role"] not in ROLES:
        errors["role"] = [_("Choose one of the roles.")]
    if values["password"] and len(values["password"]) < MIN_PASSWORD:
        errors["password"] = [_("The password needs at least %(n)d characters.", n=MIN_PASSWORD)]
    shown = {k: v for k, v in values.items() if k != "password"}
    if not errors:
        try:
            with work() as (db, _actor):
                accounts.create_user(
                    db, username=values["username"], password=values["password"], role=values["role"],
                    organization_id=values["organization_id"], display_name=values["display_name"] or None,
                    locale=values["locale"] if values["locale"] in ("zh", "en") else "zh",
                )
        except Conflict:
            errors["username"] = [_("This user name is taken.")]
        except Unprocessable:
            errors["organization_id"] = [_("Choose one of the organisations.")]
    if errors:
        return _users_page(FormState(values=shown, errors=errors), 422)
    return _users_page(created=values["username"])


@bp.post("/admin/users/<username>/active")
@role_required("admin")
def admin_user_active(username: str) -> ResponseReturnValue:
    """Deactivate a user (they are signed out at their next request) or let them back in."""
    active = request.form.get("active") == "1"
    try:
        with work() as (db, actor):
            accounts.set_user_active(db, username, active, by=actor.name)
    except Unprocessable:
        abort(404)
    except Conflict:
        return _users_page(notice=_("You cannot deactivate your own account."), status=409)
    notice = _("%(name)s may sign in again.", name=username) if active else _(
        "%(name)s can no longer sign in.", name=username)
    return _users_page(notice=notice)


# ------------------------------------------------------------------------------------ API clients


def _clients_page(form: FormState | None = None, status: int = 200, secret: tuple[str, str] | None = None,
                  notice: str | None = None) -> ResponseReturnValue:
    with work() as (db, _actor):
        clients = db.execute(
            select(ApiClient, Organization.name)
            .outerjoin(Organization, Organization.id == ApiClient.organization_id)
            .order_by(ApiClient.client_id)
        ).all()
        orgs = _org_options(db)
    return render_template(
        "web/admin/clients.html", clients=clients, orgs=orgs, form=form or FormState(), secret=secret,
        notice=notice,
    ), status


@bp.get("/admin/clients")
@role_required("admin")
def admin_clients() -> ResponseReturnValue:
    """API clients with their scopes, and the form to add one."""
    return _clients_page()


@bp.post("/admin/clients")
@role_required("admin")
def admin_client_create() -> ResponseReturnValue:
    """Register an API client; its secret is shown once on the answer page (never stored in clear)."""
    values = {n: request.form.get(n, "").strip() for n in ("client_id", "name", "organization_id", "scopes")}
    errors: dict[str, list[str]] = {}
    for name in ("client_id", "organization_id", "scopes"):
        if not values[name]:
            errors[name] = [_("This field is required.")]
    if values["scopes"]:
        try:
            parse_scopes(values["scopes"])
        except ScopeError:
            errors["scopes"] = [_("Write SMART scopes such as system/Patient.rs, separated by spaces.")]
    secret = ""
    if not errors:
        try:
            with work() as (db, _actor):
                _client, secret = accounts.create_api_client(
                    db, client_id=values["client_id"], organization_id=values["organization_id"],
                    scopes=values["scopes"], name=values["name"] or None,
                )
        except Conflict:
            errors["client_id"] = [_("This client id is taken.")]
        except Unprocessable:
            errors["organization_id"] = [_("Choose one of the organisations.")]
    if errors:
        return _clients_page(FormState(values=values, errors=errors), 422)
    return _clients_page(secret=(values["client_id"], secret))


@bp.post("/admin/clients/<client_id>/rotate")
@role_required("admin")
def admin_client_rotate(client_id: str) -> ResponseReturnValue:
    """Replace a client's secret; the new one is shown once."""
    with work() as (db, _actor):
        if db.scalar(select(ApiClient.id).where(ApiClient.client_id == client_id)) is None:
            abort(404)
        secret = accounts.rotate_client_secret(db, client_id)
    return _clients_page(secret=(client_id, secret))


# ---------------------------------------------------------------------------------- organisations


@bp.get("/admin/organisations")
@role_required("admin")
def admin_organisations() -> ResponseReturnValue:
    """Every organisation of the county register."""
    with work() as (db, _actor):
        orgs = _organisations(db)
    return render_template("web/admin/organisations.html", orgs=orgs)


# ------------------------------------------------------------------------ policies and rule sets


def _sources() -> dict[str, str]:
    """The files behind the policies and rule sets in force: {file name: path}."""
    found: dict[str, str] = {}
    for policy in settlement.policies():
        if policy.source:
            found[Path(policy.source).name] = policy.source
    sets = referrals.rule_sets()
    for rule_set in (sets.up, sets.down):
        if rule_set.source:
            found[Path(rule_set.source).name] = rule_set.source
    return found


@bp.get("/admin/rules")
@role_required("admin")
def admin_rules() -> ResponseReturnValue:
    """Settlement policies and referral rule sets loaded at start-up (read-only)."""
    sets = referrals.rule_sets()
    return render_template(
        "web/admin/rules.html", policies=list(settlement.policies()), rule_sets=[sets.up, sets.down],
        today=local_today(), file_name=lambda source: Path(source).name if source else "",
    )


@bp.get("/admin/rules/files/<name>")
@role_required("admin")
def admin_rule_file(name: str) -> ResponseReturnValue:
    """The text of one policy or rule-set file in force (only those files; read-only)."""
    path = _sources().get(name)
    if path is None or not Path(path).is_file():
        abort(404)
    return render_template("web/admin/rule_file.html", name=name, text=Path(path).read_text(encoding="utf-8"))


# -------------------------------------------------------------------------------------- audit log


def _audit_filters(args: Any) -> tuple[FormState, list[Any]]:
    values = {k: args.get(k, "").strip() for k in ("agent", "patient", "from", "to")}
    form = FormState(values=values)
    where: list[Any] = []
    if values["agent"]:
        where.append(AuditRecord.agent_name == values["agent"])
    if values["patient"]:
        where.append(AuditRecord.patient_id == values["patient"].removeprefix("Patient/"))
    for name in ("from", "to"):
        if not values[name]:
            continue
        day, problems = read_day(values[name])
        if day is None:
            form.errors[name] = problems
            continue
        if name == "from":
            where.append(AuditRecord.recorded >= day_start(day))
        else:
            where.append(AuditRecord.recorded < day_start(day + timedelta(days=1)))
    return form, where


@bp.get("/admin/audit")
@role_required("admin")
def admin_audit() -> ResponseReturnValue:
    """Search the audit log by user or client, patient and dates (newest first)."""
    form, where = _audit_filters(request.args)
    rows: list[AuditRecord] = []
    if not form.invalid:
        with work() as (db, _actor):
            rows = list(db.scalars(
                select(AuditRecord).where(*where).order_by(AuditRecord.id.desc()).limit(AUDIT_PAGE)
            ))
            for row in rows:
                db.expunge(row)
    return render_template("web/admin/audit.html", form=form, rows=rows, limit=AUDIT_PAGE), (
        422 if form.invalid else 200
    )


@bp.post("/admin/clients/<client_id>/active")
@role_required("admin")
def admin_client_active(client_id: str) -> ResponseReturnValue:
    """Deactivate an API client (no new tokens; the ones it holds stop within 30 s) or restore it."""
    active = request.form.get("active") == "1"
    try:
        with work() as (db, _actor):
            accounts.set_client_active(db, client_id, active)
    except Unprocessable:
        abort(404)
    notice = _("%(name)s may get tokens again.", name=client_id) if active else _(
        "%(name)s can no longer call the API.", name=client_id)
    return _clients_page(notice=notice)
