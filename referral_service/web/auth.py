"""Sign-in (argon2 via the accounts service), roles, session timeout, language, one unit of work."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar, cast

from flask import Flask, abort, current_app, flash, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_limiter.util import get_remote_address
from flask_login import UserMixin, current_user, login_user, logout_user
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..domain.accounts import User
from ..domain.actor import Actor
from ..domain.errors import Unauthorized
from ..domain.registry import Organization
from ..extensions import database, limiter, login_manager
from ..services import resources
from ..services.accounts import authenticate_user, set_user_locale
from ..services.actors import actor_for
from .blueprint import bp

LANGUAGES = ("zh", "en")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class WebUser(UserMixin):
    """The signed-in staff member as the web layer needs it (a snapshot, not the ORM row)."""

    id: int
    username: str
    display_name: str
    role: str
    organization_id: str
    organization_name: str
    locale: str

    def get_id(self) -> str:
        """Flask-Login's session key."""
        return str(self.id)


def _snapshot(user: User, organization: Organization | None) -> WebUser:
    return WebUser(
        user.id,
        user.username,
        user.display_name,
        user.role,
        user.organization_id,
        organization.name if organization else user.organization_id,
        user.locale or "zh",
    )


def _load_user(user_id: str) -> WebUser | None:
    if not user_id.isdigit():
        return None
    with database.session() as db:
        row = db.execute(
            select(User, Organization)
            .outerjoin(Organization, Organization.id == User.organization_id)
            .where(User.id == int(user_id), User.active.is_(True))
        ).first()
        return _snapshot(row[0], row[1]) if row else None


def init_login(app: Flask) -> None:
    """Flask-Login settings (the extension object itself is bound in create_app)."""
    login_manager.user_loader(_load_user)
    login_manager.login_view = "web.login"
    login_manager.login_message = cast(str, _l("Please sign in to continue."))
    login_manager.login_message_category = "info"
    login_manager.session_protection = "basic"


def select_locale() -> str:
    """The language: chosen in this session, else the user's, else the browser's, else Chinese."""
    chosen = session.get("lang")
    if chosen in LANGUAGES:
        return str(chosen)
    if current_user and current_user.is_authenticated:
        return str(current_user.locale if current_user.locale in LANGUAGES else "zh")
    return request.accept_languages.best_match(LANGUAGES) or "zh"


def language() -> str:
    """The current language code (zh or en)."""
    locale = get_locale()
    return locale.language if locale is not None else "zh"


def current() -> WebUser:
    """The signed-in user (views are protected by `role_required`)."""
    return cast(WebUser, current_user._get_current_object())


def actor_of(db: Session, user: WebUser) -> Actor:
    """The Actor the services see for a web user."""
    return actor_for(
        db, name=user.username, kind="user", organization_id=user.organization_id, admin=user.role == "admin"
    )


@contextmanager
def work() -> Iterator[tuple[Session, Actor]]:
    """One unit of work as the signed-in user: commit at the end, roll back on any error."""
    with database.unit_of_work() as db:
        yield db, actor_of(db, current())


def role_required(*roles: str) -> Callable[[F], F]:
    """Only signed-in users with one of the roles (others: sign-in page, or 403)."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not current_user.is_authenticated:
                return login_manager.unauthorized()
            if current_user.role not in roles:
                abort(403)
            return view(*args, **kwargs)

        wrapped.roles = roles  # type: ignore[attr-defined]
        return cast(F, wrapped)

    return decorate


HOME = {
    "clinic": "web.clinic_home",
    "hospital": "web.hospital_inbox",
    "insurer": "web.office_home",
    "monitor": "web.office_home",
    "admin": "web.office_home",
}

MENUS: dict[str, list[tuple[str, Any]]] = {
    "clinic": [
        ("web.clinic_home", _l("Overview")),
        ("web.patient_search", _l("Patients")),
        ("web.patient_new", _l("Register a patient")),
        ("web.clinic_referrals", _l("Referrals")),
        ("web.follow_ups", _l("Follow-ups")),
    ],
    "hospital": [("web.hospital_inbox", _l("Referral inbox"))],
    "insurer": [
        ("web.office_home", _l("Insurance office")),
        ("web.insurer_settlements", _l("Settlements")),
        ("web.insurer_payments", _l("Payments")),
        ("web.insurer_exports", _l("Exports")),
    ],
    "monitor": [
        ("web.office_home", _l("Monitoring")),
        ("web.monitor_dashboard", _l("Dashboard")),
        ("web.monitor_alerts", _l("Alerts")),
    ],
    "admin": [
        ("web.office_home", _l("Administration")),
        ("web.admin_users", _l("Users")),
        ("web.admin_clients", _l("API clients")),
        ("web.admin_organisations", _l("Organisations")),
        ("web.admin_rules", _l("Policies and rules")),
        ("web.admin_audit", _l("Audit log")),
    ],
}


def menu() -> list[tuple[str, Any]]:
    """The menu of the signed-in user's role."""
    if not current_user.is_authenticated:
        return []
    return MENUS.get(current_user.role, [])


