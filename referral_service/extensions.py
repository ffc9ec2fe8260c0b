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


limiter = Limiter(key_func=_client_key, default_limits=[])


@limiter.request_filter
def _fhir_api() -> bool:
    """FHIR calls skip the per-request limit check: they carry tokens, whose endpoint is limited."""
    return request.path.startswith("/fhir/")
