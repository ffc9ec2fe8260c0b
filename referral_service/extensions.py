"""Extension objects, created unbound; `create_app` binds them."""

from __future__ import annotations

from flask import request
from flask_babel import Babel
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_wtf import CSRFProtect

from .domain.db import Database

database = Database()
login_manager = LoginManager()
csrf = CSRFProtect()
babel = Babel()


def _client_key() -> str:
    """Rate-limit key: the remote address plus the client id tried, so one client cannot lock out all."""
    client = (request.authorization.username if request.authorization else None) or request.form.get(
        "client_id", ""
    )
    return f"{get_remote_address()}|{client}"


class RouteLimiter(Limiter):
    """Limits only the routes decorated with `limit` (the token endpoint, the sign-in form).

    There are no default, application or blueprint limits, so the check Flask-Limiter runs before
    every request would find nothing: skipping it spares every FHIR call its cost. A decorated route
    still checks its own limits when it is called.
    """

    def _check_request_limit(self, callable_name: str | None = None, in_middleware: bool = True) -> None:
        if not in_middleware:
            super()._check_request_limit(callable_name=callable_name, in_middleware=in_middleware)


limiter = RouteLimiter(key_func=_client_key, default_limits=[])