def _safe_next(target: str | None) -> str | None:
    """Only a path on this site (no scheme, no other host)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return None


@bp.before_request
def _session_timeout() -> ResponseReturnValue | None:
    """Sign out after SESSION_TIMEOUT_MINUTES without a request (the cookie also expires then)."""
    if request.endpoint == "web.static":
        return None
    session.permanent = True
    if not current_user.is_authenticated:
        return None
    now = time.time()
    seen = session.get("seen")
    limit = int(current_app.config["SESSION_TIMEOUT_MINUTES"]) * 60
    if isinstance(seen, int | float) and now - seen > limit:
        lang = session.get("lang")
        logout_user()
        session.clear()
        if lang:
            session["lang"] = lang
        flash(
            _(
                "Your session expired after %(minutes)s minutes without activity; please sign in again.",
                minutes=current_app.config["SESSION_TIMEOUT_MINUTES"],
            ),
            "info",
        )
        return redirect(url_for("web.login", next=request.full_path if request.method == "GET" else None))
    session["seen"] = int(now)
    return None


def _login_key() -> str:
    """Rate-limit sign-in per address and user name, so one person cannot lock out everyone."""
    return f"login|{get_remote_address()}|{request.form.get('username', '')[:64]}"


def _login_limit() -> str:
    return str(current_app.config["LOGIN_RATE_LIMIT"])


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(_login_limit, key_func=_login_key, methods=["POST"])
def login() -> ResponseReturnValue:
    """The sign-in form."""
    if current_user.is_authenticated and request.method == "GET":
        return redirect(url_for(HOME.get(current_user.role, "web.office_home")))
    values = {"username": request.form.get("username", "").strip()}
    error = None
    if request.method == "POST":
        password = request.form.get("password", "")
        if not values["username"] or not password:
            error = _("Enter your user name and password.")
        else:
            user = _authenticate(values["username"], password)
            if user is None:
                error = _("Wrong user name or password.")
            else:
                lang = session.get("lang")
                session.clear()  # a fresh session on sign-in
                session["lang"] = lang if lang in LANGUAGES else user.locale
                session["seen"] = int(time.time())
                session.permanent = True
                login_user(user)
                target = _safe_next(request.args.get("next")) or url_for(
                    HOME.get(user.role, "web.office_home")
                )
                return redirect(target)
    status = 401 if error else 200
    return render_template("web/login.html", values=values, error=error), status


def _authenticate(username: str, password: str) -> WebUser | None:
    """Check the password (argon2) and record the attempt in the audit log."""
    with database.unit_of_work() as db:
        try:
            user = authenticate_user(db, username, password)
        except Unauthorized:
            user = None
        org = db.get(Organization, user.organization_id) if user else None
        who = Actor(name=username[:100], kind="user", organization_id=user.organization_id if user else None)
        resources.audit(
            db,
            who,
            action="E",
            interaction="login",
            outcome="0" if user else "4",
            request_id=request.environ.get("HTTP_X_REQUEST_ID"),
        )
        return _snapshot(user, org) if user else None


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    """Sign out (a form with the CSRF token, never a link)."""
    lang = session.get("lang")
    logout_user()
    session.clear()
    if lang:
        session["lang"] = lang
    flash(_("You are signed out."), "info")
    return redirect(url_for("web.login"))


@bp.post("/language")
def set_language() -> ResponseReturnValue:
    """Switch between 中文 and English: for this session, and for a signed-in user's next ones."""
    lang = request.form.get("lang", "")
    if lang in LANGUAGES:
        session["lang"] = lang
        if current_user.is_authenticated:
            with database.unit_of_work() as db:
                set_user_locale(db, int(current_user.id), lang)
    target = _safe_next(request.form.get("next")) or url_for("web.home")
    return redirect(target)
