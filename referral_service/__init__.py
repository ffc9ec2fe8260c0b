"""referral_service: the backbone of a county's 基层首诊、疑难上转、康复回家 referral network."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, Request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

from .auth import passwords
from .config import load_config
from .errors import register_error_handlers
from .extensions import babel, csrf, database, limiter, login_manager
from .logging_setup import configure_logging


class ApiAwareSessionInterface(SecureCookieSessionInterface):
    """No cookie session for the bearer-token FHIR API: its calls never sign anybody in."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if request.path.startswith("/fhir/"):
            return self.null_session_class()
        return super().open_session(app, request)


class ReferralFlask(Flask):
    """Flask, remembering which hooks and views are coroutines.

    Flask asks `inspect.iscoroutinefunction` of every hook and view on every request (about eight
    times per FHIR call); the answer never changes for a function, so it is worked out once.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync_versions: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        sync = self._sync_versions.get(func)
        if sync is None:
            sync = self._sync_versions[func] = super().ensure_sync(func)
        return sync


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the application: settings, extensions, blueprints, error handlers."""
    settings = load_config(config)
    app = ReferralFlask(__name__, instance_relative_config=False)
    from .input_guard import IntKeyConverter, reject_control_characters

    app.url_map.converters["key"] = IntKeyConverter  # before any route uses it
    app.session_interface = ApiAwareSessionInterface()
    app.config.update(settings)
    app.config["RATELIMIT_STORAGE_URI"] = settings["RATELIMIT_STORAGE_URI"]
    app.config["RATELIMIT_HEADERS_ENABLED"] = True
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    configure_logging(settings["LOG_LEVEL"], settings["LOG_JSON"])
    passwords.configure(settings["ARGON2_TIME_COST"], settings["ARGON2_MEMORY_KIB"])

    database.configure(
        settings["DATABASE_URL"], echo=settings["SQL_ECHO"], pool_size=settings["DATABASE_POOL_SIZE"]
    )
    from .services import actors

    actors.forget()  # organisation facts cached by an earlier app of this process (tests, CLI)
    csrf.init_app(app)
    limiter.init_app(app)
    login_manager.init_app(app)
    from .web import init_app as init_web
    from .web import select_locale

    babel.init_app(app, locale_selector=select_locale)

    from . import observability
    from .config import PROJECT_ROOT
    from .services import referrals

    referrals.configure(PROJECT_ROOT / settings["RULES_DIR"])
    from .services import settlement

    settlement.configure(PROJECT_ROOT / settings["POLICIES_DIR"])
    from .services import payments

    payments.configure()
    from .fhir import profiles

    profiles.default()  # load and check fhir_profiles/ now: a broken definition stops start-up
    from .api import claims, fhir, oauth

    observability.init_app(app)
    app.before_request(reject_control_characters)
    from .api.responses import no_type_without_body

    app.after_request(no_type_without_body)
    app.register_blueprint(oauth.bp)
    app.register_blueprint(claims.bp)  # before the generic routes it specialises
    app.register_blueprint(fhir.bp)
    from .api import monitoring as monitoring_api
    from .services import indicators

    indicators.configure(PROJECT_ROOT / settings["MONITORING_CONFIG"])  # broken thresholds stop start-up
    app.register_blueprint(monitoring_api.bp)
    from .api import exports as exports_api
    from .exports import SettlementExportRequest, export_commands, export_dir, export_settlements

    exports_api.init_app(app, export_settlements, SettlementExportRequest, export_dir)
    app.cli.add_command(export_commands(database.unit_of_work, app.config))
    init_web(app)
    register_error_handlers(app)
    from .body_limit import ChunkedBodyLimit

    app.wsgi_app = ChunkedBodyLimit(app, app.wsgi_app)  # type: ignore[method-assign]
    if settings["FHIR_FAST_READS"]:
        from .api.fast_reads import FastReads

        app.wsgi_app = FastReads(app, app.wsgi_app)  # type: ignore[method-assign]

    from .cli import register_cli

    register_cli(app)
    from .monitoring.cli import register as register_monitoring

    register_monitoring(app)
    return app


def main() -> None:
    """Console entry point: `referral-service <command>` (the same commands as `flask`)."""
    from flask.cli import FlaskGroup

    FlaskGroup(create_app=lambda: create_app()).main()
