"""Staff web forms: sign-in, the clinic and the county hospital (server-rendered, progressive enhancement)."""

from __future__ import annotations

from datetime import timedelta

from flask import Flask

from .auth import select_locale
from .blueprint import bp

__all__ = ["bp", "init_app", "select_locale"]


def init_app(app: Flask) -> None:
    """Register the blueprint, sign-in, session lifetime and the template helpers."""
    from . import (  # noqa: F401  (routes)
        auth,
        formatting,
        views_admin,
        views_clinic,
        views_common,
        views_hospital,
        views_insurer,
        views_monitor,
    )

    app.config.setdefault("SESSION_COOKIE_SAMESITE", "Lax")
    app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(minutes=int(app.config["SESSION_TIMEOUT_MINUTES"]))
    # The cookie is sent back only by requests that change the session. Every page view does (the idle
    # timeout's `seen`, auth._session_timeout), so it still slides; an asset no longer returns the
    # session it was requested with, which could undo a page's change when it finished later.
    app.config["SESSION_REFRESH_EACH_REQUEST"] = False
    auth.init_login(app)
    formatting.init_app(app)
    app.register_blueprint(bp)
